"""EFT seed data: LLM-as-a-Judge demonstrations on human-ranked OpenAssistant replies (paper-spec section 2.2).

    srlm data eft --source eft_source_train.jsonl --out eft_train.jsonl [--model TEACHER] [key=value ...]

The paper's construction, step by step, and the choices it leaves open ([N] in the spec):

1. **Teacher judgements.** OASST has no justification or 0-5 score, so a teacher writes them: every reply of every
   group (`{"group_id", "prompt", "replies": [{"text", "rank", "reply_id"}]}` from `srlm data oasst`, rank 0 =
   best) is rendered into the judge template and judged `judge.num_samples` times, sampled with the judge settings.
   The paper's teacher is the SFT baseline (the IFT-only model); any model and backend works here. The first sample
   with a parsable score is the demonstration and that score is the reply's score (not the mean: the target text
   must say the score it is trained to output). All sample texts are kept in the log `<out stem>.judgements.jsonl`.
   A reply whose judge prompt is longer than `judge.max_prompt_tokens` is not judged (as in `srlm judge`).
2. **Agreement filter.** A group's demonstrations are kept only if the ranking implied by the teacher's scores
   agrees with the human ranking: for every pair of replies with *different* human ranks, the better-ranked reply
   must get a *strictly* higher score. Ties: equal human ranks impose no constraint (humans said neither is
   better, so any scores agree); equal scores for different human ranks are a disagreement (the teacher failed to
   separate what humans separated). The filter is all-or-nothing per group, as in the paper ("the ranking ... for
   that prompt's responses"). Groups are dropped, each counted under the first reason that applies:
     - `no_human_order`: fewer than 2 distinct human ranks (nothing to agree with; `srlm data oasst` emits none);
     - `prompt_too_long`: some reply's judge prompt exceeds `judge.max_prompt_tokens`;
     - `no_score`: some reply has no parsable judgement among its samples;
     - `disagree`: some pair is out of order or tied, as above.
3. **Rebalancing.** The paper found most examples scored 4 and dropped part of them; the target distribution is not
   given. Here no score value may make up more than `max_per_score_share` of the kept examples (default 0.4).
   Over-common values are cut to one common level L, the largest that satisfies the cap, so as few examples as
   possible are dropped and the rarer values are all kept. Which examples of a capped value survive is a stable
   random choice (sha256 of seed, group and reply id), so the same inputs always give the same file. If fewer than
   1/share distinct values are present the cap cannot be met (two values can't both be <= 40%); it is then raised
   to 1/(number of values), i.e. equal counts, and reported as `effective_max_share`. Whole examples are dropped,
   one reply at a time: a group may lose some of its replies here (the paper re-samples examples, not groups).
4. **Output.** `{"prompt", "response", "judgement", "score", "group_id", "reply_id"}`, the EFT schema `srlm sft`
   reads, in source order; counts by reason and score histograms (all judged replies, agreeing groups, after
   rebalancing) go to `<out stem>.counts.json`.

Resume: the log is written in chunks of `chunk_groups` groups with `ResumableJsonlWriter`, like `srlm judge`; a
killed run continues where it stopped, and a finished log is reused as well, so re-running with another
`max_per_score_share` costs no generation. Each log record carries a key of the teacher, seed and judge settings; a
log written with different ones is refused rather than silently mixed.
"""

from __future__ import annotations

import json

from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from srlm.backends import GenerationRequest
from srlm.config import JudgeConfig, fingerprint_view
from srlm.errors import DataError
from srlm.io import ResumableJsonlWriter, iter_jsonl, stable_id, stable_seed, write_json, write_jsonl
from srlm.judge import Judge, load_template, parse_score
from srlm.progress import chunks, progress

DEFAULT_MAX_PER_SCORE_SHARE = 0.4
SOURCE_SCHEMA = {"group_id": str, "prompt": str, "replies": list}
DROP_REASONS = ("no_human_order", "prompt_too_long", "no_score", "disagree")
SKIPPED_TOO_LONG = "judge_prompt_too_long"


# --------------------------------------------------------------------------------------------------------------
# Paths and input


def log_path_for(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.with_suffix('').name}.judgements.jsonl")


