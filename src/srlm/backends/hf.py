"""Batched generation with transformers models, on CPU or GPU, with the prefill shared wherever it can be.

Why not `model.generate`: in this loop nearly every prompt is long and shared. The judge prompt is a ~300-token
rubric with a short question and answer at the end, judged K times; a response prompt is sampled N times.
`generate` prefills each of those sequences separately (`num_return_sequences` copies the prompt before the
prefill), which on a CPU made judging cost several times the decoding itself. This loop:

1. packs requests into batches under a token budget (prompt + new tokens, summed over sequences), longest first,
   so short prompts are not padded to the longest of the whole set and a batch never outgrows memory;
2. prefills the longest token prefix common to the batch (the chat header and the judge rubric) once, and shares
   its key/value cache with every row;
3. prefills each prompt's own suffix once, and shares it with its N samples;
4. samples (temperature, top-p) and drops finished rows from the batch once a quarter of them have reached
   end-of-sequence (dropping copies the cache, so it is batched);
5. keeps the key/value cache in buffers sized for the whole generation instead of growing it by concatenation;
6. on CPU, stores what is shared once (the batch's prefix, each prompt's part) and attends to it with one matmul
   over all the rows that share it (`kv_cache.py`); elsewhere (a GPU, or `share_prefix=False`) the shared cache
   is copied to every row, and on CPU SDPA attends over grouped key/value heads directly instead of copying them
   out per query head.

Padding sits between the shared prefix and each suffix; the attention mask hides it and position ids skip it, so
each row sees exactly the positions it would see alone. Every output sequence samples from its own
torch.Generator, seeded from its request and sample index, so the text does not depend on the batch it landed in
or on where a run was resumed.
"""

from __future__ import annotations

import inspect
import os
import time
from contextlib import contextmanager

from srlm.backends.base import (
    CandidateProbs,
    Completion,
    GenerationRequest,
    GenerationStats,
    Sampling,
    prompt_token_ids,
)
from srlm.backends.kv_cache import (
    attending_to_shared_prefix,
    can_share_prefix,
    freeze_groups,
    freeze_prefix,
    preallocated_cache,
)
from srlm.errors import SrlmError
from srlm.io import stable_seed


NUCLEUS_CANDIDATES = 256
# A shared part (the batch's prefix, or a prompt's part shared by its samples) shorter than this is copied to every
# row rather than kept once. Attending to a part kept apart costs a few small ops per layer and step, which long
# parts repay and short ones do not: with the judge's ~250-token rubric and ~180-token responses decoding ran
# 1.10-1.19x faster, with generation's ~30-token chat header and ~60-token prompts 0.88-1.07x (benchmarks/README.md).
SHARED_PART_MIN_TOKENS = 128
_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"  # read by transformers at every attention call


def sample_next(logits, sampling: Sampling, generators: list):
    """One token per row: greedy at temperature 0, else temperature then nucleus (top-p) sampling.

    Each row draws its uniform number from its own generator (seeded by its request and sample index), so what a
    sequence samples does not depend on which other sequences share its batch: the same seed gives the same text
    whatever the batch size and wherever a run was resumed.

    Sorting a 50k-token vocabulary for every row at every step cost more than the model's own matmuls on a CPU.
    The nucleus is almost always inside the top few hundred tokens, so it is looked for there first; only a row whose
    top candidates do not reach `top_p` is sorted in full, so the result is exact either way, and what a row draws
    does not depend on the other rows.
    """
    import torch

    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    uniform = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in generators])
    if sampling.top_p >= 1.0:
        return _draw(*probs.sort(dim=-1, descending=True), uniform, sampling.top_p)
    top_probs, top_ids = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)  # sorted, descending
    tokens = _draw(top_probs, top_ids, uniform, sampling.top_p)
    short = (top_probs.sum(dim=-1) < sampling.top_p).nonzero().squeeze(-1)  # rows whose nucleus is wider
    if len(short):
        tokens[short] = _draw(*probs[short].sort(dim=-1, descending=True), uniform[short], sampling.top_p)
    return tokens


