"""Decontamination of candidate prompts one at a time, as the prompts stage checks them: one
`DecontaminationIndex` built once and asked `match(text)` per candidate, vs the way before it, one
`decontaminate([candidate], eval_prompts)` call per candidate, which builds every table again each time.

    python benchmarks/decontaminate.py [--candidates N] [--baseline-candidates 100] [--json]

Evaluation prompts: AlpacaEval's 805 + MT-Bench's 80. Candidates: OpenAssistant's 250 prompt-lottery prompts and
Self-Instruct's 175 seed tasks (real prompts, mostly not evaluation prompts), from ../shared/data. Both sides give
the same verdicts (checked here too); compared by milliseconds per candidate.
"""

from __future__ import annotations

import argparse
import importlib
import random
from pathlib import Path

from common import Timer, report

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--candidates", type=int, default=None,
                        help="candidates checked through the index (default: all 448, repeated when more)")
    parser.add_argument("--baseline-candidates", type=int, default=100,
                        help="run the slow per-call way on only this many candidates (its ms/candidate is compared)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from srlm.data.decontaminate import DecontaminationIndex, decontaminate
    from srlm.data.formats import load_records

    eval_prompts = [r["prompt"] for r in load_records(args.data / "alpaca_eval" / "text_davinci_003_outputs.json",
                                                      kind="prompts")]
    eval_prompts += [r["prompt"] for r in load_records(args.data / "mt_bench" / "question.jsonl", kind="prompts")]
    pool = [r["prompt"] for r in load_records(args.data / "oasst" / "prompt_lottery_en_250_text.jsonl", kind="prompts")]
    pool += [r["prompt"] for r in load_records(args.data / "self_instruct" / "seed_tasks.jsonl", kind="prompts")]
    # Evaluation prompts with a word added, so that the ROUGE-L step does real work on both sides.
    pool += [text + " Thanks." for text in eval_prompts[::40]]
    random.Random(0).shuffle(pool)  # spread them, so that --baseline-candidates takes its share of them too
    candidates = [pool[i % len(pool)] for i in range(args.candidates or len(pool))]
    baseline = candidates[: args.baseline_candidates]

    importlib.import_module("rouge_score.rouge_scorer")  # its import, about 4 s with nltk, stays out of both timings

    with Timer() as build:
        index = DecontaminationIndex(eval_prompts)
    with Timer() as fast:
        verdicts = [index.match(text) for text in candidates]
    with Timer() as slow:
        old_verdicts = [decontaminate([{"prompt": text}], eval_prompts)[1]["removed"] for text in baseline]
    for found, removed in zip(verdicts, old_verdicts):
        expected = {k: v for k, v in removed[0].items() if k not in ("index", "prompt")} if removed else None
        assert (found.report_fields() if found else None) == expected, "the two ways disagree"

    fast_ms = 1000 * fast.seconds / len(candidates)
    slow_ms = 1000 * slow.seconds / len(baseline)
    stage_ms = 1000 * (build.seconds + fast.seconds) / len(candidates)
    result = {
        "benchmark": "decontaminate",
        "eval_prompts": len(eval_prompts),
        "candidates": len(candidates),
        "baseline_candidates": len(baseline),
        "matched": sum(v is not None for v in verdicts),
        "index_build_s": round(build.seconds, 4),
        "index_ms_per_candidate": round(fast_ms, 4),
        "index_ms_per_candidate_with_build": round(stage_ms, 4),
        "per_call_ms_per_candidate": round(slow_ms, 3),
        "ratio": round(slow_ms / fast_ms, 1),
        "ratio_with_build": round(slow_ms / stage_ms, 1),
    }
    report(
        f"decontamination: {len(eval_prompts)} evaluation prompts, candidates checked one at a time",
        [
            ("index: build once (s)", build.seconds, "s"),
            ("index: match() per candidate", fast_ms, "ms"),
            (f"index: per candidate incl. build ({len(candidates)})", stage_ms, "ms"),
            ("per-call decontaminate() per candidate", slow_ms, "ms"),
            ("ratio (per call / index match)", slow_ms / fast_ms, "x"),
            ("ratio incl. build", slow_ms / stage_ms, "x"),
        ],
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