def counts_path_for(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.with_suffix('').name}.counts.json")


def read_eft_source(path: str | Path, limit: int | None = None) -> list[dict]:
    """Ranked groups from `srlm data oasst` (`eft_source_*.jsonl`), checked field by field; the first `limit` only."""
    groups: list[dict] = []
    seen: set[str] = set()
    for index, record in enumerate(iter_jsonl(path, SOURCE_SCHEMA)):
        if limit is not None and len(groups) >= limit:
            break
        where = f"{path}:{index + 1}"  # iter_jsonl skips blank lines, so this is the record number
        if record["group_id"] in seen:
            raise DataError(f"{where}: group_id '{record['group_id']}' appears twice")
        seen.add(record["group_id"])
        reply_ids: set[str] = set()
        for j, reply in enumerate(record["replies"]):
            at = f"{where}: replies[{j}]"
            if not isinstance(reply, dict):
                raise DataError(f"{at}: must be an object")
            for name in ("text", "reply_id"):
                if not isinstance(reply.get(name), str) or not reply[name].strip():
                    raise DataError(f"{at}: field '{name}' must be a non-empty string")
            rank = reply.get("rank")
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
                raise DataError(f"{at}: field 'rank' must be a non-negative whole number, got {rank!r}")
            if reply["reply_id"] in reply_ids:
                raise DataError(f"{at}: reply_id '{reply['reply_id']}' appears twice in the group")
            reply_ids.add(reply["reply_id"])
        groups.append(record)
    if not groups:
        raise DataError(f"{path}: no groups")
    return groups


# --------------------------------------------------------------------------------------------------------------
# Step 1: teacher judgements, resumable


def _item_id(group_id: str, reply_id: str) -> str:
    return stable_id("eft", group_id, reply_id)


def log_key(teacher: str, judge_cfg: JudgeConfig, template: str, seed: int) -> str:
    """What a log's judgements depend on: a log written with another teacher, seed or judge setting is stale."""
    # The judge section as model_dump_json writes it, less the keys added since logs were first keyed this way.
    judge = json.dumps(fingerprint_view("judge", judge_cfg.model_dump(mode="json")), separators=(",", ":"),
                       ensure_ascii=False)
    return stable_id(teacher, seed, judge, template)


