"""The hf backend's key/value cache: buffers sized once, and on CPU a prefix stored once for the whole batch.

Two costs of the stock transformers cache showed up in the decode profile on a 2-core CPU:

- `DynamicCache` grows by `torch.cat` at every step, copying every layer's whole cache each time (a fifth of the
  judging time). `preallocated_cache` allocates the whole generation's positions once and writes in place.
- Decoding one token reads every row's whole cache in attention, and that read is bound by memory bandwidth, not
  arithmetic: with the cache copied to every row, SDPA took a fifth of generation and more of judging, where the
  ~300-token judge rubric is the same in every row and each response's part is the same in its K samples. With
  `share_prefix`, the prefix common to the batch (chat header, rubric) is kept once, unrepeated, and so is each
  prompt's own part once its N samples start (`freeze_groups`). Each decode step attends to the prefix with one
  matmul over all rows' queries, to a prompt's part with one matmul over its samples' queries (both read a shared
  part once), and to each row's own new tokens as before; the parts' softmax is one softmax, shifted by their joint
  maximum. Prefill (several query positions) attends to the prefix expanded to every row, through SDPA as before:
  it runs once per batch.

The shared-prefix attention is registered with transformers as its own attention implementation (`SHARED_PREFIX`)
and switched on only while `attending_to_shared_prefix` is active, so a model outside generation (training, a plain
forward) is untouched. Where a transformers version builds caches differently, `preallocated_cache` returns the
stock cache and the backend repeats the prefix to every row, as before.
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager

SHARED_PREFIX = "srlm_shared_prefix"
_active = threading.local()  # .cache: the cache whose prefixes the attention function reads


def preallocated_cache(capacity: int, share_prefix: bool = False):
    """A transformers cache whose layers write into buffers of `capacity` positions, allocated once.

    With `share_prefix`, `freeze_prefix(cache)` after prefilling a one-row prefix keeps that prefix once for the
    whole batch instead of copying it to every row, and `freeze_groups(cache, n)` after prefilling each prompt keeps
    its part once for its n samples (see the module docstring).
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer and not cache.layers:
        cache.layer_class_to_replicate = type("PreallocatedLayer", (_layer_class(),), {"capacity": capacity})
        cache.srlm_share_prefix = share_prefix
    return cache


@functools.cache
def _layer_class():
    """The cache layer class, built once (torch and transformers are imported only when a cache is made)."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        # Kept once, read by shared_prefix_attention: the batch's prefix [1, kv heads, P, dim]; each prompt's own
        # part [prompts, kv heads, S, dim], shared by its samples (row_group, row_slot: a row's prompt and sample).
        prefix_keys = prefix_values = group_keys = group_values = row_group = row_slot = None
        prefix_length = group_length = group_size = 0
        capacity = 0  # positions, set per cache

        def lazy_initialization(self, key_states, value_states):
            batch, heads, _, dim = key_states.shape
            rows = self.capacity - self.prefix_length - self.group_length
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
                raise RuntimeError(f"KV cache capacity {self.capacity} exceeded ({self.get_seq_length() + 1} positions)")
            self.key_buffer[:, :, self.length:end] = key_states
            self.value_buffer[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

        def _take_own(self):
            """The rows' own positions so far, handed over; the rows start again with none."""
            keys = self.key_buffer[:, :, : self.length].clone()
            values = self.value_buffer[:, :, : self.length].clone()
            self.key_buffer = self.value_buffer = self.keys = self.values = None
            self.length, self.is_initialized = 0, False
            return keys, values

        def freeze_prefix(self) -> None:
            """What this layer holds (one row) becomes the shared prefix."""
            self.prefix_length = self.length
            self.prefix_keys, self.prefix_values = self._take_own()

        def freeze_groups(self, samples: int) -> None:
            """What each row holds (a prompt's own part) becomes shared by its `samples` samples, the next rows."""
            prompts, self.group_length, self.group_size = self.key_buffer.shape[0], self.length, samples
            self.group_keys, self.group_values = self._take_own()
            self.row_group = torch.arange(prompts, device=self.group_keys.device).repeat_interleave(samples)
            self.row_slot = torch.arange(samples, device=self.group_keys.device).repeat(prompts)

        def get_seq_length(self) -> int:
            return self.prefix_length + self.group_length + (self.length if self.is_initialized else 0)

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
            if self.row_group is not None:  # prompts none of whose samples is left are dropped with them
                row_group, self.row_slot = self.row_group[indices], self.row_slot[indices]
                used = torch.unique(row_group)  # sorted
                if len(used) < self.group_keys.shape[0]:
                    self.group_keys, self.group_values = self.group_keys[used], self.group_values[used]
                self.row_group = torch.searchsorted(used, row_group)

    return PreallocatedLayer


