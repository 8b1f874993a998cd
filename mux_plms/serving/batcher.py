"""A thread-safe request batcher: single requests in, mux groups of N through the model, each request
its own result out, with a maximum wait so a lone request is never held back."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

from .predictor import MuxPredictor, Prediction

_STOP = object()


class MuxBatcher:
    """Collect requests from any number of threads and serve them in batches of whole mux groups.

    A worker thread takes the first waiting request, then keeps collecting until the batch holds
    `max_batch_size` requests (mux rows x N) or `max_wait_s` seconds have passed since that first request;
    it then runs :meth:`MuxPredictor.predict_features` once (texts grouped by length into mux groups, a
    half-filled last group padded internally by the model) and completes every request's future.

    Texts are validated in :meth:`submit` (the caller's thread), so a bad request raises
    :class:`~mux_plms.serving.RequestError` at once and never reaches the model.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, predictor: MuxPredictor, max_wait_s: float = 0.01) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0; got {max_wait_s}")
        self.predictor = predictor
        self.max_batch_size = predictor.max_batch_size
        self.max_wait_s = float(max_wait_s)
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self.batch_sizes: list[int] = []  # requests per forward batch, for monitoring and tests
        self._thread = threading.Thread(target=self._loop, name="mux-batcher", daemon=True)
        self._thread.start()

    @classmethod
    def from_pretrained(cls, model_dir: str, max_wait_s: float = 0.01, **predictor_kwargs) -> MuxBatcher:
        """Load a model folder (model + tokenizer) and wrap it."""
        from .loading import load_predictor

        return cls(load_predictor(model_dir, **predictor_kwargs), max_wait_s=max_wait_s)

    def submit(self, text: Any) -> Future:
        """Queue one text; returns a future of its :class:`Prediction`. Raises RequestError for a bad text."""
        features = self.predictor.encode(text)
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.put((features, future))
        return future

    def predict(self, text: Any, timeout: float | None = None) -> Prediction:
        """Submit one text and wait for its result."""
        return self.submit(text).result(timeout=timeout)

    def predict_many(self, texts: list[Any], timeout: float | None = None) -> list[Prediction]:
        """Submit several texts (validated first, all or none) and wait for all results, in order."""
        features = [self.predictor.encode(t) for t in texts]
        futures = []
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            for f in features:
                future: Future = Future()
                self._queue.put((f, future))
                futures.append(future)
        return [f.result(timeout=timeout) for f in futures]

    def _collect(self, first) -> list:
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # finish this batch, stop on the next turn
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = self._collect(first)
            self.batch_sizes.append(len(batch))
            try:
                results = self.predictor.predict_features([features for features, _ in batch])
            except Exception as error:  # the model failed: every request of this batch gets the error
                for _, future in batch:
                    future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)

    def close(self, timeout: float | None = 10.0) -> None:
        """Serve what is queued, then stop the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self) -> MuxBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
