"""int8 weights for the `hf` backend on CPU (`backend.int8_weights`; not in the paper, off by default).

On CPU decoding is bound by the linear layers' fp32 matmuls (two thirds of a decode step here). PyTorch's dynamic
quantization stores each linear layer's weights as int8, one scale per output channel, and quantizes the
activations row by row on the fly, so the matmul runs on the CPU's int8 units (VNNI): measured here 5-7x faster
per layer and 1.56x faster generation overall (benchmarks/int8.py). The input embedding and the output head
stay fp32, so the next-token probabilities the expected-score judge reads come from an fp32 projection.

Outputs are no longer those of the fp32 model: greedy texts diverge after a few words, as with any change of
arithmetic, and a small fine-tuned judge loses its format (the quickstart's M1 wrote a parsable score in 61% of its
judgements instead of 94%): benchmarks/README.md, "int8 weights".
Training never uses it: SFT and DPO train the fp32 model, and each saved model stays fp32.

`torch.ao.quantization` is the quantization that ships with torch 2.13 (the pinned build); PyTorch marks it for
replacement by the separate torchao package, so its deprecation warnings are silenced here and nowhere else.
"""

from __future__ import annotations

import warnings

from srlm.errors import SrlmError


def quantize_linear_layers(model) -> int:
    """Replace every `nn.Linear` of `model` except its output head with an int8 dynamic-quantized one, in place;
    returns how many were replaced."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    device = next(model.parameters()).device
    if device.type != "cpu":
        raise SrlmError(f"backend.int8_weights quantizes for the CPU's int8 matmuls: the model is on {device}; "
                        "leave backend.int8_weights=false there")
    head = model.get_output_embeddings()
    names = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module is not head}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(deprecat|torchao).*", category=Warning)
        quantize_dynamic(model, names, dtype=torch.qint8, inplace=True)
    return len(names)
