"""Generation: srlm's `hf` backend vs a per-prompt `model.generate` loop, same prompts, samples and lengths.

    python benchmarks/generation.py [--prompts 64] [--samples 4] [--max-new-tokens 128] [--json]

Both sides sample at T 0.7, top-p 0.9 on the embedded SmolLM2-135M-Instruct and are compared by generated tokens
per second (the two produce different texts of different lengths, so wall time alone would not be fair). A third
run is the `hf` backend with its shared cache (the chat header, each prompt for its samples) copied to every row
(`share_prefix=False`): the ratio is what keeping it once gains, and the texts must be the same.

The bound, measured in the same run (benchmarks/bound.py): every linear layer of the model timed at the decode
batch the backend starts with (prompts x samples, at most 256 rows) and at half of it (sequences finish and the
batch shrinks), as tokens per second; the backend's rate is printed as a fraction of it. Attention's matmuls are
not in the bound; their share at the mean context is printed beside it.
"""

from __future__ import annotations

import argparse

from bound import attention_gflop_per_token, describe, linear_gflop_per_token
from common import Timer, prompts, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--baseline-prompts", type=int, default=None,
                        help="run the slow baseline on only this many prompts (its tokens/s is what is compared)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from srlm.backends import GenerationRequest, Sampling, make_backend
    from srlm.models import load_model

    lm = load_model("embedded")
    texts = prompts(args.prompts)
    sampling = Sampling(n=args.samples, temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens)
    requests = [GenerationRequest(f"p{i}", sampling, i, messages=[{"role": "user", "content": t}])
                for i, t in enumerate(texts)]

    backend = make_backend("hf", lm, max_batch_tokens=65536, max_batch_size=256)
    with Timer() as fast:
        outputs = backend.generate(requests)
    fast_tokens = sum(c.num_tokens for outs in outputs for c in outs)
    # The same path with the shared cache copied to every row (how the backend decoded before it kept shared parts
    # once): the ratio is what keeping them once gains; the texts must be the same.
    copying = make_backend("hf", lm, max_batch_tokens=65536, max_batch_size=256, share_prefix=False)
    with Timer() as copied:
        copied_outputs = copying.generate(requests)
    same_texts = [c.text for o in copied_outputs for c in o] == [c.text for o in outputs for c in o]

    baseline_texts = texts[: args.baseline_prompts or args.prompts]
    base_tokens = 0
    tok = lm.tokenizer
    with Timer() as slow, torch.inference_mode():
        for text in baseline_texts:
            inputs = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)
            out = lm.model.generate(**inputs, do_sample=True, temperature=0.7, top_p=0.9, top_k=0,
                                    max_new_tokens=args.max_new_tokens, num_return_sequences=args.samples,
                                    pad_token_id=tok.pad_token_id)
            new = out[:, inputs["input_ids"].shape[1]:]
            base_tokens += int((new != tok.pad_token_id).sum())

    fast_tps, slow_tps = fast_tokens / fast.seconds, base_tokens / slow.seconds
    batch = min(args.prompts * args.samples, 256)
    bound, bound_half = describe(lm.model, batch), describe(lm.model, max(1, batch // 2))
    context = backend.stats.extra.get("prefill_tokens", 0) / max(1, args.prompts) + args.max_new_tokens / 2
    attention_share = attention_gflop_per_token(lm.model.config, int(context)) / linear_gflop_per_token(lm.model)
    result = {"benchmark": "generation", "prompts": args.prompts, "samples": args.samples,
              "max_new_tokens": args.max_new_tokens, "hf_backend_tokens_per_s": round(fast_tps, 2),
              "per_prompt_generate_tokens_per_s": round(slow_tps, 2), "speedup": round(fast_tps / slow_tps, 2),
              "hf_backend_seconds": round(fast.seconds, 1), "shared_kept_once_vs_copied": round(copied.seconds / fast.seconds, 3),
              "same_texts_as_copied": same_texts, "baseline_seconds": round(slow.seconds, 1),
              "baseline_prompts": len(baseline_texts), "bound": bound, "bound_half_batch": bound_half,
              "fraction_of_bound": round(fast_tps / bound["bound_tokens_per_s"], 3),
              "fraction_of_half_batch_bound": round(fast_tps / bound_half["bound_tokens_per_s"], 3),
              "attention_flops_vs_linear": round(attention_share, 3)}
    report("generation: hf backend vs per-prompt model.generate", [
        ("hf backend tokens/s", fast_tps, f"({fast_tokens} tokens in {fast.seconds:.1f} s)"),
        ("per-prompt generate tokens/s", slow_tps, f"({base_tokens} tokens in {slow.seconds:.1f} s)"),
        ("speedup", fast_tps / slow_tps, "x"),
        ("shared cache kept once vs copied to every row", copied.seconds / fast.seconds,
         f"x ({copied.seconds:.1f} s copied; same texts: {same_texts})"),
        (f"bound: linear layers at batch {batch}, tokens/s", bound["bound_tokens_per_s"],
         f"({bound['linear_gflops_at_these_shapes']} GFLOP/s at these shapes; square matmul "
         f"{bound['square_matmul_gflops']} GFLOP/s)"),
        ("hf backend as a fraction of that bound", fast_tps / bound["bound_tokens_per_s"],
         f"(of the batch-{batch // 2} bound: {fast_tps / bound_half['bound_tokens_per_s']:.2f})"),
        ("attention FLOPs / linear FLOPs (not in the bound)", attention_share, f"(mean context {context:.0f})"),
    ], result, args.json)


if __name__ == "__main__":
    main()
