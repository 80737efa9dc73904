"""The `openai` backend against real HTTP servers on loopback: a fault-injecting stub (tests/fault_proxy.py) and,
where its extra packages are installed, `transformers serve` running the tiny test model (marked slow: starting
it takes ~15 s on a small CPU; run it with `pytest -m slow tests/test_openai_backend.py`)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

import pytest

from fault_proxy import FAULTS, FaultServer
from srlm.backends.base import GenerationRequest, Sampling
from srlm.backends.openai import OpenAIBackend, _num_tokens
from srlm.errors import SrlmError

KEY = "sk-test-5ecret-do-not-leak-8f3a"
KEY_ENV = "SRLM_TEST_OPENAI_KEY"


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    """An HTTP proxy in the environment would intercept loopback requests; these tests talk to 127.0.0.1 only."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    with FaultServer(api_key=KEY) as stub:
        yield stub


def make_backend(server, monkeypatch, **options):
    monkeypatch.setenv(KEY_ENV, KEY)
    settings = dict(api_key_env=KEY_ENV, timeout_seconds=2, max_retries=4, backoff_seconds=0.01, max_concurrency=4)
    settings.update(options)
    return OpenAIBackend.create(None, base_url=server.url, model="stub-model", **settings)


def requests_mix(count: int = 6, n: int = 2, max_new_tokens: int = 12) -> list[GenerationRequest]:
    """Chat and raw-text requests alternating, with different seeds."""
    sampling = Sampling(n=n, temperature=0.7, top_p=0.9, max_new_tokens=max_new_tokens)
    out = []
    for i in range(count):
        if i % 2:
            out.append(GenerationRequest(f"t{i}", sampling, seed=100 + i, text=f"1. Write a poem.\n{i}."))
        else:
            out.append(GenerationRequest(f"c{i}", sampling, seed=100 + i,
                                         messages=[{"role": "user", "content": f"Question number {i}?"}]))
    return out


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text


# -- the protocol ---------------------------------------------------------------------------------------------
def test_sends_openai_requests_and_parses_answers(server, monkeypatch):
    backend = make_backend(server, monkeypatch)
    requests = requests_mix(2, n=3, max_new_tokens=4)
    done = []
    results = backend.generate(requests, on_done=done.append)

    assert done == [1, 1]
    chat, text = server.log[0], server.log[1]
    if chat["path"] != "/v1/chat/completions":
        chat, text = text, chat
    assert chat["path"] == "/v1/chat/completions" and text["path"] == "/v1/completions"
    assert chat["authorization"] == f"Bearer {KEY}"
    assert chat["body"] == {"model": "stub-model", "n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 4,
                            "seed": 100, "messages": [{"role": "user", "content": "Question number 0?"}]}
    assert text["body"]["prompt"] == "1. Write a poem.\n1." and text["body"]["seed"] == 101

    assert [len(r) for r in results] == [3, 3]
    for completions in results:
        for c in completions:
            words = len(c.text.split())
            assert words <= 4 and c.text == c.text.strip()
            # The stub cuts answers longer than max_tokens (4 words) and then says "length".
            assert words == 4 or c.finish_reason == "stop"
        # usage.completion_tokens (the stub counts words) is split over the choices in proportion to their length.
        assert sum(c.num_tokens for c in completions) == sum(len(c.text.split()) for c in completions)
    assert "length" in {c.finish_reason for r in results for c in r}
    assert backend.stats.sequences == 6 and backend.stats.new_tokens == sum(c.num_tokens for r in results for c in r)
    assert backend.stats.prompt_tokens == 2 * 7  # the stub's usage.prompt_tokens


def test_results_in_request_order_under_concurrency(monkeypatch):
    # Earlier requests answer later, so completion order is the reverse of request order.
    with FaultServer(delay=lambda body: 0.02 * (12 - body["seed"] % 100)) as stub:
        backend = make_backend(stub, monkeypatch, max_concurrency=4)
        requests = requests_mix(12, n=1)
        done = []
        results = backend.generate(requests, on_done=done.append)
        assert 1 < stub.max_in_flight <= 4
        stub.delay = None
        sequential = make_backend(stub, monkeypatch, max_concurrency=1).generate(requests)
    assert results == sequential
    assert done == [1] * 12
    # Each answer belongs to its own request: the stub's text is a function of the prompt and seed.
    assert len({r[0].text for r in results}) == 12


def test_tops_up_when_server_returns_fewer_choices(monkeypatch):
    with FaultServer(max_choices=1) as stub:  # like `transformers serve`, which ignores n
        backend = make_backend(stub, monkeypatch)
        [completions] = backend.generate(requests_mix(1, n=3))
        assert len(completions) == 3 and len({c.text for c in completions}) == 3
        assert [entry["body"]["n"] for entry in stub.log] == [3, 2, 1]
        seeds = [entry["body"]["seed"] for entry in stub.log]
        assert seeds[0] == 100 and len(set(seeds)) == 3  # top-ups use derived seeds, not the same samples again
        assert backend.stats.extra["top_up_requests"] == 2
        # The derived seeds are deterministic: a rerun (a resumed stage) asks for exactly the same.
        assert make_backend(stub, monkeypatch).generate(requests_mix(1, n=3)) == [completions]


