"""Builds the shipped third-party data sets from ../shared/data: the HH-RLHF judge sets (builtin:hh_eft,
builtin:hh_val, builtin:hh_test) and the OpenAssistant held-out prompts (builtin:oasst_prompts).

    .venv/bin/python scripts/build_builtin_data.py [--shared ../shared/data]

OpenAssistant prompts: the 250 real user prompts of `oasst/prompt_lottery_en_250_text.jsonl` (Apache-2.0, see
src/srlm/seed/OASST_LICENSE), as {"prompt"} lines in file order, never trained on by any recipe: the held-out
prompts for win rates.

Source: Anthropic's HH-RLHF test files, helpful subsets only (helpful-base, helpful-rejection-sampled,
helpful-online; MIT licence, see src/srlm/seed/HH_RLHF_LICENSE). harmless-base is left out on purpose: its
`chosen` reply is the less harmful one, often a refusal, which the additive helpfulness rubric is not asked to
prefer. Kept: single-turn pairs (one user message, then the two final replies), the question at most 400 and each
reply at most 700 characters (bounds the judge prompt, so judging 400 pairs fits a CPU run), the two replies not
identical. Every pair is assigned to a split by the sha256 of its question, so one question never lands in two
splits: 400 questions go to `hh_test` (the figures srlm reports), 300 to `hh_val` (for choosing settings), the rest
to `hh_eft` (the only split any judge may be trained on). Output: {"prompt", "chosen", "rejected", "source"} lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from srlm.evaluation.human_data import read_preference_pairs

FILES = ("helpful-base", "helpful-rejection-sampled", "helpful-online")
MAX_PROMPT_CHARS, MAX_REPLY_CHARS = 400, 700
SPLITS = (("hh_test", 400), ("hh_val", 300))  # the rest is hh_eft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src" / "srlm" / "seed"))
    args = parser.parse_args()
    by_prompt: dict[str, list[dict]] = {}
    for name in FILES:
        groups, _ = read_preference_pairs(Path(args.shared) / "hh_rlhf" / f"{name}-test.jsonl.gz")
        for g in groups:
            if len(g.context) != 1:
                continue
            prompt = g.context[0]["content"]
            chosen, rejected = (r["text"] for r in sorted(g.replies, key=lambda r: r["rank"]))
            if len(prompt) > MAX_PROMPT_CHARS or max(len(chosen), len(rejected)) > MAX_REPLY_CHARS:
                continue
            line = g.source.rsplit(":", 1)[-1]
            by_prompt.setdefault(prompt, []).append(
                {"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": f"hh-rlhf/{name}-test:{line}"})
    order = sorted(by_prompt, key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    start = 0
    counts = {}
    for split, size in (*SPLITS, ("hh_eft", None)):
        chosen_prompts, n_pairs = [], 0
        while start < len(order) and (size is None or n_pairs < size):
            chosen_prompts.append(order[start])
            n_pairs += len(by_prompt[order[start]])
            start += 1
        records = [r for p in chosen_prompts for r in by_prompt[p]]
        path = Path(args.out) / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        longer = sum(len(r["chosen"]) > len(r["rejected"]) for r in records) / len(records)
        counts[split] = {"pairs": len(records), "questions": len(chosen_prompts), "chosen_longer": round(longer, 3)}
    lottery = Path(args.shared) / "oasst" / "prompt_lottery_en_250_text.jsonl"
    prompts = [json.loads(line) for line in lottery.read_text(encoding="utf-8").splitlines() if line.strip()]
    (Path(args.out) / "oasst_prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p.strip()}, ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")
    counts["oasst_prompts"] = {"prompts": len(prompts)}
    print(json.dumps(counts, indent=1))


if __name__ == "__main__":
    main()
