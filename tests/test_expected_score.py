"""Expected-score judging (judge.method=expected): the score-position helpers, the backends' next-token
probabilities of the score digits (hf checked against a plain forward pass of the tiny model, openai against a
loopback server that answers with top_logprobs), and the judge / eval-judge / pairs stages end to end."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from srlm.backends import GenerationRequest, Sampling, make_backend
from srlm.backends.base import CandidateProbs, supports_score_probs
from srlm.config import JudgeConfig, load_config
from srlm.errors import ConfigError, SrlmError
from srlm.judge import SCORE_TOKENS, builtin_template, check_method, expected_score, render, score_prefix

SAMPLING = Sampling(n=1, temperature=0.7, top_p=0.9, max_new_tokens=16)


def judge_request(request_id: str, question: str, answer: str) -> GenerationRequest:
    return GenerationRequest(request_id, SAMPLING, 0,
                             messages=[{"role": "user", "content": render(builtin_template(), question, answer)}])


# -- the score position and the expected value -------------------------------------------------------------------
@pytest.mark.parametrize("text, prefix", [
    ("Relevant and clear.\nScore: 4", "Relevant and clear.\nScore: "),
    ("First Score: 2, then on reflection\nScore: 3", "First Score: 2, then on reflection\nScore: "),  # last counts
    ("**Score: 5**", "**Score: "),
    ("Score: 3.5", "Score: "),
    ("Score: 7", None),  # no parsable score, no score position
    ("The answer is good.", None),
])
def test_score_prefix_is_the_text_before_the_last_parsable_score(text, prefix):
    assert score_prefix(text) == prefix


def test_expected_score_is_the_mean_of_the_digit_distribution():
    assert expected_score([0, 0, 0, 0, 1, 0]) == 4
    assert expected_score([1, 1, 1, 1, 1, 1]) == pytest.approx(2.5)
    assert expected_score([0, 0, 0, 0, 2, 2]) == pytest.approx(4.5)  # renormalised
    with pytest.raises(ValueError):
        expected_score([0.5, 0.5])


def test_config_accepts_the_two_methods_only():
    assert JudgeConfig().method == "sample_mean"
    assert load_config(overrides=["judge.method=expected"]).judge.method == "expected"
    with pytest.raises(ConfigError, match="judge.method"):
        load_config(overrides=["judge.method=mean"])


def test_a_backend_without_score_probabilities_is_refused_before_judging():
    class GenerateOnly:
        name = "generate-only"

    assert not supports_score_probs(GenerateOnly())
    with pytest.raises(SrlmError, match="judge.method=expected .* 'generate-only' backend"):
        check_method("expected", GenerateOnly())
    check_method("sample_mean", GenerateOnly())  # the paper's method needs nothing more


# -- hf: one batched teacher-forced pass, equal to a plain forward pass --------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from srlm.models import load_model

    return load_model(str(tiny_model_dir))


def _direct(lm, request: GenerationRequest, text: str, spelled: list[str]) -> tuple[list[float], float]:
    """The candidates' probabilities from one unbatched, unpadded forward pass of the model itself."""
    import torch

    tok = lm.tokenizer
    prompt = tok.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False)["input_ids"] + tok(text, add_special_tokens=False)["input_ids"]
    candidate_ids = []
    for candidate in spelled:
        full = tok(text + candidate, add_special_tokens=False)["input_ids"]
        assert len(full) == len(tok(text, add_special_tokens=False)["input_ids"]) + 1
        candidate_ids.append(full[-1])
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    probs = torch.softmax(logits, dim=-1)[candidate_ids]
    return (probs / probs.sum()).tolist(), float(probs.sum())


ITEMS = [  # (question, answer, the judge's continuation up to the digit)
    ("What is the capital of France?", "Paris.", "The response is correct and direct.\nScore: "),
    ("What is the capital of France?", "Paris.", "Partly useful.\nScore: "),  # a second sample, same prompt
    ("Name a color.", "Blue, and also a long digression about the sky " * 3, "Off topic.\nScore: "),
    ("Explain {braces}?", "ok", "Score: "),
]