def can_share_prefix(cache) -> bool:
    return bool(getattr(cache, "srlm_share_prefix", False))


def freeze_prefix(cache) -> None:
    for layer in cache.layers:
        layer.freeze_prefix()


def freeze_groups(cache, samples: int) -> None:
    for layer in cache.layers:
        layer.freeze_groups(samples)


def shared_prefix_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                            **kwargs):
    """transformers' attention-function interface: SDPA over [batch prefix | prompt's part | the row's own keys].

    `query` is [rows, heads, q, dim]; `key`/`value` hold only each row's own positions (the cache layer keeps the
    shared parts apart) and `attention_mask` covers all three, [rows, 1, q, prefix + prompt part + own] (or None).
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cache = getattr(_active, "cache", None)
    layer = cache.layers[module.layer_idx] if cache is not None else None
    if layer is None or (layer.prefix_keys is None and layer.group_keys is None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[2] > 1:
        # Prefill (before any prompt part is shared): the prefix expanded to every row, once per batch, via SDPA.
        if layer.prefix_keys is not None:
            rows = query.shape[0]
            key = torch.cat([layer.prefix_keys.expand(rows, -1, -1, -1), key], dim=2)
            value = torch.cat([layer.prefix_values.expand(rows, -1, -1, -1), value], dim=2)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return _decode_attention(layer, query, key, value, attention_mask,
                             scaling if scaling is not None else query.shape[-1] ** -0.5), None


def _decode_attention(layer, query, key, value, attention_mask, scale: float):
    """One query position per row: scores against each part with matmuls that read a shared part once, then one
    softmax over all parts (shifted by their joint maximum). Returns [rows, 1, heads, dim]."""
    import torch

    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    q = query.reshape(rows, kv_heads, group, dim)  # the query heads that read each key/value head together
    parts = []  # (scores [rows, kv heads, group, keys], weights -> their values' sum, mask columns)
    column = 0
    if layer.prefix_keys is not None:  # every row's queries of a key/value head in one matmul
        length = layer.prefix_length
        flat_q = q.permute(1, 0, 2, 3).reshape(kv_heads, rows * group, dim)
        scores = torch.bmm(flat_q, layer.prefix_keys[0].transpose(1, 2)).view(kv_heads, rows, group, length)

        def prefix_sum(weights, length=length):
            flat = weights.transpose(0, 1).reshape(kv_heads, rows * group, length)
            return torch.bmm(flat, layer.prefix_values[0]).view(kv_heads, rows, group, dim).transpose(0, 1)

        parts.append((scores.transpose(0, 1), prefix_sum, None))  # the prefix has no padding
        column = length
    if layer.group_keys is not None:  # each prompt's samples' queries together, against the prompt's part
        prompts, samples, length = layer.group_keys.shape[0], layer.group_size, layer.group_length
        where = (layer.row_group, layer.row_slot)

        def by_prompt(per_row):  # [rows, kv heads, group, x] -> [prompts, kv heads, samples * group, x]
            slots = per_row.new_zeros((prompts, samples) + per_row.shape[1:])
            slots[where] = per_row
            return slots.transpose(1, 2).reshape(prompts, kv_heads, samples * group, per_row.shape[-1])

        def by_row(per_prompt):  # the inverse, for the rows there are
            return per_prompt.view(prompts, kv_heads, samples, group, -1).transpose(1, 2)[where]

        scores = by_row(torch.matmul(by_prompt(q), layer.group_keys.transpose(2, 3)))
        parts.append((scores, lambda weights: by_row(torch.matmul(by_prompt(weights), layer.group_values)),
                      (column, column + length)))
        column += length
    parts.append((torch.matmul(q, key.transpose(2, 3)), lambda weights: torch.matmul(weights, value), (column, None)))

    masked = []
    for scores, weighted_sum, columns in parts:
        scores = scores.mul_(scale)
        if columns is not None and attention_mask is not None:  # None: transformers found nothing to hide
            mask = attention_mask[:, :, :, columns[0]:columns[1]]  # [rows, 1, 1, keys]
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        masked.append((scores, weighted_sum))
    top = torch.stack([scores.amax(dim=-1) for scores, _ in masked]).amax(dim=0).unsqueeze(-1)
    total, out = 0, 0
    for scores, weighted_sum in masked:
        weights = (scores - top).exp_()
        total = total + weights.sum(dim=-1, keepdim=True)
        out = out + weighted_sum(weights)
    return (out / total).reshape(rows, 1, heads, dim)  # transformers expects [rows, q, heads, dim]


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
