"""The hf backend's key/value cache: buffers sized once, and on CPU a prefix stored once for the whole batch.

Two costs of the stock transformers cache showed up in the decode profile on a 2-core CPU:

- `DynamicCache` grows by `torch.cat` at every step, copying every layer's whole cache each time (a fifth of the
  judging time). `preallocated_cache` allocates the whole generation's positions once and writes in place.
- Decoding one token reads every row's whole cache in attention, and that read is bound by memory bandwidth, not
  arithmetic: with the cache copied to every row, SDPA took a fifth of generation and more of judging, where the
  ~300-token judge rubric is the same in every row. With `share_prefix`, the prefix common to the batch (chat
  header, rubric) is kept once, unrepeated, and each decode step attends to it with one matmul over all rows'
  queries (compute-bound: 4-6x faster than reading 100 copies), then to each row's own positions as before; the two
  softmax parts are joined exactly by their running maxima and sums. Prefill (several query positions) attends to
  the prefix expanded to every row, through SDPA as before: it runs once per batch.

The shared-prefix attention is registered with transformers as its own attention implementation (`SHARED_PREFIX`)
and switched on only while `attending_to_shared_prefix` is active, so a model outside generation (training, a plain
forward) is untouched. Where a transformers version builds caches differently, `preallocated_cache` returns the
stock cache and the backend repeats the prefix to every row, as before.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

SHARED_PREFIX = "srlm_shared_prefix"
_active = threading.local()  # .cache: the cache whose prefixes the attention function reads


def preallocated_cache(capacity: int, share_prefix: bool = False):
    """A transformers cache whose layers write into buffers of `capacity` positions, allocated once.

    With `share_prefix`, `freeze_prefix(cache)` after prefilling a one-row prefix keeps that prefix once for the
    whole batch instead of copying it to every row (see the module docstring).
    """
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        prefix_keys = prefix_values = None  # [1, kv heads, prefix, dim], read by shared_prefix_attention
        prefix_length = 0

        def lazy_initialization(self, key_states, value_states):
            batch, heads, _, dim = key_states.shape
            rows = capacity - self.prefix_length
            self.key_buffer = key_states.new_empty((batch, heads, rows, dim))
            self.value_buffer = value_states.new_empty((batch, heads, rows, value_states.shape[-1]))
            self.length = 0
            self.device = key_states.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if end > self.key_buffer.shape[-2]:
                raise RuntimeError(f"KV cache capacity {capacity} exceeded ({self.prefix_length + end} positions)")
            self.key_buffer[:, :, self.length:end] = key_states
            self.value_buffer[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

        def freeze_prefix(self) -> None:
            """What this layer holds (one row) becomes the shared prefix; the rows' own positions start empty."""
            self.prefix_keys = self.key_buffer[:, :, : self.length].clone()
            self.prefix_values = self.value_buffer[:, :, : self.length].clone()
            self.prefix_length = self.length
            self.key_buffer = self.value_buffer = self.keys = self.values = None
            self.length = 0
            self.is_initialized = False

        def get_seq_length(self) -> int:
            return self.prefix_length + (self.length if self.is_initialized else 0)

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized:
                self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
                self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
                self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self.key_buffer = self.key_buffer[indices]
                self.value_buffer = self.value_buffer[indices]
                self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]

    cache = DynamicCache()
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer and not cache.layers:
        cache.layer_class_to_replicate = PreallocatedLayer
        cache.srlm_share_prefix = share_prefix
    return cache


def can_share_prefix(cache) -> bool:
    return bool(getattr(cache, "srlm_share_prefix", False))


def freeze_prefix(cache) -> None:
    for layer in cache.layers:
        layer.freeze_prefix()


def shared_prefix_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                            **kwargs):
    """transformers' attention-function interface: SDPA over [shared prefix | the row's own keys].

    `query` is [rows, heads, q, dim]; `key`/`value` hold only each row's own positions (the cache layer keeps the
    prefix apart) and `attention_mask` covers prefix and own positions, [rows, 1, q, prefix + own] (or None).
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cache = getattr(_active, "cache", None)
    layer = cache.layers[module.layer_idx] if cache is not None else None
    prefix_keys = getattr(layer, "prefix_keys", None)
    if prefix_keys is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    prefix_values = layer.prefix_values
    rows, heads, q_len, dim = query.shape
    if q_len > 1:
        # Prefill: the prefix expanded to every row, once per batch, through SDPA with the full mask.
        key = torch.cat([prefix_keys.expand(rows, -1, -1, -1), key], dim=2)
        value = torch.cat([prefix_values.expand(rows, -1, -1, -1), value], dim=2)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)

    kv_heads, prefix = prefix_keys.shape[1], prefix_keys.shape[2]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    # Scores against the prefix: every row's queries of a key/value head in one matmul, [kv heads, rows*group, P].
    grouped = query.reshape(rows, kv_heads, group, dim)
    shared_q = grouped.permute(1, 0, 2, 3).reshape(kv_heads, rows * group, dim)
    prefix_scores = torch.bmm(shared_q, prefix_keys[0].transpose(1, 2)).mul_(scale)
    # Scores against each row's own positions, [rows, kv heads, group, own]; masked where the row has padding.
    own_scores = torch.matmul(grouped, key.transpose(2, 3)).mul_(scale)
    if attention_mask is not None:  # None: transformers found nothing to hide
        own_mask = attention_mask[:, :, :, prefix:]  # [rows, 1, 1, own]
        if own_mask.dtype == torch.bool:
            own_scores = own_scores.masked_fill(~own_mask, float("-inf"))
        else:
            own_scores = own_scores + own_mask
    # One softmax over both parts: shift by the joint maximum, sum both parts' exponentials.
    prefix_scores = prefix_scores.view(kv_heads, rows, group, prefix).transpose(0, 1)  # [rows, kv heads, group, P]
    top = torch.maximum(prefix_scores.amax(dim=-1, keepdim=True), own_scores.amax(dim=-1, keepdim=True))
    prefix_weights = (prefix_scores - top).exp_()
    own_weights = (own_scores - top).exp_()
    total = prefix_weights.sum(dim=-1, keepdim=True) + own_weights.sum(dim=-1, keepdim=True)
    shared_out = torch.bmm(prefix_weights.transpose(0, 1).reshape(kv_heads, rows * group, prefix), prefix_values[0])
    out = shared_out.view(kv_heads, rows, group, dim).transpose(0, 1) + torch.matmul(own_weights, value)
    out = out.div_(total)  # [rows, kv heads, group, dim]
    return out.reshape(rows, 1, heads, dim), None  # transformers expects [rows, q, heads, dim]


@contextmanager
def attending_to_shared_prefix(model, cache):
    """While active, `model`'s attention reads the prefixes `cache` keeps once for the batch."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if not can_share_prefix(cache):
        yield
        return
    if SHARED_PREFIX not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(SHARED_PREFIX, shared_prefix_attention)
        AttentionMaskInterface.register(SHARED_PREFIX, sdpa_mask)  # the same masks as SDPA
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = SHARED_PREFIX
    _active.cache = cache
    try:
        yield
    finally:
        _active.cache = None
        config._attn_implementation = previous