def _draw(sorted_probs, sorted_ids, uniform, top_p: float):
    """One token per row from probabilities sorted in descending order: the smallest prefix whose mass reaches
    top_p (the token that crosses it included), renormalised, and the row's uniform number mapped through its CDF."""
    import torch

    if top_p < 1.0:
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    cdf = sorted_probs.cumsum(dim=-1)
    choice = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1)).clamp(max=cdf.shape[-1] - 1)
    return sorted_ids.gather(-1, choice).squeeze(-1)


def _candidate_probs(log_probs) -> CandidateProbs:
    """From the candidates' next-token log-probabilities: renormalised in log space (exact even where their whole
    mass underflows float32), and their share of the whole distribution."""
    import torch

    chosen = log_probs.double()
    return CandidateProbs(torch.softmax(chosen, dim=-1).tolist(), float(torch.logsumexp(chosen, dim=-1).exp()))


def common_prefix_length(sequences: list[list[int]]) -> int:
    first = sequences[0]
    length = min(len(s) for s in sequences)
    for seq in sequences[1:]:
        i = 0
        while i < length and seq[i] == first[i]:
            i += 1
        length = i
    return length


@contextmanager
def _grouped_query_attention_in_sdpa(device: str):
    """Let SDPA read the shared key/value heads of grouped-query attention directly on CPU.

    With an attention mask, transformers otherwise copies every key/value head out to all query heads before each
    attention call (`repeat_kv`): on SmolLM2 (3 KV heads, 9 query heads) that copy of the whole cache at every
    layer and step made batched decoding 2.5x slower on a CPU. transformers keeps the copy on CUDA, where masked
    GQA would fall back to the slow math kernel, so this switch is for CPU only, and only while generating.
    """
    if not device.startswith("cpu"):
        yield
        return
    previous = os.environ.get(_FORCE_GQA)
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_FORCE_GQA, None)
        else:
            os.environ[_FORCE_GQA] = previous


def candidate_token_ids(tokenizer, continuation: str, candidates: list[str],
                        request_id: str = "") -> tuple[list[int], list[int]]:
    """(continuation ids, one token id per candidate) such that continuation + candidate tokenises as the
    continuation's ids followed by that single token: the candidate must be the very next token.

    "Score: 4" is ":", " ", "4" for some tokenizers (SmolLM2) and ":", " 4" for others (GPT-2 style), so the
    continuation is tried as given, then with its trailing whitespace moved into the candidates.
    """
    options = [(continuation, candidates)]
    stripped = continuation.rstrip()
    if stripped != continuation:
        options.append((stripped, [continuation[len(stripped):] + c for c in candidates]))
    problems = []
    for text, spelled in options:
        base = _encode(tokenizer, text)
        ids = []
        for candidate in spelled:
            full = _encode(tokenizer, text + candidate)
            if len(full) != len(base) + 1 or full[: len(base)] != base:
                problems.append(f"{candidate!r} after {text[-12:]!r} is not one added token")
                break
            ids.append(full[-1])
        else:
            if len(set(ids)) == len(ids):
                return base, ids
            problems.append(f"{spelled} share a token")
    raise SrlmError(
        f"hf backend, request '{request_id}': the tokenizer does not write each of the candidates {candidates} "
        f"as one token after the text before them ({'; '.join(problems)}), so their probabilities cannot be "
        "read at one position; judge.method=expected needs a tokenizer with single-token score digits"
    )


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


