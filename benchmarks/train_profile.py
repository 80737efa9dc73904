"""Where a LoRA training step of the embedded model spends its time: torch profiler, CPU self-time by op group.

    python benchmarks/train_profile.py sft|dpo

Six steps of TRL's SFTTrainer (6 rows of builtin:eft, completion-only loss) or DPOTrainer (6 builtin:ift answers
against their first halves, reference log-probs precomputed) with LoRA r16 on all linear layers, micro-batch 1, as
the quickstart trains. The rows are short (about 130 tokens), so this is a demonstration of where time goes, not a
rate: see dpo.py for DPO's rate against its FLOP bound.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import time

from datasets import Dataset
from peft import LoraConfig
from torch.profiler import ProfilerActivity, profile
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from srlm.io import iter_jsonl
from srlm.models import load_model, resolve_model_path
from srlm.seed import resolve_data_path

which = sys.argv[1]
path = resolve_model_path("embedded")
lm = load_model(path)
lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
tmp = tempfile.mkdtemp()
common = dict(output_dir=tmp, use_cpu=True, bf16=False, report_to=[], save_strategy="no", learning_rate=1e-4,
              per_device_train_batch_size=1, gradient_accumulation_steps=1, max_steps=6, logging_steps=100)
if which == "sft":
    rows = [r for _, r in zip(range(6), iter_jsonl(resolve_data_path("builtin:eft")))]
    data = [{"prompt": [{"role": "user", "content": r["prompt"]}], "completion": [{"role": "assistant", "content": r["response"]}]} for r in rows]
    trainer = SFTTrainer(model=lm.model, args=SFTConfig(**common, completion_only_loss=True, max_length=768),
                         train_dataset=Dataset.from_list(data), processing_class=lm.tokenizer, peft_config=lora)
else:
    rows = [r for _, r in zip(range(6), iter_jsonl(resolve_data_path("builtin:ift")))]
    data = [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": [{"role": "assistant", "content": r["response"]}],
             "rejected": [{"role": "assistant", "content": r["response"][: len(r["response"]) // 2]}]} for r in rows]
    trainer = DPOTrainer(model=lm.model, args=DPOConfig(**common, max_length=384, precompute_ref_log_probs=True),
                         train_dataset=Dataset.from_list(data), processing_class=lm.tokenizer, peft_config=lora)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    t = time.perf_counter(); trainer.train(); dt = time.perf_counter() - t
events = prof.key_averages()
total = sum(e.self_cpu_time_total for e in events)
groups = collections.Counter()
for e in events:
    n = e.key
    g = ("matmul" if n in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear") else
         "attention" if "scaled_dot_product" in n or "flash" in n else
         "optimizer" if "adam" in n.lower() or "_foreach" in n else n)
    groups[g] += e.self_cpu_time_total
print(f"{which}: {dt:.1f} s for 6 steps (DPO: with the reference pass before them)")
for g, v in groups.most_common(25):
    print(f"  {100 * v / total:5.1f}%  {g}")