def test_token_counts_without_usage_are_word_counts(monkeypatch):
    with FaultServer(usage=False) as stub:
        [completions] = make_backend(stub, monkeypatch).generate(requests_mix(1, n=2))
    assert [c.num_tokens for c in completions] == [len(c.text.split()) for c in completions]


def test_num_tokens_split_keeps_total():
    assert _num_tokens(["a b", "c d e f"], 12) == [4, 8]
    assert sum(_num_tokens(["x", "yy", "zzz"], 10)) == 10
    assert _num_tokens(["", ""], 3) in ([2, 1], [1, 2])
    assert _num_tokens(["one two", "three"], None) == [2, 1]


def test_count_prompt_tokens_is_a_character_estimate(server, monkeypatch):
    backend = make_backend(server, monkeypatch)
    sampling = Sampling()
    assert backend.count_prompt_tokens(GenerationRequest("a", sampling, 0, text="x" * 40)) == 10
    chat = GenerationRequest("b", sampling, 0, messages=[{"role": "user", "content": "y" * 41}])
    assert backend.count_prompt_tokens(chat) == 11


# -- faults ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def baseline():
    """The no-fault answers to `requests_mix()`, computed once against an undisturbed server."""
    with FaultServer() as stub:
        backend = OpenAIBackend.create(None, base_url=stub.url, model="stub-model", api_key_env=None)
        return backend.generate(requests_mix())


RETRYABLE_FAULTS = [f for f in FAULTS if f not in ("400", "401")]  # every other fault the stub knows


@pytest.mark.parametrize("fault", RETRYABLE_FAULTS)
def test_each_fault_is_retried_to_the_same_result(fault, server, monkeypatch, baseline):
    server.hang_seconds = 1.0
    # A short client timeout only where the server hangs: elsewhere a loaded test machine must not cause retries.
    backend = make_backend(server, monkeypatch, timeout_seconds=0.3 if fault == "hang" else 5)
    server.schedule(fault, fault, fault)
    done = []
    assert backend.generate(requests_mix(), on_done=done.append) == baseline
    assert done == [1] * len(baseline)
    assert backend.stats.extra["retries"] == 3 or (fault == "hang" and backend.stats.extra["retries"] > 3)
    assert not server.faults


def test_refused_connections_until_the_server_returns(server, monkeypatch, baseline):
    backend = make_backend(server, monkeypatch, max_retries=10, backoff_seconds=0.02, max_backoff_seconds=0.2)
    server.stop()
    restarter = threading.Timer(0.4, server.restart)
    restarter.start()
    try:
        assert backend.generate(requests_mix()) == baseline
    finally:
        restarter.join()
    assert backend.stats.extra["retries"] >= len(baseline)  # every request was refused at least once


def test_retry_after_is_honoured(monkeypatch):
    with FaultServer(retry_after=0.4) as stub:
        backend = make_backend(stub, monkeypatch, backoff_seconds=0.001)
        stub.schedule("429")
        start = time.perf_counter()
        backend.generate(requests_mix(1, n=1))
        assert time.perf_counter() - start >= 0.4
        assert len(stub.log) == 2


@pytest.mark.parametrize("fault, expected", [("400", "max_tokens is too large"), ("401", "Incorrect API key")])
def test_client_errors_fail_at_once(fault, expected, server, monkeypatch):
    backend = make_backend(server, monkeypatch)
    server.schedule(fault)
    with pytest.raises(SrlmError) as info:
        backend.generate(requests_mix(1, n=1))
    message = str(info.value)
    assert f"HTTP {fault}" in message and expected in message
    assert len(server.log) == 1  # not retried


def test_wrong_key_is_not_echoed_in_the_error(server, monkeypatch):
    """The stub echoes a wrong key in its 401 message, as OpenAI does; the backend scrubs it."""
    monkeypatch.setenv(KEY_ENV, "sk-wrong-" + KEY)
    backend = OpenAIBackend.create(None, base_url=server.url, model="m", api_key_env=KEY_ENV, max_retries=0)
    with pytest.raises(SrlmError) as info:
        backend.generate(requests_mix(1, n=1))
    formatted = "".join(traceback.format_exception(info.value))
    assert "HTTP 401" in str(info.value) and KEY_ENV in str(info.value)
    assert "sk-wrong-" not in formatted and KEY not in formatted
    assert_no_key(repr(backend), repr(backend.stats), str(vars(backend)))


