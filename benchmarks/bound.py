"""The speed bound a CPU benchmark is held to, measured in the same process and run as the figure it bounds.

A machine's matmul rate drifts by 20-30% from day to day, so a bound quoted from another day proves nothing. Here:

- `square_matmul_gflops`: a large square fp32 matmul (2048^3), the ceiling of this machine today;
- `linear_seconds_per_row(model, rows)`: one pass through every linear layer of the model (attention projections,
  MLP, and the output projection over the vocabulary) for `rows` token rows at once, timed layer by layer at the
  real shapes with `torch.nn.functional.linear`. At rows = the decode batch it is the matmul time of one decode step
  per sequence; at rows = a prefill chunk it is the time of prefilling one token. Dividing it into a stage's
  tokens gives the time that stage could not beat on this machine by making its matmuls faster;
- `attention_gflop_per_token`: what the linear layers leave out, counted and not timed: per layer and token,
  QK^T and softmax(.)V each cost 2 x context x hidden multiply-adds, so 4 x context x hidden FLOPs x layers. The bound
  leaves it out, which makes the bound optimistic (a fraction of it is conservative) by the ratio printed beside it.
"""

from __future__ import annotations

import os
import platform
import time


def cpu_facts() -> dict:
    """The CPU model, the vector extensions that decide fp32/bf16 speed, and torch's threads."""
    import torch

    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {"cpu": model, "cpu_flags": [f for f in wanted if f in flags], "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def _time(fn, seconds: float) -> float:
    """Seconds per call of `fn`, after a warm-up, averaged over at least `seconds` of calls."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            return elapsed / calls


def square_matmul_gflops(n: int = 2048, seconds: float = 2.0) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.inference_mode():
        per_call = _time(lambda: torch.mm(a, b), seconds)
    return 2 * n**3 / per_call / 1e9


def linear_shapes(model) -> list[tuple[int, int]]:
    """(in, out) of every linear layer a token passes through, the output projection included."""
    import torch

    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return shapes


def linear_gflop_per_token(model) -> float:
    return sum(2 * i * o for i, o in linear_shapes(model)) / 1e9


def linear_seconds_per_row(model, rows: int, seconds: float = 1.0) -> float:
    """Seconds per token row of one pass through every linear layer, with `rows` rows at once, in fp32."""
    import torch

    counts: dict[tuple[int, int], int] = {}
    for shape in linear_shapes(model):
        counts[shape] = counts.get(shape, 0) + 1
    total = 0.0
    with torch.inference_mode():
        for (i, o), count in counts.items():
            x, w = torch.randn(rows, i), torch.randn(o, i)
            total += count * _time(lambda: torch.nn.functional.linear(x, w), seconds / len(counts))
    return total / rows


def attention_gflop_per_token(config, context: int) -> float:
    """FLOPs of attention's two matmuls for one token attending to `context` tokens, all layers (see above)."""
    hidden = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    return 4 * context * hidden * config.num_hidden_layers / 1e9


def describe(model, rows: int) -> dict:
    """The same-run bound figures for a model at `rows` rows: what every benchmark prints beside its own figure."""
    per_row = linear_seconds_per_row(model, rows)
    flop = linear_gflop_per_token(model)
    return {"rows": rows, "linear_gflop_per_token": round(flop, 4), "linear_seconds_per_row": per_row,
            "linear_gflops_at_these_shapes": round(flop / per_row, 1), "bound_tokens_per_s": round(1 / per_row, 1),
            "square_matmul_gflops": round(square_matmul_gflops(), 1), **cpu_facts()}
