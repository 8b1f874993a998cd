"""Serving MUX models: fill mux groups of N from a stream of single requests.

* :class:`MuxPredictor`: validation, length grouping into mux groups, one forward per batch of whole groups;
* :class:`MuxBatcher`: thread-safe request batcher with a maximum wait (in-process serving);
* :mod:`mux_plms.serving.ray_app`: the Ray Serve deployment (``pip install 'mux-plms[serve]'``), behind
  ``mux-plms serve MODEL_DIR``.

The names below are imported on first access (``mux-plms serve --help`` imports no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .batcher import MuxBatcher
    from .loading import load_model_and_tokenizer, load_predictor
    from .predictor import MuxPredictor, Prediction, RequestError, max_text_tokens

# public name -> submodule that defines it
_LAZY = {
    "MuxBatcher": "batcher",
    "MuxPredictor": "predictor",
    "Prediction": "predictor",
    "RequestError": "predictor",
    "max_text_tokens": "predictor",
    "load_model_and_tokenizer": "loading",
    "load_predictor": "loading",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
