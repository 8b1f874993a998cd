"""The JSON protocol of the serving endpoint, and a dependency-free HTTP server around :class:`MuxBatcher`
(the Ray Serve deployment speaks the same protocol).

Request: ``POST /`` with ``{"text": "..."}`` (one result) or ``{"texts": ["...", ...]}`` (a list of results).
Response 200: ``{"label": ..., "scores": {...}}`` (token models: ``tokens``, ``token_labels``, ``scores``), or
``{"results": [...]}`` for ``texts``. Malformed requests get 400 ``{"error": "..."}``; the server keeps serving.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .batcher import MuxBatcher
from .predictor import RequestError

MAX_TEXTS_PER_REQUEST = 256


def parse_request(body: bytes | str | Any) -> tuple[list[Any], bool]:
    """``(texts, many)`` from a request body (bytes / str JSON, or an already parsed object); raises
    :class:`RequestError` for anything but ``{"text": str}`` or ``{"texts": [str, ...]}``."""
    if isinstance(body, bytes | bytearray | str):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise RequestError('send a JSON object: {"text": "..."} or {"texts": ["...", ...]}')
    if ("text" in body) == ("texts" in body):
        raise RequestError('send exactly one of "text" (a string) or "texts" (a list of strings)')
    if "text" in body:
        return [body["text"]], False
    texts = body["texts"]
    if not isinstance(texts, list) or not texts:
        raise RequestError('"texts" must be a non-empty list of strings')
    if len(texts) > MAX_TEXTS_PER_REQUEST:
        raise RequestError(f'"texts" holds {len(texts)} texts; send at most {MAX_TEXTS_PER_REQUEST} per request')
    return texts, True


def make_server(batcher: MuxBatcher, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A threaded HTTP server (not started) answering the JSON protocol through `batcher`.
    Port 0 picks a free port (``server.server_address[1]``)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet under load
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, {"status": "ok", "num_instances": batcher.predictor.num_instances})

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
                texts, many = parse_request(self.rfile.read(length))
                results = batcher.predict_many(texts, timeout=60)
            except RequestError as error:
                self._send(400, {"error": str(error)})
                return
            except Exception as error:  # keep serving; report the failure
                self._send(500, {"error": f"{type(error).__name__}: {error}"})
                return
            if many:
                self._send(200, {"results": [r.to_dict() for r in results]})
            else:
                self._send(200, results[0].to_dict())

    return ThreadingHTTPServer((host, port), Handler)


class BackgroundServer:
    """Run :func:`make_server` in a daemon thread (context manager); ``url`` is its address."""

    def __init__(self, batcher: MuxBatcher, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = make_server(batcher, host, port)
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