class HFBackend:
    name = "hf"

    def __init__(self, model, tokenizer, device: str, max_batch_tokens: int = 16384, max_batch_size: int = 64,
                 share_prefix: bool | None = None):
        self.model = model
        # The prefix is kept once only on CPU by default, where attention is bound by reading the cache; on a GPU
        # the fused SDPA kernels read the copied prefix fast enough that the unfused two-part attention would not
        # pay. False = the prefix copied to every row (the benchmarks' side-by-side baseline).
        self.share_prefix = device.startswith("cpu") if share_prefix is None else share_prefix
        self.shared_part_min_tokens = SHARED_PART_MIN_TOKENS
        self._watch: list[str] | None = None  # see record_token_probs
        self._recorded: dict = {}  # (request id, seed, prompt ids) -> [(tokens, log-probs per step)], one per sample
        self._recorded_ids: list[int] = []
        self.tokenizer = tokenizer
        self.device = device
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        # score_*: the teacher-forced passes of `score_token_probs` (expected-score judging), counted apart.
        self.stats = GenerationStats(extra={"shared_prefix_tokens": 0, "prefill_tokens": 0, "batches": 0,
                                            "score_batches": 0, "score_prefill_tokens": 0, "scored_sequences": 0,
                                            "scored_while_decoding": 0})
        eos = {tokenizer.eos_token_id}
        config_eos = getattr(model.generation_config, "eos_token_id", None)
        eos.update(config_eos if isinstance(config_eos, list) else [config_eos])
        self.eos_ids = sorted(i for i in eos if i is not None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        # transformers 5.x renamed the forward argument `past_key_values` to `cache`; accept both versions.
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @classmethod
    def from_config(cls, model_path: str, backend, model, *, seed: int) -> "HFBackend":
        """`model_path` loaded into this process as `model` (the model section) says, batched as `backend` says."""
        from srlm.backends.int8 import quantize_linear_layers
        from srlm.models import load_model

        loaded = load_model(model_path, **model.load_options())
        if backend.int8_weights:  # not in the paper; off by default (int8.py)
            quantize_linear_layers(loaded.model)
        return cls.create(loaded, max_batch_tokens=backend.max_batch_tokens, max_batch_size=backend.max_batch_size)

    @classmethod
    def create(cls, loaded_model, max_batch_tokens: int = 16384, max_batch_size: int = 64,
               share_prefix: bool | None = None, **_options):
        if loaded_model is None:
            raise ValueError("the hf backend needs a loaded model")
        return cls(loaded_model.model, loaded_model.tokenizer, loaded_model.device, max_batch_tokens, max_batch_size,
                   share_prefix)

    # -- tokenization -----------------------------------------------------------------------------------------
    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        return prompt_token_ids(self.tokenizer, request)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self._prompt_ids(request))

    # -- batching ---------------------------------------------------------------------------------------------
    def _batches(self, items: list[tuple[int, list[int], GenerationRequest]]):
        """Group (index, ids, request) by sampling settings, longest first, under the token and size budgets.

        The token budget bounds the key/value cache of a batch: every sequence's prompt and new tokens, except that
        with `share_prefix` what is stored once is counted once: the prefix common to the batch (the judge rubric,
        ~250 tokens of each judge prompt) and each prompt's own part, shared by its samples.
        """
        by_sampling: dict = {}
        for item in items:
            by_sampling.setdefault(item[2].sampling, []).append(item)
        for sampling, group in by_sampling.items():
            group.sort(key=lambda item: -len(item[1]))
            batch, batch_len, common = [], 0, 0  # common: the prefix all of the batch's prompts share
            for item in group:
                ids = item[1]
                with_item = min(common, common_prefix_length([batch[0][1], ids])) if batch else len(ids)
                sequences = (len(batch) + 1) * sampling.n
                # What `_prefill` and `_decode_batch` will keep once counts once.
                prefix = min(with_item, len(ids) - 1)
                prefix = prefix if self._keeps_apart(prefix) else 0
                part = max(batch_len, len(ids)) - prefix
                prompt_parts = (len(batch) + 1) * part * (1 if self._keeps_apart(part) else sampling.n)
                cost = prefix + prompt_parts + sequences * sampling.max_new_tokens
                if batch and (cost > self.max_batch_tokens or sequences > self.max_batch_size):
                    yield sampling, batch
                    batch, batch_len, with_item = [], 0, len(ids)
                batch.append(item)
                batch_len, common = max(batch_len, len(ids)), with_item
            if batch:
                yield sampling, batch

    def generate(self, requests, on_done=None):
        with _grouped_query_attention_in_sdpa(self.device):
            return self._generate(requests, on_done)

    def record_token_probs(self, candidates) -> None:
        """Have the next `generate` call keep, at every step of every sequence, the log-probabilities of the tokens
        that spell `candidates` (alone or after a space), so that `score_token_probs` on the texts it wrote reads
        them back instead of a second forward pass over prompt and text (the judge's expected score: that pass cost
        a third of judging on a CPU). Read back only where the continuation's tokens are the very tokens the
        sequence generated; anything else gets the forward pass, so the result is the same either way."""
        self._watch = list(candidates)

    def _watched_ids(self) -> list[int]:
        spellings = [self._encode(c) for c in self._watch] + [self._encode(" " + c) for c in self._watch]
        return sorted({ids[0] for ids in spellings if len(ids) == 1})

    def _generate(self, requests, on_done=None):
        start = time.perf_counter()
        items = [(i, self._prompt_ids(r), r) for i, r in enumerate(requests)]
        results: list[list[Completion] | None] = [None] * len(requests)
        self._recorded, self._recorded_ids = {}, self._watched_ids() if self._watch else []
        self._watch = None  # for this call only
        for sampling, batch in self._batches(items):
            seeds = [stable_seed(r.request_id, r.seed, k) for _, _, r in batch for k in range(sampling.n)]
            token_lists, recorded = self._decode_batch([ids for _, ids, _ in batch], sampling, seeds)
            for row, (index, ids, request) in enumerate(batch):
                sequences = range(row * sampling.n, (row + 1) * sampling.n)
                if recorded is not None:
                    self._recorded[(request.request_id, request.seed, tuple(ids))] = [
                        (token_lists[seq][0], recorded[seq, : len(token_lists[seq][0]) + 1]) for seq in sequences]
                completions = []
                for tokens, finished in (token_lists[seq] for seq in sequences):
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    completions.append(Completion(text.strip(), len(tokens), "stop" if finished else "length"))
                    self.stats.new_tokens += len(tokens)
                results[index] = completions
                self.stats.sequences += sampling.n
                self.stats.prompt_tokens += len(ids) * sampling.n
            if on_done:
                on_done(len(batch))
        self.stats.seconds += time.perf_counter() - start
        return results

    def _new_cache(self, capacity: int):
        return preallocated_cache(capacity, share_prefix=self.share_prefix)

    def _keeps_apart(self, length: int, cache=None) -> bool:
        """Whether a shared part of `length` tokens is kept once rather than copied to every row (and, given the
        cache, whether that cache can: a transformers version with other cache layers cannot)."""
        return (self.share_prefix and length >= self.shared_part_min_tokens
                and (cache is None or can_share_prefix(cache)))

    # -- prefill, shared by decoding and scoring ---------------------------------------------------------------
    def _prefill(self, prompts: list[list[int]], cache):
        """Run every prompt through the model into `cache` (call under inference mode): the common prefix once,
        copied to every row, then each row's own suffix, left-padded after the prefix.

        Returns (model output with the last position's logits, attention mask, position ids, token counts). The
        mask hides the padding and the position ids skip it, so the last position of every row sees exactly what
        it would see alone.
        """
        import torch

        device, rows = self.device, len(prompts)
        # Leave each prompt at least one token of its own, whose logits are the ones wanted.
        shared = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
        if shared > 0:
            prefix = torch.tensor([prompts[0][:shared]], device=device)
            self.model(input_ids=prefix, **{self.cache_arg: cache}, use_cache=True, logits_to_keep=1)
            if self._keeps_apart(shared, cache):
                freeze_prefix(cache)  # kept once for all rows
            else:
                cache.batch_repeat_interleave(rows)
        suffixes = [p[shared:] for p in prompts]
        width = max(len(s) for s in suffixes)
        input_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for row, suffix in enumerate(suffixes):
            input_ids[row, width - len(suffix):] = torch.tensor(suffix)
            mask[row, shared + width - len(suffix):] = 1
        mask = mask.to(device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids.to(device), attention_mask=mask, position_ids=positions[:, shared:],
                         **{self.cache_arg: cache}, use_cache=True, logits_to_keep=1)
        return out, mask, positions, {"shared": shared, "tokens": shared + sum(len(s) for s in suffixes)}

    # -- the decode loop --------------------------------------------------------------------------------------
    def _decode_batch(self, prompts: list[list[int]], sampling: Sampling, seeds: list[int]):
        """(new tokens, reached EOS) for each prompt x sample, in order prompt 0 sample 0..n-1, prompt 1, ...; and,
        when token ids are watched (`record_token_probs`), their log-probabilities [sequence, step, watched id]."""
        import torch

        device, n, rows = self.device, sampling.n, len(prompts)
        generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]  # one per output sequence
        cache = self._new_cache(max(len(p) for p in prompts) + sampling.max_new_tokens)
        with torch.inference_mode(), attending_to_shared_prefix(self.model, cache):
            out, mask, positions, prefill = self._prefill(prompts, cache)
            self.stats.extra["shared_prefix_tokens"] += prefill["shared"]
            self.stats.extra["prefill_tokens"] += prefill["tokens"]
            self.stats.extra["batches"] += 1

            # N samples per prompt: copy the prompt's cache rather than prefilling it N times.
            logits = out.logits[:, -1].repeat_interleave(n, dim=0)
            prompt_part = mask.shape[1] - (prefill["shared"] if self._keeps_apart(prefill["shared"], cache) else 0)
            if n > 1 and self._keeps_apart(prompt_part, cache):
                freeze_groups(cache, n)  # each prompt's part kept once for its n samples
            elif n > 1:
                cache.batch_repeat_interleave(n)
            mask = mask.repeat_interleave(n, dim=0)
            last_position = positions[:, -1].repeat_interleave(n)
            alive = torch.arange(rows * n, device=device)  # which output sequence each cache row belongs to
            tokens: list[list[int]] = [[] for _ in range(rows * n)]
            finished = [False] * (rows * n)  # per output sequence
            eos = torch.tensor(self.eos_ids, device=device)

            done = torch.zeros(rows * n, dtype=torch.bool, device=device)  # per cache row
            watched = torch.tensor(self._recorded_ids, device=device) if self._recorded_ids else None
            recorded = None if watched is None else torch.full((rows * n, sampling.max_new_tokens, len(watched)),
                                                                float("nan"))
            for step in range(sampling.max_new_tokens):
                if watched is not None:  # the next-token log-probabilities the score pass would compute
                    recorded[alive.cpu(), step] = (logits[:, watched].float()
                                             - torch.logsumexp(logits.float(), dim=-1, keepdim=True)).cpu()
                next_tokens = sample_next(logits, sampling, [generators[seq] for seq in alive.tolist()])
                newly_done = torch.isin(next_tokens, eos) & ~done
                for seq, token, was_done, stop in zip(alive.tolist(), next_tokens.tolist(), done.tolist(),
                                                      newly_done.tolist()):
                    if stop:
                        finished[seq] = True
                    elif not was_done:
                        tokens[seq].append(token)
                done |= newly_done
                if step == sampling.max_new_tokens - 1 or bool(done.all()):
                    break
                # Dropping finished rows copies the whole cache, so it waits until a quarter of the rows are done;
                # until then they ride along and their tokens are ignored.
                if int(done.sum()) * 4 >= len(done):
                    keep = (~done).nonzero().squeeze(-1)
                    cache.batch_select_indices(keep)
                    alive, mask, last_position = alive[keep], mask[keep], last_position[keep]
                    next_tokens, done = next_tokens[keep], done[keep]
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                last_position = last_position + 1
                out = self.model(input_ids=next_tokens[:, None], attention_mask=mask,
                                 position_ids=last_position[:, None], **{self.cache_arg: cache}, use_cache=True)
                logits = out.logits[:, -1]
        return list(zip(tokens, finished)), recorded

    # -- next-token probabilities of candidates (expected-score judging) ---------------------------------------
    def score_token_probs(self, items, candidates):
        """See `srlm.backends.base.ScoresNextTokens`: the next-token distribution after (prompt + continuation).

        Where `record_token_probs` was called before the `generate` that wrote the continuation, and the
        continuation's tokens are the very tokens that sequence generated, the probabilities recorded at that decode
        step are read back. Everything else (text from another backend, a re-tokenisation that differs) gets one
        teacher-forced forward pass per batch, the prefix common to the batch (chat header and judge rubric)
        prefilled once. The two give the same result (tested); benchmarks/README.md has the measured cost.
        """
        with _grouped_query_attention_in_sdpa(self.device):
            return self._score_token_probs(items, list(candidates))

    def _score_token_probs(self, items, candidates: list[str]) -> list[CandidateProbs | None]:
        import torch

        start = time.perf_counter()
        results: list[CandidateProbs | None] = [None] * len(items)
        prepared = []  # (index, prompt + continuation ids, candidate token ids): what needs the forward pass
        for index, (request, continuation) in enumerate(items):
            continuation_ids, candidate_ids = self._candidate_tokens(continuation, candidates, request.request_id)
            prompt_ids = self._prompt_ids(request)
            results[index] = self._recorded_probs(request, prompt_ids, continuation_ids, candidate_ids)
            if results[index] is None:
                prepared.append((index, prompt_ids + continuation_ids, candidate_ids))
        self.stats.extra["scored_while_decoding"] += len(items) - len(prepared)
        prepared.sort(key=lambda item: -len(item[1]))  # similar lengths together: less padding
        batches, batch = [], []
        for item in prepared:  # longest first, so a batch's first item sets its width
            if batch and ((len(batch) + 1) * len(batch[0][1]) > self.max_batch_tokens
                          or len(batch) >= self.max_batch_size):
                batches.append(batch)
                batch = []
            batch.append(item)
        if batch:
            batches.append(batch)

        for batch in batches:
            cache = self._new_cache(len(batch[0][1]))
            with torch.inference_mode(), attending_to_shared_prefix(self.model, cache):
                out, _, _, prefill = self._prefill([ids for _, ids, _ in batch], cache)
                log_probs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            self.stats.extra["score_batches"] += 1
            self.stats.extra["score_prefill_tokens"] += prefill["tokens"]
            for row, (index, _, candidate_ids) in enumerate(batch):
                results[index] = _candidate_probs(log_probs[row, torch.tensor(candidate_ids, device=log_probs.device)])
        self.stats.extra["scored_sequences"] += len(items)
        self.stats.seconds += time.perf_counter() - start
        return results

    def _recorded_probs(self, request, prompt_ids, continuation_ids, candidate_ids) -> CandidateProbs | None:
        """The candidates' probabilities as the last `generate` recorded them at the step right after
        `continuation_ids`, from a sample of `request` that generated exactly those tokens; None if there is none."""
        if not set(candidate_ids) <= set(self._recorded_ids):
            return None
        columns = [self._recorded_ids.index(i) for i in candidate_ids]
        step = len(continuation_ids)
        for tokens, log_probs in self._recorded.get((request.request_id, request.seed, tuple(prompt_ids)), []):
            if step < len(log_probs) and tokens[:step] == continuation_ids:
                return _candidate_probs(log_probs[step, columns])
        return None

    def _encode(self, text: str) -> list[int]:
        return _encode(self.tokenizer, text)

    def _candidate_tokens(self, continuation: str, candidates: list[str],
                          request_id: str) -> tuple[list[int], list[int]]:
        return candidate_token_ids(self.tokenizer, continuation, candidates, request_id)

    def close(self) -> None:
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