def judge_groups(
    groups: Sequence[dict],
    backend,
    judge_cfg: JudgeConfig,
    *,
    seed: int,
    log_path: str | Path | None = None,
    teacher: str = "",
    chunk_groups: int = 16,
) -> dict[str, dict]:
    """The teacher's judgements of every reply: item id -> log record (see `_log_record`).

    With `log_path`, records are appended to `<log>.partial` after every `chunk_groups` groups and the finished log
    is written at the end; records already there (a killed run's partial log, or a finished log) are reused.
    """
    # Demonstrations are justifications, so always the justified rubric (never judge.method=direct's).
    judge = Judge.from_config(judge_cfg, template=load_template(judge_cfg.template_file))
    key = log_key(teacher, judge_cfg, judge.template, seed)

    # One request per reply; the seed depends on the reply only, so a resumed run samples what a whole one would.
    requests_by_group: list[list[tuple[dict, GenerationRequest]]] = []
    info: dict[str, dict] = {}
    for group in groups:
        row = []
        for reply in group["replies"]:
            item_id = _item_id(group["group_id"], reply["reply_id"])
            if item_id in info:
                raise DataError(f"group {group['group_id']}: reply {reply['reply_id']} appears twice")
            info[item_id] = {"item_id": item_id, "group_id": group["group_id"], "reply_id": reply["reply_id"],
                             "rank": reply["rank"], "log_key": key}
            request = judge.request(item_id, group["prompt"], reply["text"],
                                    stable_seed(seed, "eft", group["group_id"], reply["reply_id"]))
            row.append((info[item_id], request))
        requests_by_group.append(row)

    if log_path is None:
        done: dict[str, dict] = {}
        writer = None
    else:
        log_path = Path(log_path)
        partial = log_path.with_name(log_path.name + ".partial")
        reopened = log_path.exists() and not partial.exists()
        if reopened:
            log_path.replace(partial)  # a finished log: reopen it for appending, so only new replies are judged
        writer = ResumableJsonlWriter(log_path, id_field="item_id")
        stale = [r for r in writer.records if r.get("log_key") != key]
        if stale:
            if reopened:
                partial.replace(log_path)  # leave it as it was found
            raise DataError(
                f"{log_path if reopened else partial}: written by another teacher, seed or judge setting "
                f"({len(stale)} of {len(writer.records)} records); delete it or choose another --out"
            )
        done = {r["item_id"]: r for r in writer.records}

    results = dict(done)
    todo_groups = [[(i, r) for i, r in row if i["item_id"] not in done] for row in requests_by_group]
    todo_groups = [row for row in todo_groups if row]
    total = sum(len(row) for row in requests_by_group)
    with progress(total, "eft judge", initial=total - sum(len(row) for row in todo_groups), unit="reply") as bar:
        for chunk in chunks(todo_groups, chunk_groups):
            items = [pair for row in chunk for pair in row]
            fits = [(i, r) for i, r in items if judge.fits(backend, r)]
            outputs = backend.generate([r for _, r in fits], on_done=bar.update) if fits else []
            records = {i["item_id"]: _log_record(i, outs) for (i, _), outs in zip(fits, outputs)}
            for i, _ in items:
                if i["item_id"] not in records:
                    records[i["item_id"]] = {**_log_record(i, []), "skipped": SKIPPED_TOO_LONG}
                    bar.update(1)
            ordered = [records[i["item_id"]] for i, _ in items]
            if writer is not None:
                writer.append(ordered)
            results.update((r["item_id"], r) for r in ordered)

    if writer is not None:
        order = {item_id: n for n, item_id in enumerate(info)}
        # Records of replies no longer in the source (e.g. a smaller --limit) stay in the log, after the others.
        writer.finish(order_key=lambda r: (order.get(r["item_id"], len(order)), r["item_id"]))
    return {item_id: results[item_id] for item_id in info}


def _log_record(item: dict, completions) -> dict:
    judgements = [{"text": c.text, "score": parse_score(c.text), "finish_reason": c.finish_reason} for c in completions]
    # The first parsable sample is the demonstration: its text is the training target and its score the reply's.
    demo = next((n for n, j in enumerate(judgements) if j["score"] is not None), None)
    return {**item, "judgements": judgements, "demo": demo,
            "score": judgements[demo]["score"] if demo is not None else None}


# --------------------------------------------------------------------------------------------------------------
# Step 2: agreement with the human ranking


def agreement(ranks: Sequence[int], scores: Sequence[float]) -> tuple[int, int]:
    """(agreeing pairs, ordered pairs): pairs with different human ranks, and those the scores order the same way.

    The better-ranked reply (lower rank) must get a strictly higher score; equal human ranks impose nothing.
    """
    agreeing = ordered = 0
    for a in range(len(ranks)):
        for b in range(a + 1, len(ranks)):
            if ranks[a] == ranks[b]:
                continue
            ordered += 1
            better, worse = (a, b) if ranks[a] < ranks[b] else (b, a)
            agreeing += scores[better] > scores[worse]
    return agreeing, ordered


def _drop_reason(group: dict, logged: list[dict], counts: Counter) -> str | None:
    ranks = [reply["rank"] for reply in group["replies"]]
    if len(set(ranks)) < 2:
        return "no_human_order"
    if any(r.get("skipped") for r in logged):
        return "prompt_too_long"
    if any(r["score"] is None for r in logged):
        return "no_score"
    agreeing, ordered = agreement(ranks, [r["score"] for r in logged])
    counts["pairs_ordered"] += ordered
    counts["pairs_agreeing"] += agreeing
    return None if agreeing == ordered else "disagree"


# --------------------------------------------------------------------------------------------------------------
# Step 3: rebalancing


def score_label(score: float) -> str:
    """A histogram key: "4" for 4.0, "3.5" for 3.5."""
    return str(int(score)) if float(score).is_integer() else str(score)


