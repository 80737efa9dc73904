"""Direct judging (judge.method=direct) and the pairwise judge trainer (`srlm train-judge`) on the tiny model:
the direct score equals a plain forward pass, the shared-prefix forward equals running every row whole (scores and
gradients), training on pairs moves the expected scores toward the human order, and bad input is refused."""

from __future__ import annotations

import json

import pytest

from srlm.backends import GenerationRequest, Sampling, make_backend
from srlm.config import JudgeTrainingConfig, ModelConfig, load_config
from srlm.errors import ConfigError, DataError
from srlm.judge import DIRECT_PREFIX, SCORE_TOKENS, builtin_template, expected_score, judge_requests, parse_score, render


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from srlm.models import load_model

    return load_model(str(tiny_model_dir))


def _request(rid: str, question: str, answer: str) -> GenerationRequest:
    return GenerationRequest(rid, Sampling(n=1), 0, messages=[
        {"role": "user", "content": render(builtin_template("direct"), question, answer)}])


def _plain_forward_score(lm, request) -> float:
    import torch

    from srlm.backends.base import prompt_token_ids
    from srlm.backends.hf import candidate_token_ids

    continuation, digits = candidate_token_ids(lm.tokenizer, DIRECT_PREFIX, list(SCORE_TOKENS))
    ids = prompt_token_ids(lm.tokenizer, request) + continuation
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    return expected_score(torch.softmax(logits[digits], dim=-1).tolist())


def test_direct_needs_one_sample_and_has_its_own_template():
    with pytest.raises(ConfigError, match="judge.num_samples=1"):
        load_config(overrides=["judge.method=direct"])
    assert load_config(overrides=["judge.method=direct", "judge.num_samples=1"]).judge.method == "direct"
    direct = builtin_template("direct")
    assert "total score alone" in direct and "justify" not in direct
    assert direct.split("User:")[0] == builtin_template().split("User:")[0]  # the same rubric


def test_direct_judging_generates_nothing_and_equals_a_forward_pass(tiny):
    backend = make_backend("hf", tiny)
    requests = [_request("a", "What is the capital of France?", "Paris."), _request("b", "Name a color.", "Blue " * 30)]
    judged = judge_requests(backend, requests, "direct")
    assert backend.stats.extra["prefill_tokens"] == 0  # nothing generated: only the scoring pass ran
    assert backend.stats.extra["scored_sequences"] == 2
    for request, j in zip(requests, judged):
        assert len(j.texts) == 1 and j.scores[0] == pytest.approx(_plain_forward_score(tiny, request), abs=1e-4)
        assert parse_score(j.texts[0]) == pytest.approx(j.scores[0], abs=1e-3)  # the text says its own score
        assert sum(j.expected[0]["score_probs"]) == pytest.approx(1.0)


