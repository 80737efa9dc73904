"""The meta-judge stage (Meta-Rewarding): judgements compared in both orders by a scripted meta-judge, position
bias weighted out, the better and worse judgement of each response written as a judge preference pair."""

from __future__ import annotations

import pytest

from srlm.backends.fake import FakeBackend
from srlm.config import JudgeConfig, MetaConfig, load_config
from srlm.errors import ConfigError, SrlmError
from srlm.io import read_jsonl, write_jsonl
from srlm.judge import check_judge_method
from srlm.stages.metajudge import load_meta_template, mix_pairs, run_metajudge


def _files(tmp_path, texts_per_response, prompt_of=lambda i: f"p{i}", scores=lambda i, k: float(k + 1)):
    responses, judgements = [], []
    for i, texts in enumerate(texts_per_response):
        rid = f"r{i}"
        responses.append({"prompt_id": prompt_of(i), "response_id": rid, "prompt": f"Question {prompt_of(i)}?",
                          "response": f"An answer number {i}."})
        judgements.append({"prompt_id": prompt_of(i), "response_id": rid, "score": 3.0, "scores": [3.0] * len(texts),
                           "judgements": [{"text": t, "score": scores(i, k) if t else None}
                                          for k, t in enumerate(texts)]})
    write_jsonl(tmp_path / "responses.jsonl", responses)
    write_jsonl(tmp_path / "judgements.jsonl", judgements)
    return tmp_path / "responses.jsonl", tmp_path / "judgements.jsonl"


def _judgement(prompt: str, which: str) -> str:
    start = prompt.index(f"# Judgement ({which})")
    end = prompt.index("# Judgement (b)") if which == "a" else prompt.index("Compare the two judgements")
    return prompt[start:end]


def prefers_careful(request, index):
    prompt = request.messages[-1]["content"]
    a, b = "careful" in _judgement(prompt, "a"), "careful" in _judgement(prompt, "b")
    return "Judgement (a) checks every point." + ("\nWinner: A" if a and not b else "\nWinner: B" if b and not a
                                                  else "\nWinner: tie")


def test_the_careful_judgement_is_chosen_and_the_order_does_not_matter(tmp_path):
    responses, judgements = _files(tmp_path, [["a sloppy look. Score: 1", "a careful check. Score: 3",
                                               "another sloppy look. Score: 5"],
                                              ["a careful check. Score: 2", "a careless one. Score: 4"],
                                              ["only one judgement. Score: 3", ""]])  # r2: one parsed: no pair
    stats = run_metajudge(responses, judgements, tmp_path / "judge_pairs.jsonl", FakeBackend(prefers_careful),
                          MetaConfig(enabled=True), JudgeConfig(), seed=0)
    pairs = {p["response_id"]: p for p in read_jsonl(tmp_path / "judge_pairs.jsonl")}
    assert set(pairs) == {"r0", "r1"}
    assert pairs["r0"]["chosen"][0]["content"] == "a careful check. Score: 3"
    assert pairs["r0"]["rejected"][0]["content"] == "a sloppy look. Score: 1"  # the two sloppy ones tie: the first
    assert pairs["r1"]["chosen"][0]["content"] == "a careful check. Score: 2"
    assert pairs["r1"]["kind"] == "judge" and "Question p1?" in pairs["r1"]["prompt"][0]["content"]
    assert stats["comparisons"] == 6 + 2 and stats["meta_parse_rate"] == 1.0
    assert stats["position_bias_rate"] == 0.0  # the script follows the judgement, never the position
    assert stats["dropped"] == {"fewer_than_2_judgements": 1} and stats["judge_pairs"] == 2
    assert len(read_jsonl(tmp_path / "judge_pairs.jsonl.verdicts.jsonl")) == 8
    # the same judgements in the other order: the same choice
    responses, judgements = _files(tmp_path, [["another sloppy look. Score: 5", "a careful check. Score: 3",
                                               "a sloppy look. Score: 1"]])
    run_metajudge(responses, judgements, tmp_path / "reversed.jsonl", FakeBackend(prefers_careful),
                  MetaConfig(enabled=True), JudgeConfig(), seed=0)
    (pair,) = read_jsonl(tmp_path / "reversed.jsonl")
    assert pair["chosen"][0]["content"] == "a careful check. Score: 3"
    assert pair["rejected"][0]["content"] == "another sloppy look. Score: 5"  # now the first of the two sloppy ones