@pytest.mark.parametrize("budget", [100_000, 1500])  # one batch; several batches of different widths
def test_hf_batched_probabilities_equal_a_direct_forward_pass(tiny, budget):
    backend = make_backend("hf", tiny, max_batch_tokens=budget)
    items = [(judge_request(f"r{i}", q, a), cont) for i, (q, a, cont) in enumerate(ITEMS)]
    results = backend.score_token_probs(items, SCORE_TOKENS)
    assert backend.stats.extra["scored_sequences"] == len(ITEMS)
    assert (backend.stats.extra["score_batches"] == 1) == (budget == 100_000)
    for (request, continuation), result in zip(items, results):
        assert isinstance(result, CandidateProbs)
        assert sum(result.probs) == pytest.approx(1.0, abs=1e-9) and all(p >= 0 for p in result.probs)
        assert 0 < result.mass <= 1
        assert 0 <= expected_score(result.probs) <= 5
        # The tiny tokenizer writes " 4" as one token, so the trailing space must move into the candidates.
        probs, mass = _direct(tiny, request, continuation.rstrip(), [" " + d for d in SCORE_TOKENS])
        assert result.probs == pytest.approx(probs, abs=1e-5)
        assert result.mass == pytest.approx(mass, rel=1e-4)


def test_hf_reads_back_what_decoding_recorded_and_equals_the_forward_pass(tiny, monkeypatch):
    # The judge asks the backend to record the digits' log-probabilities while it writes the judgements; scoring a
    # text it wrote then reads them back instead of a second pass. Same numbers as the pass, and a continuation
    # that is not what a sample generated still gets the pass. The decode loop is made to write a judgement.
    import torch

    import srlm.backends.hf as hf

    written = tiny.tokenizer("Fine.\nScore:", add_special_tokens=False)["input_ids"]
    steps = []

    def writes_the_judgement(logits, sampling, generators):
        steps.append(1)
        return torch.full((logits.shape[0],), written[min(len(steps) - 1, len(written) - 1)], dtype=torch.long)

    monkeypatch.setattr(hf, "sample_next", writes_the_judgement)
    request = GenerationRequest("r", Sampling(n=2, temperature=1.0, max_new_tokens=len(written) + 1), 3,
                                messages=[{"role": "user", "content": "Judge this answer, please."}])
    recording = make_backend("hf", tiny)
    recording.record_token_probs(SCORE_TOKENS)
    assert recording.generate([request])[0][0].text.startswith("Fine.\nScore:")
    items = [(request, "Fine.\nScore:"), (request, "Fine.\nScore: 4 and more.\nScore:")]
    candidates = [" " + d for d in SCORE_TOKENS]
    read_back = recording.score_token_probs(items, candidates)
    assert recording.stats.extra["scored_while_decoding"] == 1  # the second continuation was never generated
    passed = make_backend("hf", tiny).score_token_probs(items, candidates)
    for a, b in zip(read_back, passed):
        assert a.probs == pytest.approx(b.probs, abs=1e-5) and a.mass == pytest.approx(b.mass, rel=1e-4)
    recording.generate([request])  # recording is for one generate call only
    assert not recording._recorded_ids


def test_hf_candidates_as_given_when_the_tokenizer_allows(tiny):
    # "Score:" + " 4": the continuation already ends where the digit token starts; the same numbers either way.
    backend = make_backend("hf", tiny)
    request = judge_request("r", "Q?", "A.")
    moved = backend.score_token_probs([(request, "Fine.\nScore: ")], SCORE_TOKENS)[0]
    given = backend.score_token_probs([(request, "Fine.\nScore:")], [" " + d for d in SCORE_TOKENS])[0]
    assert moved.probs == pytest.approx(given.probs, abs=1e-9) and moved.mass == pytest.approx(given.mass)


def test_hf_multi_token_candidates_are_an_error(tiny):
    backend = make_backend("hf", tiny)
    with pytest.raises(SrlmError, match="request 'r'.*single-token score digits"):
        backend.score_token_probs([(judge_request("r", "Q?", "A."), "Score: ")], ["4", "zebra-crossing"])