def test_exhausted_retries_give_a_clear_error(server, monkeypatch):
    backend = make_backend(server, monkeypatch, max_retries=2)
    server.always = "503"
    with pytest.raises(SrlmError) as info:
        backend.generate(requests_mix(3, n=1))
    message = str(info.value)
    assert "failed 3 times" in message and "max_retries=2" in message and "HTTP 503" in message
    assert server.url.removesuffix("/v1") in message
    assert_no_key(message, "".join(traceback.format_exception(info.value)), repr(backend), repr(backend.stats))


def test_key_is_sent_but_never_shown(server, monkeypatch):
    backend = make_backend(server, monkeypatch)
    backend.generate(requests_mix(2))
    assert {entry["authorization"] for entry in server.log} == {f"Bearer {KEY}"}
    assert KEY_ENV in repr(backend)
    assert_no_key(repr(backend), str(backend), repr(backend.stats), str(vars(backend)))


def test_create_accepts_the_config_keys(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # Exactly the config keys (backend.base_url, backend.model_name, ...), plus another backend's option, ignored.
    backend = OpenAIBackend.create(None, base_url="http://127.0.0.1:1/v1/", model_name="m",
                                   api_key_env="OPENAI_API_KEY", max_concurrency=2, timeout_seconds=5, max_retries=1,
                                   max_batch_tokens=16384)
    assert backend.name == "openai" and backend.base_url == "http://127.0.0.1:1/v1" and backend.model == "m"
    assert (backend.max_concurrency, backend.timeout_seconds, backend.max_retries) == (2, 5, 1)
    assert "no key" in repr(backend)
    with pytest.raises(SrlmError, match="base_url"):
        OpenAIBackend.create(None, model="m")
    with pytest.raises(SrlmError, match="model_name"):
        OpenAIBackend.create(None, base_url="http://127.0.0.1:1/v1")
    with pytest.raises(SrlmError, match="base_url"):
        OpenAIBackend.create(None, base_url="127.0.0.1:8000", model="m")


# -- a stage resumes after the server dies ----------------------------------------------------------------------
def test_respond_resumes_after_the_server_dies(tmp_path, monkeypatch):
    from srlm.config import RespondConfig
    from srlm.stages.respond import run_respond

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Explain topic {i} in a few words."}) + "\n" for i in range(10)))
    cfg = RespondConfig(max_new_tokens=16)

    with FaultServer() as stub:
        backend = make_backend(stub, monkeypatch, max_retries=2)
        run_respond(prompts, tmp_path / "uninterrupted.jsonl", backend, cfg, seed=1, chunk_prompts=3)

        stub.restart(kill_after=5)  # dies inside the second chunk of 3 prompts (one HTTP request per prompt)
        out = tmp_path / "responses.jsonl"
        with pytest.raises(SrlmError, match="failed 3 times"):
            run_respond(prompts, out, backend, cfg, seed=1, chunk_prompts=3)
        assert not out.exists()
        partial = [json.loads(line) for line in out.with_name(out.name + ".partial").read_text().splitlines()]
        assert len(partial) == 3 * cfg.num_samples  # only the first chunk was saved

        stub.restart()
        result = run_respond(prompts, out, backend, cfg, seed=1, chunk_prompts=3)

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert result["responses"] == len(records) == 10 * cfg.num_samples
    per_prompt = {}
    for r in records:
        per_prompt.setdefault(r["prompt_id"], []).append(r["sample_index"])
    assert len(per_prompt) == 10 and all(sorted(v) == list(range(cfg.num_samples)) for v in per_prompt.values())
    assert out.read_text() == (tmp_path / "uninterrupted.jsonl").read_text()


# -- a real server: transformers serve ---------------------------------------------------------------------------
SERVING_PACKAGES = ("fastapi", "uvicorn", "openai")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # about 15 s to start the server on a small CPU: run with `-m slow`
@pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in SERVING_PACKAGES),
    reason="`transformers serve` needs the transformers[serving] extra: pip install fastapi uvicorn openai",
)
def test_generates_through_transformers_serve(tiny_model_dir, monkeypatch):
    port = _free_port()
    log = tiny_model_dir.parent / "transformers-serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "transformers.cli.transformers", "serve", str(tiny_model_dir), "--host",
             "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "warning"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"transformers serve did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        backend = OpenAIBackend.create(None, base_url=f"http://127.0.0.1:{port}/v1", model=str(tiny_model_dir),
                                       api_key_env=None, timeout_seconds=30, max_retries=1)
        sampling = Sampling(n=2, temperature=0.7, top_p=0.9, max_new_tokens=6)
        requests = [
            GenerationRequest("chat", sampling, 1, messages=[{"role": "user", "content": "What is the capital?"}]),
            GenerationRequest("raw", Sampling(n=1, max_new_tokens=6), 2, text="The response is relevant. Score:"),
        ]
        results = backend.generate(requests)
        assert [len(r) for r in results] == [2, 1]  # n=2 topped up: transformers serve answers one choice
        for completions in results:
            for c in completions:
                assert 0 < c.num_tokens <= 6 and c.finish_reason in ("stop", "length")
        assert backend.stats.sequences == 3
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