def test_eval_judge_direct_on_pairs(tiny_model_dir, tmp_path):
    from srlm.cli import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": "A full answer.", "rejected": "No."}) + "\n"
                             for i in range(3)))
    out = tmp_path / "judge.json"
    assert main(["eval", "judge", "--data", str(pairs), "--out", str(out), "--model", str(tiny_model_dir),
                 "judge.method=direct", "judge.num_samples=1"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["judge"]["method"] == "direct" and "opening 'Score: '" in metrics["score_policy"]
    assert metrics["sample_parse_rate"] == 1.0


# -- the trainer ---------------------------------------------------------------------------------------------------
def _pairs_file(path, n=8):
    rows = [{"prompt": f"What is {i} plus {i}?", "chosen": f"{i} plus {i} is {2 * i}.", "rejected": "I do not know."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_human_pairs_orders_every_ranked_pair_and_refuses_no_order(tmp_path):
    from srlm.stages.train_judge import human_pairs

    groups = tmp_path / "groups.jsonl"
    groups.write_text(json.dumps({"group_id": "g", "prompt": "Q?", "replies": [
        {"text": "best", "rank": 0, "reply_id": "a"}, {"text": "tie-1", "rank": 1, "reply_id": "b"},
        {"text": "tie-2", "rank": 1, "reply_id": "c"}]}) + "\n")
    pairs, counts = human_pairs(groups)
    assert [(p["better"], p["worse"]) for p in pairs] == [("best", "tie-1"), ("best", "tie-2")]  # a tie: no pair
    assert counts["pairs_available"] == 2
    tied = tmp_path / "tied.jsonl"
    tied.write_text(json.dumps({"group_id": "g", "prompt": "Q?", "replies": [
        {"text": "x", "rank": 0, "reply_id": "a"}, {"text": "y", "rank": 0, "reply_id": "b"}]}) + "\n")
    with pytest.raises(DataError, match="no pair of replies with different human ranks"):
        human_pairs(tied)


def test_length_balance_keeps_as_many_longer_as_shorter_better_replies(tmp_path):
    from srlm.stages.train_judge import human_pairs

    path = tmp_path / "pairs.jsonl"
    rows = ([{"prompt": f"Q{i}?", "chosen": "a long and helpful reply", "rejected": "short"} for i in range(6)]
            + [{"prompt": f"R{i}?", "chosen": "terse", "rejected": "a rambling unhelpful reply"} for i in range(2)]
            + [{"prompt": "S?", "chosen": "same", "rejected": "sane"}])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, counts = human_pairs(path, length_balance=True, seed=3)
    longer = [p for p in pairs if len(p["better"]) > len(p["worse"])]
    shorter = [p for p in pairs if len(p["better"]) < len(p["worse"])]
    assert len(longer) == len(shorter) == 2 and len(pairs) == 5  # the equal-length pair stays
    assert counts["better_longer"] == 6 and counts["better_shorter"] == 2
    assert counts["dropped_for_length_balance"] == 4 and counts["pairs_used"] == 5
    again, _ = human_pairs(path, length_balance=True, seed=3)
    assert again == pairs  # seeded
    assert [p["question"] for p in pairs] == sorted(p["question"] for p in pairs)  # file order kept
    assert len(human_pairs(path)[0]) == 9  # off by default
    one_sided = tmp_path / "one_sided.jsonl"
    one_sided.write_text(json.dumps({"prompt": "Q?", "chosen": "longer reply", "rejected": "no"}) + "\n")
    with pytest.raises(DataError, match="length_balance"):
        human_pairs(one_sided, length_balance=True)


def test_shared_prefix_forward_equals_running_every_row_whole(tiny, tmp_path):
    import torch

    from srlm.stages.train_judge import collate_pairs, common_prefix_length, human_pairs, last_position_scores, tokenize_pairs

    pairs, _ = human_pairs(_pairs_file(tmp_path / "p.jsonl", 3))
    features, digits, too_long = tokenize_pairs(pairs, tiny.tokenizer, builtin_template("direct"), 4096)
    assert too_long == 0 and len(digits) == 6
    batch = collate_pairs(features, tiny.tokenizer.pad_token_id)
    assert common_prefix_length(batch["input_ids"], batch["attention_mask"]) > 100  # the rubric is shared
    model = tiny.model
    model.train()
    results = []
    for share in (False, True):
        model.zero_grad()
        scores = last_position_scores(model, batch, digits, share_prefix=share)
        (scores * torch.arange(1.0, len(scores) + 1)).sum().backward()
        results.append((scores.detach().clone(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    model.eval()
    (whole, whole_grads), (shared, shared_grads) = results
    assert torch.allclose(whole, shared, atol=1e-5)
    assert len(whole_grads) == len(shared_grads) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole_grads, shared_grads))
    # Each row's score is the direct judge's score of that reply.
    request = _request("x", pairs[0]["question"], pairs[0]["better"])
    assert float(whole[0]) == pytest.approx(_plain_forward_score(tiny, request), abs=1e-4)


def test_training_moves_the_judge_toward_the_human_order(tiny_model_dir, tmp_path):
    from srlm.models import load_model
    from srlm.stages.train_judge import run_train_judge

    pairs = _pairs_file(tmp_path / "p.jsonl", 8)
    cfg = JudgeTrainingConfig(pairs=str(pairs), epochs=6, learning_rate=3e-3, learning_rate_end=3e-3, batch_size=4,
                              micro_batch_size=2, lora={"enabled": False})

    def gap(model_dir):
        backend = make_backend("hf", load_model(str(model_dir)))
        rows = [json.loads(line) for line in pairs.read_text().splitlines()]
        requests = [_request(f"{i}{side}", r["prompt"], r[side]) for i, r in enumerate(rows) for side in ("chosen", "rejected")]
        scores = [j.scores[0] for j in judge_requests(backend, requests, "direct")]
        return sum(scores[0::2]) / len(rows) - sum(scores[1::2]) / len(rows)

    stats = run_train_judge(str(tiny_model_dir), pairs, tmp_path / "judge", cfg, seed=0, model=ModelConfig(device="cpu"))
    assert stats["pairs_trained"] == 8 and stats["skipped_too_long"] == 0 and stats["steps"] == 12
    assert stats["pairs_first_epoch"] == 8 and 0 <= stats["pair_accuracy_first_epoch"] <= 1
    assert stats["loss_last"] < stats["loss_first"] - 0.05
    assert gap(tmp_path / "judge") > gap(tiny_model_dir) + 0.1  # the better reply now scores higher
    assert (tmp_path / "judge" / "model.safetensors").is_file()


def test_too_long_pairs_are_skipped_and_counted_or_refused(tiny_model_dir, tmp_path):
    from srlm.stages.train_judge import run_train_judge

    pairs = _pairs_file(tmp_path / "p.jsonl", 2)
    with pytest.raises(DataError, match="max_length_tokens=40"):
        run_train_judge(str(tiny_model_dir), pairs, tmp_path / "j", JudgeTrainingConfig(max_length_tokens=40),
                        seed=0, model=ModelConfig(device="cpu"))
    assert not (tmp_path / "j").exists()


def test_train_judge_cli(tiny_model_dir, tmp_path, capsys):
    from srlm.cli import main

    pairs = _pairs_file(tmp_path / "p.jsonl", 4)
    assert main(["train-judge", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--out", str(tmp_path / "j"),
                 "--stats-out", str(tmp_path / "stats.json"), "judge_training.batch_size=2"]) == 0
    assert (tmp_path / "j" / "model.safetensors").is_file()
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["pairs_trained"] == 4 and stats["steps"] == 2
    assert "judge.method=direct" in capsys.readouterr().out


def test_length_grouped_pairs_train_each_pair_once(tiny_model_dir, tmp_path):
    from srlm.stages.train_judge import run_train_judge

    pairs = _pairs_file(tmp_path / "p.jsonl", 8)
    cfg = JudgeTrainingConfig(batch_size=4, micro_batch_size=2, group_by_length=True)
    stats = run_train_judge(str(tiny_model_dir), pairs, tmp_path / "j", cfg, seed=0, model=ModelConfig(device="cpu"))
    assert stats["steps"] == 2 and stats["pairs_first_epoch"] == 8