def rebalance_level(counts: dict[str, int], max_share: float) -> tuple[int | None, float]:
    """(L, effective share): cutting every score value to at most L examples meets the share cap, keeping the most.

    L is None when nothing needs cutting. With c_v the count of value v, the kept total is T(L) = sum min(c_v, L),
    and L is the largest level with min(max c_v, L) <= share * T(L). share * T(L) - L is concave in L and 0 at
    L = 0, so the levels that satisfy it form an interval [0, L*] and a scan down from the top finds L*.
    """
    present = [c for c in counts.values() if c > 0]
    if not present:
        return None, max_share
    # With d values present, each at most share * T, their sum is at most d * share * T: needs d * share >= 1.
    share = max(max_share, 1.0 / len(present))
    top = max(present)
    if top <= share * sum(present) + 1e-9:
        return None, share
    for level in range(top - 1, -1, -1):
        if level <= share * sum(min(c, level) for c in present) + 1e-9:
            return level, share
    return 0, share  # not reached: level 0 always satisfies the inequality


def rebalance(examples: list[dict], max_share: float, seed: int) -> tuple[list[dict], dict]:
    """Drop whole examples of over-common scores (stable random choice); returns (kept in input order, report)."""
    by_label: dict[str, list[dict]] = {}
    for example in examples:
        by_label.setdefault(score_label(example["score"]), []).append(example)
    level, share = rebalance_level({k: len(v) for k, v in by_label.items()}, max_share)
    dropped: set[int] = set()
    capped: list[str] = []
    if level is not None:
        for label, members in by_label.items():
            if len(members) > level:
                capped.append(label)
                ranked = sorted(members, key=lambda e: stable_id(seed, "eft-rebalance", e["group_id"], e["reply_id"]))
                dropped.update(id(e) for e in ranked[level:])
    kept = [e for e in examples if id(e) not in dropped]
    report = {"max_per_score_share": max_share, "effective_max_share": round(share, 6), "cap_per_score": level,
              "capped_scores": sorted(capped, key=float), "dropped_rebalance": len(dropped)}
    return kept, report


# --------------------------------------------------------------------------------------------------------------
# All steps


def _histogram(scores: Iterable[float]) -> dict[str, int]:
    counter = Counter(score_label(s) for s in scores)
    labels = sorted(set(counter) | {str(k) for k in range(6)}, key=float)  # 0..5 always shown, half points if any
    return {label: counter.get(label, 0) for label in labels}


def select_eft(
    groups: Sequence[dict],
    judged: dict[str, dict],
    *,
    seed: int,
    max_per_score_share: float = DEFAULT_MAX_PER_SCORE_SHARE,
) -> tuple[list[dict], dict]:
    """Steps 2-4 on judgements already made (`judge_groups`' output): the EFT records and the counts."""
    if not 0 < max_per_score_share <= 1:
        raise DataError(f"max_per_score_share must be above 0 and at most 1, got {max_per_score_share}")
    counts: Counter = Counter()
    examples: list[dict] = []
    all_scores: list[float] = []
    for group in groups:
        logged = [judged[_item_id(group["group_id"], reply["reply_id"])] for reply in group["replies"]]
        counts["judgements"] += sum(len(r["judgements"]) for r in logged)
        counts["judgements_parsed"] += sum(1 for r in logged for j in r["judgements"] if j["score"] is not None)
        all_scores += [r["score"] for r in logged if r["score"] is not None]
        reason = _drop_reason(group, logged, counts)
        if reason is not None:
            counts[f"groups_dropped_{reason}"] += 1
            counts[f"replies_dropped_{reason}"] += len(logged)
            continue
        counts["groups_kept"] += 1
        for reply, record in zip(group["replies"], logged):
            score = record["score"]
            examples.append({
                "prompt": group["prompt"],
                "response": reply["text"],
                "judgement": record["judgements"][record["demo"]]["text"].strip(),
                "score": int(score) if float(score).is_integer() else score,
                "group_id": group["group_id"],
                "reply_id": reply["reply_id"],
            })

    kept, report = rebalance(examples, max_per_score_share, seed)
    parsed, total = counts["judgements_parsed"], counts["judgements"]
    result = {
        "groups": len(groups),
        "replies": sum(len(g["replies"]) for g in groups),
        "judgements": counts["judgements"],
        "judge_parse_rate": round(parsed / total, 4) if total else None,
        # The teacher's pairwise accuracy against humans on the groups it scored fully: a free judge-quality check.
        "teacher_pair_agreement": round(counts["pairs_agreeing"] / counts["pairs_ordered"], 4)
        if counts["pairs_ordered"] else None,
        **{f"groups_dropped_{reason}": counts[f"groups_dropped_{reason}"] for reason in DROP_REASONS},
        "groups_kept": counts["groups_kept"],
        **{f"replies_dropped_{reason}": counts[f"replies_dropped_{reason}"] for reason in DROP_REASONS},
        "examples_agreeing": len(examples),
        **report,
        "examples": len(kept),
        "score_histogram_judged": _histogram(all_scores),
        "score_histogram_agreeing": _histogram(e["score"] for e in examples),
        "score_histogram": _histogram(e["score"] for e in kept),
    }
    return kept, result


