"""How well the LLM-as-a-Judge agrees with humans: score human-ranked replies, compare rankings (paper-spec 5, 6.5).

    srlm eval judge --data en_100_tree.jsonl --out judge_eval.json --model DIR [key=value ...]

The paper measures the judge on held-out OpenAssistant replies that humans ranked (Table 4: pairwise accuracy,
5-best, exact match, Spearman, Kendall tau). Here every reply of every ranked group gets `judge.num_samples`
judgements from the configured template (the same rubric, sampling and parser as the `judge` stage, so the number
measures the judge the loop actually uses); the reply's score is the mean of the parsable ones, and
`srlm.evaluation.metrics.judge_agreement` compares the scores with the human ranks.

With `judge.method=expected` each judgement's score is instead the expected value of the judge's own probabilities
of the digits 0-5 after its last "Score:" (see `srlm.judge`), and the reply's score the mean of those; this is how
the two methods are compared on the same human ranks (benchmarks/judge_methods.py).

Choices the paper leaves open, and what we do:
- several samples per reply, averaged (the loop's setting), not a single greedy judgement;
- a judge prompt longer than `judge.max_prompt_tokens` is not sent: the reply has a missing score, like a failed
  parse (never a 0), and is counted in `replies_skipped_prompt_too_long`;
- a multi-turn context (OASST groups deeper in a tree) goes into the template's single `{prompt}` slot as a
  transcript (see `conversation_as_prompt`), since the paper's template has one question slot.
The tie policy, 5-best threshold and correlation averaging are written into the metrics by `judge_agreement`.

`evaluate_judge` is the library entry point (the loop can call it per iteration); `write_judge_eval` writes the
metrics JSON and a per-item JSONL beside it, from which every number can be recomputed.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterable

from srlm.backends import GenerationRequest
from srlm.errors import DataError
from srlm.evaluation.human_data import RankedGroup, read_oasst_trees, read_preference_pairs
from srlm.evaluation.metrics import format_with_interval, judge_agreement, length_split_accuracy, sample_size
from srlm.io import stable_seed, write_json, write_jsonl
from srlm.judge import Judge, average_score
from srlm.progress import chunks, progress

HUMAN_DATA_FORMATS = ("oasst", "pairs", "groups")
SCORE_POLICY = (
    "Each reply gets judge.num_samples judgements; its score is the mean of the parsable ones (a value in [0, 5]). "
    "A reply with no parsable judgement, or whose judge prompt was too long to send, has a missing score (never 0)."
)
EXPECTED_SCORE_POLICY = (
    "Each reply gets judge.num_samples judgements; a judgement's score is sum_k k * p(k), p being the judge's "
    "probabilities of the tokens 0-5 right after its last 'Score:', renormalised over those six, and the reply's "
    "score is the mean over its judgements that have one (a value in [0, 5]). A judgement without a parsable score "
    "has none; a reply with none, or whose judge prompt was too long to send, has a missing score (never 0)."
)
DIRECT_SCORE_POLICY = (
    "judge.method=direct: no judgement is generated; each reply's score is sum_k k * p(k), p being the judge's "
    "probabilities of the tokens 0-5 right after its reply's opening 'Score: ', renormalised over those six "
    "(a value in [0, 5]). A reply whose judge prompt was too long to send has a missing score (never 0)."
)
# Requests sent to the backend at once: the unit of the progress bar (the hf backend batches within it).
_CHUNK_REQUESTS = 64


def conversation_as_prompt(context: list[dict]) -> str:
    """The text for a template's question slot: the user message alone, or a transcript of a longer conversation.

    The judge templates introduce the question with "User:" (additive) or "[Question]" (MT-Bench style), so a
    multi-turn context is written as the first user message followed by "Assistant: ..." / "User: ..." turns; the
    judge then sees the whole conversation and the last user turn is the one being answered.
    """
    if not context:
        raise ValueError("a conversation needs at least one message")
    if len(context) == 1:
        return context[0]["content"]
    lines = [context[0]["content"]]
    for message in context[1:]:
        speaker = "Assistant" if message["role"] == "assistant" else "User"
        lines.append(f"{speaker}: {message['content']}")
    return "\n\n".join(lines)


def detect_human_data_format(path: str | Path) -> str:
    """'oasst' (message trees: a "prompt" object with "replies") or 'pairs' ("chosen"/"rejected"), from line 1."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if isinstance(record, dict) and isinstance(record.get("prompt"), dict):
                return "oasst"
            if isinstance(record, dict) and isinstance(record.get("replies"), list):
                return "groups"  # `srlm data oasst`'s eft_source_*.jsonl
            if isinstance(record, dict) and ("chosen" in record or "rejected" in record):
                return "pairs"  # the reader names a missing field better than a guess here could
            keys = ", ".join(sorted(record)[:10]) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f"{path}:{line_no}: cannot tell the format (keys: {keys}); expected OpenAssistant trees "
                "({message_tree_id, prompt: {text, role, replies}}), preference pairs ({prompt?, chosen, rejected}) or "
                "ranked groups ({group_id, prompt, replies}); pass --format oasst|pairs|groups"
            )
    raise DataError(f"{path}: no records")