def test_one_response_per_prompt_the_one_whose_judgements_disagree_most(tmp_path):
    texts = [["careful. Score: 3", "sloppy. Score: 3"], ["careful. Score: 1", "sloppy. Score: 5"],
             ["careful. Score: 2", "sloppy. Score: 4"], ["careful. Score: 4", "sloppy. Score: 4"]]
    spread = {0: (3.0, 3.0), 1: (1.0, 5.0), 2: (2.0, 4.0), 3: (4.0, 4.0)}
    responses, judgements = _files(tmp_path, texts, prompt_of=lambda i: "p0" if i < 3 else "p1",
                                   scores=lambda i, k: spread[i][k])
    stats = run_metajudge(responses, judgements, tmp_path / "judge_pairs.jsonl", FakeBackend(prefers_careful),
                          MetaConfig(enabled=True), JudgeConfig(), seed=0)
    (pair,) = read_jsonl(tmp_path / "judge_pairs.jsonl")
    assert pair["response_id"] == "r1"  # p0: scores 1 and 5 vary most; p1: its one response's judgements agree
    assert stats["prompts"] == 2 and stats["responses_compared"] == 1 and stats["comparisons"] == 2
    assert stats["dropped"] == {"judgements_agree": 1}


def test_a_meta_judge_that_always_picks_the_first_position_teaches_nothing(tmp_path):
    responses, judgements = _files(tmp_path, [["one. Score: 1", "two. Score: 2", "three. Score: 3"]])
    stats = run_metajudge(responses, judgements, tmp_path / "judge_pairs.jsonl",
                          FakeBackend(lambda request, index: "Winner: A"), MetaConfig(enabled=True), JudgeConfig(), seed=0)
    # every win is in the first position, so a first-position win weighs 0: no judgement beats another
    assert stats["position_bias_rate"] == 1.0 and stats["first_position_wins"] == 6
    assert stats["judge_pairs"] == 0 and stats["dropped"] == {"tie": 1}


def test_mix_caps_the_judge_pairs_share(tmp_path):
    write_jsonl(tmp_path / "actor.jsonl", [{"pair_id": f"a{i}"} for i in range(4)])
    write_jsonl(tmp_path / "judge.jsonl", [{"pair_id": f"j{i}"} for i in range(10)])
    stats = mix_pairs(tmp_path / "actor.jsonl", tmp_path / "judge.jsonl", tmp_path / "mixed.jsonl", 0.5, seed=0)
    assert stats == {"actor_pairs": 4, "judge_pairs_trained": 4}
    assert len(read_jsonl(tmp_path / "mixed.jsonl")) == 8
    assert mix_pairs(tmp_path / "actor.jsonl", tmp_path / "judge.jsonl", tmp_path / "m0.jsonl", 0.0,
                     seed=0)["judge_pairs_trained"] == 0


def test_meta_judging_needs_written_judgements_to_compare():
    with pytest.raises(ConfigError, match="judge.num_samples >= 2"):
        load_config("quickstart", overrides=["meta.enabled=true"])  # quickstart: one judgement per response
    load_config("quickstart", overrides=["meta.enabled=true", "judge.num_samples=3"])


def test_a_killed_meta_judge_resumes_where_it_stopped(tmp_path):
    responses, judgements = _files(tmp_path, [["a careful check. Score: 3", "sloppy. Score: 1", "sloppy too. Score: 5"],
                                              ["a careful check. Score: 2", "careless. Score: 4"]])
    calls = []

    def dies_after_four(request, index):
        calls.append(request.request_id)
        if len(calls) > 4:
            raise KeyboardInterrupt  # the process is stopped in the middle of the stage
        return prefers_careful(request, index)

    out = tmp_path / "judge_pairs.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_metajudge(responses, judgements, out, FakeBackend(dies_after_four), MetaConfig(enabled=True),
                      JudgeConfig(), seed=0, chunk_size=2)
    assert not out.exists() and len(read_jsonl(tmp_path / "judge_pairs.jsonl.verdicts.jsonl.partial")) == 4
    again = []
    stats = run_metajudge(responses, judgements, out, FakeBackend(lambda r, i: again.append(r.request_id)
                                                                  or prefers_careful(r, i)),
                          MetaConfig(enabled=True), JudgeConfig(), seed=0, chunk_size=2)
    assert len(again) == 8 - 4 and not set(again) & set(calls[:4])  # only what was left
    assert stats["comparisons"] == 8 and stats["judge_pairs"] == 2