# -- openai: top_logprobs of one continued token -------------------------------------------------------------------
class _LogprobServer:
    """Answers like vLLM with logprobs: one token, with the top next tokens of a made-up distribution. With
    `space_token` it behaves like a tokenizer that writes " " and "4" apart (SmolLM2), else one with " 4"."""

    def __init__(self, *, space_token: bool, with_logprobs: bool = True):
        self.space_token, self.with_logprobs, self.log = space_token, with_logprobs, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.log.append((self.path, body))
                text = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
                top = stub.top(text)
                if self.path.endswith("/chat/completions"):
                    listed = [{"token": t, "logprob": lp} for t, lp in top]
                    choice = {"index": 0, "finish_reason": "length",
                              "message": {"role": "assistant", "content": top[0][0]},
                              "logprobs": {"content": [{"token": top[0][0], "logprob": top[0][1],
                                                        "top_logprobs": listed}]}}
                else:
                    choice = {"index": 0, "finish_reason": "length", "text": top[0][0],
                              "logprobs": {"tokens": [top[0][0]], "top_logprobs": [dict(top)]}}
                if not stub.with_logprobs:
                    choice.pop("logprobs")
                payload = json.dumps({"choices": [choice]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def top(self, text: str) -> list[tuple[str, float]]:
        if self.space_token and text.endswith(":"):
            return [(" ", math.log(0.95)), ("\n", math.log(0.05))]
        space = "" if self.space_token else " "
        return [(f"{space}4", math.log(0.5)), (f"{space}5", math.log(0.25)), ("Great", math.log(0.2)),
                (f"{space}2", math.log(0.05))]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("space_token", [False, True])
def test_openai_reads_top_logprobs_of_the_continued_message(space_token, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = _LogprobServer(space_token=space_token)
    try:
        backend = make_backend("openai", None, base_url=server.url, model="m", api_key_env=None, max_retries=0)
        chat = judge_request("c", "Q?", "A.")
        raw = GenerationRequest("t", SAMPLING, 0, text="Judge this.\n")
        results = backend.score_token_probs([(chat, "Good.\nScore: "), (raw, "Good.\nScore: ")], SCORE_TOKENS)
    finally:
        server.close()
    for result in results:
        # 0, 1 and 3 are not in the top list (probability 0); "Great" is not a candidate.
        assert result.probs == pytest.approx([0, 0, 0.05 / 0.8, 0, 0.5 / 0.8, 0.25 / 0.8])
        assert result.mass == pytest.approx(0.8)
    chat_bodies = [body for path, body in server.log if path.endswith("/chat/completions")]
    assert chat_bodies[0]["messages"][-1] == {"role": "assistant", "content": "Good.\nScore:"}
    assert chat_bodies[0]["continue_final_message"] is True and chat_bodies[0]["add_generation_prompt"] is False
    assert chat_bodies[0]["max_tokens"] == 1 and chat_bodies[0]["top_logprobs"] == 20
    # A space-splitting tokenizer answers ":" with " " first: asked again with the space kept.
    assert len(chat_bodies) == (2 if space_token else 1)
    if space_token:
        assert chat_bodies[1]["messages"][-1]["content"] == "Good.\nScore: "


def test_openai_without_logprobs_is_a_clear_error(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = _LogprobServer(space_token=False, with_logprobs=False)
    try:
        backend = make_backend("openai", None, base_url=server.url, model="m", api_key_env=None, max_retries=0)
        with pytest.raises(SrlmError, match="without top log-probabilities .*judge.method=expected"):
            backend.score_token_probs([(judge_request("c", "Q?", "A."), "Score: ")], SCORE_TOKENS)
    finally:
        server.close()


# -- the stages ------------------------------------------------------------------------------------------------------
def _responses(path, prompts: int = 3, per_prompt: int = 4):
    rows = [{"prompt_id": f"p{p}", "response_id": f"p{p}-r{r}", "prompt": f"Question {p}?", "response": f"Answer {r}."}
            for p in range(prompts) for r in range(per_prompt)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def test_judge_cli_with_expected_scores_then_pairs(tmp_path, capsys):
    from srlm.cli import main

    _responses(tmp_path / "r.jsonl")
    assert main(["judge", "--responses", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "j.jsonl"),
                 "backend.name=fake", "judge.method=expected", "judge.num_samples=2"]) == 0
    records = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert len(records) == 12
    for record in records:
        assert len(record["judgements"]) == 2
        for j in record["judgements"]:
            assert j["score"] in {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}  # the integer the text ends with, kept
            assert sum(j["score_probs"]) == pytest.approx(1.0) and len(j["score_probs"]) == 6
            assert j["expected_score"] == pytest.approx(expected_score(j["score_probs"]))
            assert 0 <= j["expected_score"] <= 5
        assert record["scores"] == [j["expected_score"] for j in record["judgements"]]
        assert record["score"] == pytest.approx(sum(record["scores"]) / 2)
    assert "score_method" in capsys.readouterr().out
    # Pairs read the continuous `score`: every prompt gets a pair, the chosen side scored higher.
    assert main(["pairs", "--responses", str(tmp_path / "r.jsonl"), "--judgements", str(tmp_path / "j.jsonl"),
                 "--out", str(tmp_path / "pairs.jsonl")]) == 0
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 3 and all(p["chosen_score"] > p["rejected_score"] for p in pairs)


def test_judge_stage_on_the_tiny_model_with_hf_score_probabilities(tiny, tmp_path):
    """The judge stage's expected path with real hf probabilities: the judgement texts come from a script (the tiny
    model writes no "Score:" lines), the digit probabilities from the tiny model, checked by a direct forward."""
    from srlm.stages.judge import run_judge

    hf = make_backend("hf", tiny)
    texts = {"p0-r0": "Clear and complete.\nScore: 4", "p0-r1": "no score here", "p1-r0": "Score: 2 Score: 1",
             "p1-r1": "Weak.\nScore: 1"}

    class ScriptedJudge:  # generation from the script, everything else from the hf backend
        name = "scripted+hf"
        stats = hf.stats

        def generate(self, requests, on_done=None):
            from srlm.backends.base import Completion

            return [[Completion(texts[r.request_id], 5, "stop")] for r in requests]

        count_prompt_tokens = staticmethod(hf.count_prompt_tokens)
        score_token_probs = staticmethod(hf.score_token_probs)

    _responses(tmp_path / "r.jsonl", prompts=2, per_prompt=2)
    stats = run_judge(tmp_path / "r.jsonl", tmp_path / "j.jsonl", ScriptedJudge(),
                      JudgeConfig(method="expected", num_samples=1), seed=0)
    records = {r["response_id"]: r for r in map(json.loads, (tmp_path / "j.jsonl").read_text().splitlines())}
    missing = records["p0-r1"]
    assert missing["judgements"][0]["expected_score"] is None and missing["score"] is None  # never 0
    assert missing["judgements"][0]["score_probs"] is None
    assert stats["judge_parse_rate"] == 0.75 and stats["responses_unscored"] == 1
    assert stats["score_method"] == "expected" and stats["expected_missing"] == 0
    for rid in ("p0-r0", "p1-r0", "p1-r1"):
        j = records[rid]["judgements"][0]
        request = GenerationRequest(rid, SAMPLING, 0, messages=[{"role": "user", "content": render(
            builtin_template(), records[rid]["prompt_id"].replace("p", "Question ") + "?",
            "Answer " + rid[-1] + ".")}])
        probs, _ = _direct(tiny, request, score_prefix(texts[rid]).rstrip(), [" " + d for d in SCORE_TOKENS])
        assert j["score_probs"] == pytest.approx(probs, abs=1e-5)
        assert records[rid]["score"] == pytest.approx(expected_score(probs), abs=1e-4)
    assert hf.stats.extra["scored_sequences"] == 3  # the unparsable judgement is not sent


def test_judge_cli_expected_on_the_tiny_model_runs(tiny_model_dir, tmp_path):
    # The untrained tiny model writes no score lines: every expected score is missing, none is 0.
    from srlm.cli import main

    _responses(tmp_path / "r.jsonl", prompts=1, per_prompt=2)
    assert main(["judge", "--responses", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "j.jsonl"),
                 "--model", str(tiny_model_dir), "judge.method=expected", "judge.num_samples=1",
                 "judge.max_new_tokens=8"]) == 0
    records = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        j = record["judgements"][0]
        assert set(j) >= {"score_probs", "expected_score", "score_token_mass"}
        assert (j["expected_score"] is None) == (j["score"] is None)
        assert record["score"] == j["expected_score"]


def test_eval_judge_with_expected_scores(tmp_path, shared_data, capsys):
    from srlm.cli import main

    out = tmp_path / "judge.json"
    assert main(["eval", "judge", "--data", str(shared_data / "oasst" / "en_100_tree.jsonl"), "--limit", "4",
                 "--out", str(out), "backend.name=fake", "judge.method=expected", "judge.num_samples=1"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["judge"]["method"] == "expected" and "sum_k k * p(k)" in metrics["score_policy"]
    items = [json.loads(line) for line in (tmp_path / "judge.items.jsonl").read_text().splitlines()]
    assert items and all(len(it["score_probs"]) == 1 and it["parsed_scores"][0] is not None for it in items)
    assert all(it["score"] == it["scores"][0] and 0 <= it["score"] <= 5 for it in items)
    # Continuous scores: hardly any two replies of a group share one (the fake's integers tie often).
    assert metrics["pairs_judge_tied"] == 0
    assert "expected value of the score-token probabilities" in capsys.readouterr().out
