"""Judging: srlm's judge path (one request per response, K samples sharing the rubric and prompt prefill) vs the
naive way (each of the K samples a separate full `model.generate` call), on the same responses.

    python benchmarks/judge.py [--responses 32] [--samples 3] [--max-new-tokens 80] [--json]

Compared by judgements per second. Both sides sample at T 0.7, top-p 0.9 with the built-in additive judge prompt.
A third run is srlm's judge path with the rubric's keys and values copied to every row (`share_prefix=False`, how
the backend decoded before it kept the batch's common prefix once): the ratio is what keeping it once gains, and
the two must write the same judgements.

The bound, measured in the same run (benchmarks/bound.py): the time the judge's tokens would take in the model's
linear layers alone, prefilled tokens timed at a 512-row prefill chunk and generated tokens at the decode batch
(responses x samples, at most 256 rows); srlm's judging time is printed as a fraction of it (the bound's seconds
over the measured seconds).
"""

from __future__ import annotations

import argparse

from bound import describe
from common import Timer, prompts, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=32)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--baseline-responses", type=int, default=None,
                        help="run the slow baseline on only this many responses (its judgements/s is compared)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from srlm.backends import GenerationRequest, Sampling, make_backend
    from srlm.judge import builtin_template, parse_score, render
    from srlm.models import load_model

    lm = load_model("embedded")
    backend = make_backend("hf", lm, max_batch_tokens=65536, max_batch_size=256)
    # Responses to judge: the model's own greedy answers to the benchmark prompts.
    questions = prompts(args.responses)
    answer_sampling = Sampling(n=1, temperature=0.0, max_new_tokens=96)
    answers = [o[0].text for o in backend.generate(
        [GenerationRequest(f"a{i}", answer_sampling, i, messages=[{"role": "user", "content": q}])
         for i, q in enumerate(questions)])]
    answers_prefill = backend.stats.extra["prefill_tokens"]
    judge_prompts = [render(builtin_template(), q, a) for q, a in zip(questions, answers)]

    sampling = Sampling(n=args.samples, temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens)
    requests = [GenerationRequest(f"j{i}", sampling, i, messages=[{"role": "user", "content": p}])
                for i, p in enumerate(judge_prompts)]
    with Timer() as fast:
        outputs = backend.generate(requests)
    fast_judgements = sum(len(o) for o in outputs)
    fast_parsed = sum(parse_score(c.text) is not None for o in outputs for c in o)
    copying = make_backend("hf", lm, max_batch_tokens=65536, max_batch_size=256, share_prefix=False)
    with Timer() as copied:
        copied_outputs = copying.generate(requests)
    same_texts = [c.text for o in copied_outputs for c in o] == [c.text for o in outputs for c in o]

    tok = lm.tokenizer
    baseline_prompts = judge_prompts[: args.baseline_responses or args.responses]
    slow_judgements = slow_parsed = 0
    with Timer() as slow, torch.inference_mode():
        for prompt in baseline_prompts:
            inputs = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)
            for _ in range(args.samples):
                out = lm.model.generate(**inputs, do_sample=True, temperature=0.7, top_p=0.9, top_k=0,
                                        max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id)
                text = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
                slow_judgements += 1
                slow_parsed += parse_score(text) is not None

    fast_rate, slow_rate = fast_judgements / fast.seconds, slow_judgements / slow.seconds
    prefill_tokens = backend.stats.extra["prefill_tokens"]  # counted over the answers' generation too: subtract it
    generated = sum(c.num_tokens for o in outputs for c in o)
    prefill_bound, decode_bound = describe(lm.model, 512), describe(lm.model, min(args.responses * args.samples, 256))
    judge_prefill = prefill_tokens - answers_prefill
    bound_seconds = (judge_prefill * prefill_bound["linear_seconds_per_row"]
                     + generated * decode_bound["linear_seconds_per_row"])
    result = {"benchmark": "judge", "responses": args.responses, "samples": args.samples,
              "judgements_per_s": round(fast_rate, 3), "naive_judgements_per_s": round(slow_rate, 3),
              "speedup": round(fast_rate / slow_rate, 2),
              "prefix_kept_once_vs_copied": round(copied.seconds / fast.seconds, 3), "same_texts_as_copied": same_texts,
              "prefill_tokens": backend.stats.extra["prefill_tokens"],
              "parse_rate": round(fast_parsed / fast_judgements, 3),
              "naive_parse_rate": round(slow_parsed / max(1, slow_judgements), 3),
              "judge_prefill_tokens": judge_prefill, "generated_tokens": generated, "bound_seconds": round(bound_seconds, 2),
              "fraction_of_bound": round(bound_seconds / fast.seconds, 3), "bound_prefill": prefill_bound,
              "bound_decode": decode_bound}
    report("judge: shared-prefix K-sample judging vs K separate generate calls", [
        ("srlm judgements/s", fast_rate, f"({fast_judgements} in {fast.seconds:.1f} s)"),
        ("naive judgements/s", slow_rate, f"({slow_judgements} in {slow.seconds:.1f} s)"),
        ("speedup", fast_rate / slow_rate, "x"),
        ("rubric kept once vs copied to every row", copied.seconds / fast.seconds,
         f"x ({copied.seconds:.1f} s copied; same judgements: {same_texts})"),
        ("bound: linear layers alone, seconds", bound_seconds,
         f"({judge_prefill} prefilled and {generated} generated tokens; "
         f"{prefill_bound['linear_gflops_at_these_shapes']} / {decode_bound['linear_gflops_at_these_shapes']} GFLOP/s)"),
        ("srlm judging as a fraction of that bound", bound_seconds / fast.seconds, ""),
    ], result, args.json)


if __name__ == "__main__":
    main()