class DirectMetaJudge(FakeBackend):
    """Reads the verdict as meta.method=direct does: p(A), p(B) after "Winner: ", favouring the careful judgement;
    it never writes anything (a model that cannot write the verdict line)."""

    def __init__(self, first=None):
        super().__init__(lambda request, index: "I cannot say.")
        self.continuations = []
        self.first = first  # p(A) as a function of (careful shown first, careful shown second), if given

    def score_token_probs(self, items, candidates):
        from srlm.backends.base import CandidateProbs

        out = []
        for request, continuation in items:
            self.continuations.append((continuation, tuple(candidates)))
            prompt = request.messages[-1]["content"]
            a = "careful" in prompt[prompt.index("# Judgement (a)"):prompt.index("# Judgement (b)")]
            b = "careful" in prompt[prompt.index("# Judgement (b)"):]
            p_a = self.first(a, b) if self.first else (0.7 if a else 0.25)
            out.append(CandidateProbs([p_a, 1 - p_a], 0.9))
        return out


def test_direct_meta_judging_reads_the_verdict_token_and_decides_every_comparison(tmp_path):
    responses, judgements = _files(tmp_path, [["a sloppy look. Score: 1", "a careful check. Score: 3",
                                               "another sloppy look. Score: 5"]])
    backend = DirectMetaJudge()
    out = tmp_path / "judge_pairs.jsonl"
    stats = run_metajudge(responses, judgements, out, backend, MetaConfig(enabled=True, method="direct"),
                          JudgeConfig(), seed=0)
    assert set(backend.continuations) == {("Winner: ", ("A", "B"))} and backend.stats.sequences == 0  # nothing generated
    (pair,) = read_jsonl(out)
    assert pair["chosen"][0]["content"] == "a careful check. Score: 3"
    assert stats["meta_parse_rate"] == 1.0 and stats["comparisons"] == 6
    verdicts = read_jsonl(tmp_path / "judge_pairs.jsonl.verdicts.jsonl")
    assert {v["text"] for v in verdicts} == {"Winner: A", "Winner: B"} and all(v["verdict_probs"] for v in verdicts)
    assert "Reply with your verdict alone" in load_meta_template(None, "direct")


def test_direct_meta_judging_needs_token_probabilities(tmp_path):
    from srlm.backends.base import supports_score_probs

    class WritesOnly(FakeBackend):
        score_token_probs = None

    responses, judgements = _files(tmp_path, [["one. Score: 1", "two. Score: 2"]])
    assert not supports_score_probs(WritesOnly())
    with pytest.raises(SrlmError, match="meta.method=direct"):
        run_metajudge(responses, judgements, tmp_path / "out.jsonl", WritesOnly(),
                      MetaConfig(enabled=True, method="direct"), JudgeConfig(), seed=0)
    with pytest.raises(SrlmError, match="meta.method=direct"):
        check_judge_method(load_config("quickstart", overrides=[
            "meta.enabled=true", "meta.method=direct", "judge.method=sample_mean", "judge.num_samples=3",
            "backend.name=vllm"]))


def test_direct_meta_judging_balances_a_meta_judge_that_leans_to_one_position(tmp_path):
    # p(A) is 0.8 whatever is shown, a little more when the careful judgement is first, a little less when it is
    # second: every argmax verdict is "A" (position bias 1.0), yet averaged over both orders the careful one wins.
    responses, judgements = _files(tmp_path, [["a sloppy look. Score: 1", "a careful check. Score: 3"]])
    backend = DirectMetaJudge(first=lambda a, b: 0.8 + 0.05 * a - 0.05 * b)
    stats = run_metajudge(responses, judgements, tmp_path / "judge_pairs.jsonl", backend,
                          MetaConfig(enabled=True, method="direct"), JudgeConfig(), seed=0)
    assert stats["position_bias_rate"] == 1.0 and stats["first_position_wins"] == 2
    (pair,) = read_jsonl(tmp_path / "judge_pairs.jsonl")
    assert pair["chosen"][0]["content"] == "a careful check. Score: 3"
    assert stats["meta_preference_margin_mean"] == pytest.approx(0.05)