def read_human_groups(path: str | Path, format: str = "auto") -> tuple[list[RankedGroup], dict, str]:
    """(groups, reader counts, format used) from OASST trees or preference pairs."""
    if format == "auto":
        format = detect_human_data_format(path)
    if format == "oasst":
        groups, counts = read_oasst_trees(path)
    elif format == "pairs":
        groups, counts = read_preference_pairs(path)
    elif format == "groups":
        from srlm.data.eft import read_eft_source

        records = read_eft_source(path)
        groups = [RankedGroup(group_id=r["group_id"], context=[{"role": "user", "content": r["prompt"]}],
                              replies=[dict(text=x["text"], rank=x["rank"], reply_id=x["reply_id"]) for x in r["replies"]],
                              source=f"{path}:{i + 1}")
                  for i, r in enumerate(records)]
        counts = {"groups": len(groups)}
    else:
        raise ValueError(f"format must be 'auto' or one of {', '.join(HUMAN_DATA_FORMATS)}, got {format!r}")
    if not groups:
        raise DataError(f"{path}: no usable ranked groups ({json.dumps(counts)})")
    return groups, counts, format


def judge_replies(groups: list[RankedGroup], backend, judge_cfg, *, seed: int) -> list[dict]:
    """One item per reply, in group order: ids, the human rank, and the judge's judgements and score (replies whose
    judge prompt is too long are marked skipped, unscored)."""
    judge = Judge.from_config(judge_cfg, backend)
    items: list[dict] = []
    to_send: list[tuple[GenerationRequest, dict]] = []  # (request, the item its judgements go to)
    for group in groups:
        question = conversation_as_prompt(group.context)
        for reply in group.replies:
            item = {
                "group_id": group.group_id,
                "reply_id": reply["reply_id"],
                "rank": reply["rank"],
                "source": group.source,
                "judgements": [],
                "scores": [],
                "score": None,
            }
            items.append(item)
            request = judge.request(f"{group.group_id}/{reply['reply_id']}", question, reply["text"],
                                    stable_seed(seed, "eval-judge", group.group_id, reply["reply_id"]))
            if not judge.fits(backend, request):
                item["skipped"] = "judge_prompt_too_long"
                continue
            to_send.append((request, item))

    with progress(len(to_send), "eval judge", unit="reply") as bar:
        for chunk in chunks(to_send, _CHUNK_REQUESTS):
            judged = judge.judge(backend, [request for request, _ in chunk], on_done=bar.update)
            for (_, item), j in zip(chunk, judged):
                item["judgements"] = j.texts
                item["scores"] = j.scores  # what `score` averages
                if j.expected is not None:  # the integers the texts end with are kept beside the expected scores
                    item["parsed_scores"] = j.parsed
                    item["score_probs"] = [f["score_probs"] for f in j.expected]
                    item["score_token_mass"] = [f["score_token_mass"] for f in j.expected]
                item["score"] = average_score(item["scores"])
    return items


