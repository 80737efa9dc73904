"""Stage `respond`: N candidate responses per prompt from the current model M_t (paper section 4.2).

    srlm respond --prompts prompts.jsonl --out responses.jsonl --model DIR [key=value ...]

Defaults follow the paper: N = 4, temperature 0.7, top-p 0.9. Prompts are processed in chunks; each finished chunk
is appended to `responses.jsonl.partial`, so a killed run resumes after the last finished chunk and produces no
response twice. Prompts whose chat-formatted length exceeds `respond.max_prompt_tokens` are skipped, counted
(`skipped_prompt_too_long`) and named in a warning on stderr. Empty answers are written as the model gave them and
counted (`empty_responses`); `srlm judge` leaves them unjudged and `srlm pairs` never pairs them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from srlm.backends import GenerationRequest, Sampling
from srlm.config import RespondConfig
from srlm.errors import DataError
from srlm.io import ResumableJsonlWriter, stable_id, stable_seed
from srlm.io import load_prompts
from srlm.progress import chunks, progress


def run_respond(
    prompts_path: Path, out_path: Path, backend, cfg: RespondConfig, *, seed: int, chunk_prompts: int = 16
) -> dict:
    prompts, counts = load_prompts(prompts_path)
    sampling = Sampling(n=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    requests = [
        GenerationRequest(p["prompt_id"], sampling, stable_seed(seed, "respond", p["prompt_id"]),
                          messages=[{"role": "user", "content": p["prompt"]}])
        for p in prompts
    ]
    fits = [r for r in requests if backend.count_prompt_tokens(r) <= cfg.max_prompt_tokens]
    counts["skipped_prompt_too_long"] = len(requests) - len(fits)
    if not fits:  # refused before anything is written: an empty responses file would stop the judge for good
        raise DataError(f"{prompts_path}: all {len(requests)} prompts are longer than respond.max_prompt_tokens="
                        f"{cfg.max_prompt_tokens} tokens; nothing to answer (raise respond.max_prompt_tokens)")
    if len(fits) < len(requests):
        print(f"srlm: warning: {len(requests) - len(fits)} of {len(requests)} prompts of {prompts_path} skipped: "
              f"longer than respond.max_prompt_tokens={cfg.max_prompt_tokens} tokens", file=sys.stderr, flush=True)
    text_of = {p["prompt_id"]: p["prompt"] for p in prompts}
    order = {p["prompt_id"]: i for i, p in enumerate(prompts)}

    writer = ResumableJsonlWriter(out_path, id_field="response_id")
    done_prompts = {r["prompt_id"] for r in writer.records}
    todo = [r for r in fits if r.request_id not in done_prompts]
    with progress(len(fits), "respond", initial=len(fits) - len(todo)) as bar:
        for chunk in chunks(todo, chunk_prompts):
            completions = backend.generate(list(chunk), on_done=bar.update)
            writer.append(
                {
                    "prompt_id": request.request_id,
                    "response_id": stable_id("response", request.request_id, k),
                    "sample_index": k,
                    "prompt": text_of[request.request_id],
                    "response": completion.text,
                    "num_tokens": completion.num_tokens,
                    "finish_reason": completion.finish_reason,
                }
                for request, outs in zip(chunk, completions)
                for k, completion in enumerate(outs)
            )
    records = writer.finish(order_key=lambda r: (order[r["prompt_id"]], r["sample_index"]))
    empty = sum(1 for r in records if not r["response"].strip())
    if empty:
        print(f"srlm: warning: {empty} of {len(records)} responses are empty", file=sys.stderr, flush=True)
    return {
        **counts,
        "prompts": len(fits),
        "responses": len(records),
        "empty_responses": empty,
        "cut_at_max_new_tokens": sum(1 for r in records if r["finish_reason"] == "length"),
        "response_tokens_mean": round(sum(r["num_tokens"] for r in records) / max(1, len(records)), 1),
    }