def build_eft(
    groups: Sequence[dict],
    backend,
    judge_cfg: JudgeConfig,
    *,
    seed: int,
    max_per_score_share: float = DEFAULT_MAX_PER_SCORE_SHARE,
    log_path: str | Path | None = None,
    teacher: str = "",
    chunk_groups: int = 16,
) -> tuple[list[dict], dict]:
    """The paper's EFT construction on ranked groups: teacher judgements, agreement filter, rebalancing.

    Returns (records `{prompt, response, judgement, score, group_id, reply_id}`, counts). `log_path` makes the
    judging resumable and keeps every sample text; `teacher` names the model in the log's staleness key.
    """
    judged = judge_groups(groups, backend, judge_cfg, seed=seed, log_path=log_path, teacher=teacher,
                          chunk_groups=chunk_groups)
    return select_eft(groups, judged, seed=seed, max_per_score_share=max_per_score_share)


def run_data_eft(
    source: str | Path,
    out: str | Path,
    backend,
    judge_cfg: JudgeConfig,
    *,
    seed: int,
    teacher: str = "",
    max_per_score_share: float = DEFAULT_MAX_PER_SCORE_SHARE,
    limit: int | None = None,
    chunk_groups: int = 16,
) -> dict:
    """`srlm data eft`: read `source`, build, write `out`, `<stem>.judgements.jsonl` and `<stem>.counts.json`."""
    groups = read_eft_source(source, limit)
    log = log_path_for(out)
    records, counts = build_eft(groups, backend, judge_cfg, seed=seed, max_per_score_share=max_per_score_share,
                                log_path=log, teacher=teacher, chunk_groups=chunk_groups)
    write_jsonl(out, records)
    counts = {"source": str(source), "teacher": teacher, "seed": seed, "judge_num_samples": judge_cfg.num_samples,
              "judgements_log": str(log), **counts}
    write_json(counts_path_for(out), counts)
    return counts


def format_counts(counts: dict) -> str:
    """The small table `srlm data eft` prints: groups by outcome, then the three score histograms side by side."""
    rows = [("groups", counts["groups"]), ("replies", counts["replies"]),
            ("judge parse rate", counts["judge_parse_rate"]),
            ("teacher pair agreement", counts["teacher_pair_agreement"])]
    rows += [(f"groups dropped: {reason}", counts[f"groups_dropped_{reason}"]) for reason in DROP_REASONS]
    cap = counts["cap_per_score"]
    cap_text = "none needed" if cap is None else f"{cap} per score (share {counts['effective_max_share']})"
    rows += [("groups kept", counts["groups_kept"]), ("examples agreeing", counts["examples_agreeing"]),
             ("rebalancing cap", cap_text), ("dropped by rebalancing", counts["dropped_rebalance"]),
             ("examples written", counts["examples"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {value}" for name, value in rows]
    lines.append(f"  {'score':>5}  {'judged':>7}  {'agreeing':>8}  {'kept':>6}")
    histograms = [counts[f"score_histogram{suffix}"] for suffix in ("_judged", "_agreeing", "")]
    for label in sorted(set().union(*histograms), key=float):
        judged, agreeing, kept = (h.get(label, 0) for h in histograms)
        lines.append(f"  {label:>5}  {judged:>7}  {agreeing:>8}  {kept:>6}")
    return "\n".join(lines)