def agreement_metrics(groups: list[RankedGroup], items: list[dict], *, bootstrap_samples: int, seed: int) -> dict:
    """The judge's agreement with the human ranks (`judge_agreement`), its signal, and beside it the length
    baseline and the length split on the same groups."""
    score_groups, start = [], 0
    for group in groups:
        replies = items[start : start + len(group.replies)]
        start += len(group.replies)
        score_groups.append([{"rank": it["rank"], "score": it["score"]} for it in replies])
    metrics = judge_agreement(score_groups, bootstrap_samples=bootstrap_samples, seed=seed)
    metrics["judge_signal"] = judge_signal(metrics)
    # The same pairs scored by reply length alone: what a judge that only counts characters would get. In HH-RLHF
    # the human-preferred reply is the longer one in about 60% of pairs, so a judge's accuracy means little until
    # it is set beside this.
    length_groups = [[{"rank": r["rank"], "score": float(len(r["text"]))} for r in g.replies] for g in groups]
    length = judge_agreement(length_groups, bootstrap_samples=bootstrap_samples, seed=seed)
    metrics["length_baseline"] = {"pairwise_accuracy": length["pairwise_accuracy"],
                                  "pairwise_accuracy_ci": length["pairwise_accuracy_ci"],
                                  "policy": "each reply scored by its length in characters; longer = better"}

    # How much of that agreement is length: the accuracy where humans preferred the longer reply, where they preferred
    # the shorter one, and their mean (a judge that only counts characters gets 1, 0 and 0.5).
    metrics["length_split"] = length_split(groups, items, bootstrap_samples=bootstrap_samples, seed=seed)
    return metrics


def evaluate_judge(
    groups: Iterable[RankedGroup], backend, judge_cfg, *, seed: int, bootstrap_samples: int = 1000
) -> tuple[dict[str, Any], list[dict]]:
    """Judge every reply of every group, then measure agreement with the human ranks.

    groups: `RankedGroup`s (from `read_oasst_trees` / `read_preference_pairs`).
    backend: any `srlm.backends` backend (the judge model); judge_cfg: a `srlm.config.JudgeConfig`.
    Returns (metrics, items). metrics: everything `judge_agreement` returns (values, 95% intervals, counts and
    policies) plus the judge settings, `sample_parse_rate` (parsable judgements / judgements sent) and
    `replies_skipped_prompt_too_long`. items: one record per reply, in group order, with group_id, reply_id,
    rank, the judgement texts, per-sample scores and the mean score (with judge.method=expected, per-sample
    expected scores, plus `parsed_scores`, `score_probs` and `score_token_mass`).
    """
    groups = list(groups)
    method = judge_cfg.method
    items = judge_replies(groups, backend, judge_cfg, seed=seed)
    metrics = agreement_metrics(groups, items, bootstrap_samples=bootstrap_samples, seed=seed)

    sent = sum(len(it["scores"]) for it in items)
    parsed = sum(1 for it in items for s in it["scores"] if s is not None)
    metrics.update(
        score_policy={"expected": EXPECTED_SCORE_POLICY, "direct": DIRECT_SCORE_POLICY}.get(method, SCORE_POLICY),
        sample_parse_rate=parsed / sent if sent else None,
        judgements=sent,
        replies_skipped_prompt_too_long=sum(1 for it in items if it.get("skipped")),
        judge={
            "template_file": judge_cfg.template_file or "built-in additive 5-point template",
            "method": method,
            "num_samples": judge_cfg.num_samples,
            "temperature": judge_cfg.temperature,
            "top_p": judge_cfg.top_p,
            "max_new_tokens": judge_cfg.max_new_tokens,
        },
    )
    return metrics, items


