"""Serving MUX models: fill mux groups of N from a stream of single requests.

* :class:`MuxPredictor`: validation, length grouping into mux groups, one forward per batch of whole groups;
* :class:`MuxBatcher`: thread-safe request batcher with a maximum wait (in-process serving);
* :mod:`mux_plms.serving.ray_app`: the Ray Serve deployment (``pip install 'mux-plms[serve]'``), behind
  ``mux-plms serve MODEL_DIR``.
"""

from .batcher import MuxBatcher
from .loading import load_model_and_tokenizer, load_predictor
from .predictor import Prediction, MuxPredictor, RequestError, max_text_tokens

__all__ = [
    "MuxBatcher",
    "MuxPredictor",
    "Prediction",
    "RequestError",
    "load_model_and_tokenizer",
    "load_predictor",
    "max_text_tokens",
]
