"""Ray Serve deployment of a MUX (or vanilla) classification model, batched by Ray Serve's own
dynamic batching (``@serve.batch``): up to ``max_batch_size`` (mux rows x N) single requests are collected
for at most ``batch_wait_timeout_s`` seconds and run as whole mux groups of similar-length texts
(:class:`~mux_plms.serving.MuxPredictor`).

Same JSON protocol as :mod:`mux_plms.serving.http`. Run it with ``mux-plms serve MODEL_DIR`` or, on a Ray
cluster, ``serve run mux_plms.serving.ray_app:app_builder model_dir=/path/to/model`` (see docs/serving.md).
Needs ``pip install 'mux-plms[serve]'``.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse
except ImportError as error:  # pragma: no cover - exercised only without Ray
    raise ImportError(
        "Serving on Ray Serve needs Ray: pip install 'mux-plms[serve]' (or pip install 'ray[serve]')"
    ) from error

from .http import parse_request
from .loading import load_predictor
from .predictor import RequestError

DEFAULT_WAIT_S = 0.01


@serve.deployment(name="MuxClassifier")
class MuxDeployment:
    """One replica: the model, its tokenizer and a Ray Serve batch queue sized to whole mux groups."""

    def __init__(
        self,
        model_dir: str,
        mux_rows: int = 8,
        batch_wait_timeout_s: float = DEFAULT_WAIT_S,
        ensemble: bool = False,
        num_threads: int | None = None,
    ) -> None:
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        probe = load_predictor(model_dir, max_batch_size=None, ensemble=ensemble)
        n = probe.num_instances
        probe.max_batch_size = mux_rows * n
        self.predictor = probe
        self.handle_batch.set_max_batch_size(mux_rows * n)
        self.handle_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=DEFAULT_WAIT_S)
    async def handle_batch(self, features: list[dict[str, list[int]]]) -> list[dict[str, Any]]:
        """One forward batch: the validated features of up to mux rows x N requests."""
        results = await asyncio.to_thread(self.predictor.predict_features, features)
        return [r.to_dict() for r in results]

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"status": "ok", "num_instances": self.predictor.num_instances})
        try:
            texts, many = parse_request(await request.body())
            features = [self.predictor.encode(t) for t in texts]
        except RequestError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        results = await asyncio.gather(*(self.handle_batch(f) for f in features))
        return JSONResponse({"results": list(results)} if many else results[0])


def build_app(
    model_dir: str,
    num_replicas: int = 1,
    mux_rows: int = 8,
    batch_wait_timeout_s: float = DEFAULT_WAIT_S,
    ensemble: bool = False,
    num_cpus: float = 1.0,
    num_threads: int | None = None,
):
    """The bound Ray Serve application for `model_dir` (pass it to ``serve.run``). A replica may hold
    ``2 x mux_rows x N`` requests at once, so that a full batch can form while the previous one runs."""
    from transformers import AutoConfig

    import mux_plms  # noqa: F401  (registers the MUX configs)

    n = int(getattr(AutoConfig.from_pretrained(model_dir), "num_instances", 1))
    deployment = MuxDeployment.options(
        num_replicas=num_replicas,
        max_ongoing_requests=2 * mux_rows * n,
        ray_actor_options={"num_cpus": num_cpus},
    )
    return deployment.bind(model_dir, mux_rows, batch_wait_timeout_s, ensemble, num_threads)


def app_builder(args: dict[str, str]):
    """Entry point for ``serve run mux_plms.serving.ray_app:app_builder model_dir=... [num_replicas=K]
    [mux_rows=R] [batch_wait_timeout_s=S] [ensemble=true] [num_cpus=C]`` and for ``serve deploy`` configs."""
    if "model_dir" not in args:
        raise ValueError("pass model_dir=/path/to/model")
    return build_app(
        args["model_dir"],
        num_replicas=int(args.get("num_replicas", 1)),
        mux_rows=int(args.get("mux_rows", 8)),
        batch_wait_timeout_s=float(args.get("batch_wait_timeout_s", DEFAULT_WAIT_S)),
        ensemble=str(args.get("ensemble", "false")).lower() in {"1", "true", "yes"},
        num_cpus=float(args.get("num_cpus", 1.0)),
    )