def length_split(groups: list[RankedGroup], items: list[dict], *, bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    """`srlm.evaluation.metrics.length_split_accuracy` of a judge's scores (`items`, as `evaluate_judge` returns
    them or its items file holds them) on `groups`, matched by group and reply id. Groups the items do not cover
    (an evaluation of fewer pairs) are left out; a judged reply without a score counts as a tie, as everywhere."""
    scores = {(it["group_id"], it["reply_id"]): it.get("score") for it in items}
    judged = [g for g in groups if all((g.group_id, r["reply_id"]) in scores for r in g.replies)]  # not: never sent
    return length_split_accuracy(
        [[(r["rank"], scores[(g.group_id, r["reply_id"])], len(r["text"])) for r in g.replies] for g in judged],
        bootstrap_samples=bootstrap_samples, seed=seed)


def judge_signal(metrics: dict) -> str:
    """'above chance', 'below chance' or 'none' from the pairwise accuracy's 95% interval against 0.5.

    'none' means the interval includes 0.5: on this evidence the judge orders replies no better than a coin, and so
    are the preference pairs it builds."""
    interval = metrics.get("pairwise_accuracy_ci")
    if interval is None or interval[0] is None:
        return "none"
    if interval[0] > 0.5:
        return "above chance"
    if interval[1] < 0.5:
        return "below chance"
    return "none"


def format_accuracy(metrics: dict) -> str:
    """'0.553 [0.504, 0.601], 400 pairs' for a judge-accuracy metrics dict (one line for tables and logs); a
    sample under 100 pairs says it is a demonstration."""
    shown = format_with_interval(metrics, "pairwise_accuracy")
    return "n/a" if shown is None else f"{shown}, {sample_size(metrics.get('n_pairs'), 'pairs')}"


def items_path_for(out_path: str | Path) -> Path:
    """`<out stem>.items.jsonl` beside the metrics file."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.items.jsonl")


def write_judge_eval(out_path: str | Path, metrics: dict, items: list[dict]) -> tuple[Path, Path]:
    """Write the metrics JSON and the per-item JSONL; returns both paths."""
    out_path = Path(out_path)
    items_path = items_path_for(out_path)
    write_jsonl(items_path, items)
    write_json(out_path, {**metrics, "items_file": items_path.name})
    return out_path, items_path


_TABLE_ROWS = (
    ("pairwise accuracy", "pairwise_accuracy", "n_pairs"),
    ("5-best", "five_best", "n_five"),
    ("exact match", "exact_match", "n_groups_exact_match"),
    ("Spearman", "spearman", "n_groups_correlation"),
    ("Kendall tau", "kendall_tau", "n_groups_correlation"),
    ("parse failure rate", "parse_failure_rate", "n_replies"),
)


def format_judge_table(metrics: dict) -> str:
    """A small text table of the agreement metrics with their 95% intervals and counts."""
    lines = [f"  {'metric':<20} {'value':>8}  {'95% interval':<17} n"]
    for label, key, count_key in _TABLE_ROWS:
        value, interval = metrics.get(key), metrics.get(f"{key}_ci")
        shown = "n/a" if value is None else f"{value:.3f}"
        ci = "" if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"
        lines.append(f"  {label:<20} {shown:>8}  {ci:<17} {metrics.get(count_key, '')}")
    length = metrics.get("length_baseline")
    if length and length.get("pairwise_accuracy") is not None:
        interval = length.get("pairwise_accuracy_ci")
        ci = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval and None not in interval else ""
        lines.append(f"  {'length baseline':<20} {length['pairwise_accuracy']:>8.3f}  {ci:<17} (longer reply = better)")
    split = metrics.get("length_split") or {}
    if split.get("length_balanced_accuracy") is not None:
        ci = split.get("length_balanced_accuracy_ci")
        ci = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(f"  {'length-balanced':<20} {split['length_balanced_accuracy']:>8.3f}  {ci:<17} (mean of: "
                     f"{split['preferred_longer_accuracy']:.3f} where humans preferred the longer reply, n="
                     f"{split['n_longer']}; {split['preferred_shorter_accuracy']:.3f} where the shorter, n="
                     f"{split['n_shorter']})")
    if metrics.get("judge_signal"):
        lines.append(f"  judge signal: {metrics['judge_signal']}"
                     + (" (the interval includes 0.5: no better than chance)" if metrics["judge_signal"] == "none" else ""))
    judge = metrics.get("judge") or {}
    if judge.get("method") == "expected":
        lines.append(f"  scores: expected value of the score-token probabilities, {judge.get('num_samples')} "
                     "judgement(s) per reply")
    lines.append(f"  groups {metrics['n']}, replies {metrics['n_replies']}, judgements {metrics.get('judgements')}, "
                 f"judged-equal pairs {metrics.get('pairs_judge_tied')} (half credit)")
    skipped = metrics.get("replies_skipped_prompt_too_long")
    if skipped:
        lines.append(f"  {skipped} replies not judged: judge prompt longer than judge.max_prompt_tokens (missing scores)")
    return "\n".join(lines)
