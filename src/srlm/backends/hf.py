"""Batched generation with transformers, on CPU or GPU.

Requests are sorted by prompt length and packed into batches under a token budget (prompt + new tokens, summed
over all sequences of the batch), so short prompts are not padded to the longest one in the set and a batch never
outgrows memory. Each batch is left-padded and decoded in one `generate` call with `num_return_sequences=n`.
Sampling is seeded per batch from the ids in it: a resumed run, which replays the same chunks, samples the same
text as an uninterrupted one.
"""

from __future__ import annotations

import time

from srlm.backends.base import Completion, GenerationRequest, GenerationStats
from srlm.io import stable_seed


class HFBackend:
    name = "hf"

    def __init__(self, model, tokenizer, device: str, max_batch_tokens: int = 16384, max_batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.stats = GenerationStats()
        eos = {tokenizer.eos_token_id}
        config_eos = getattr(model.generation_config, "eos_token_id", None)
        eos.update(config_eos if isinstance(config_eos, list) else [config_eos])
        self.eos_ids = sorted(i for i in eos if i is not None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @classmethod
    def create(cls, loaded_model, max_batch_tokens: int = 16384, max_batch_size: int = 64, **_options):
        if loaded_model is None:
            raise ValueError("the hf backend needs a loaded model")
        return cls(loaded_model.model, loaded_model.tokenizer, loaded_model.device, max_batch_tokens, max_batch_size)

    # -- tokenization -----------------------------------------------------------------------------------------
    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            text = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(request.text)["input_ids"]

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self._prompt_ids(request))

    # -- batching ---------------------------------------------------------------------------------------------
    def _batches(self, items: list[tuple[int, list[int], GenerationRequest]]):
        """Group (index, ids, request) by sampling settings, longest first, under the token and size budgets."""
        by_sampling: dict = {}
        for item in items:
            by_sampling.setdefault(item[2].sampling, []).append(item)
        for sampling, group in by_sampling.items():
            group.sort(key=lambda item: -len(item[1]))
            batch, batch_len = [], 0
            for item in group:
                sequences = (len(batch) + 1) * sampling.n
                cost = sequences * (max(batch_len, len(item[1])) + sampling.max_new_tokens)
                if batch and (cost > self.max_batch_tokens or sequences > self.max_batch_size):
                    yield sampling, batch
                    batch, batch_len = [], 0
                batch.append(item)
                batch_len = max(batch_len, len(item[1]))
            if batch:
                yield sampling, batch

    def generate(self, requests, on_done=None):
        import torch
        from transformers import GenerationConfig

        start = time.perf_counter()
        items = [(i, self._prompt_ids(r), r) for i, r in enumerate(requests)]
        results: list[list[Completion] | None] = [None] * len(requests)
        for sampling, batch in self._batches(items):
            width = max(len(ids) for _, ids, _ in batch)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, ids, _) in enumerate(batch):
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention[row, width - len(ids):] = 1
            config = GenerationConfig(
                do_sample=not sampling.greedy,
                temperature=sampling.temperature if not sampling.greedy else None,
                top_p=sampling.top_p if not sampling.greedy else None,
                top_k=0,  # the paper samples with temperature and top-p only
                max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=sampling.n,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids,
            )
            torch.manual_seed(stable_seed(*(r.request_id for _, _, r in batch), *(r.seed for _, _, r in batch)))
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), generation_config=config
                )
            new_tokens = output[:, width:].tolist()
            for row, (index, ids, request) in enumerate(batch):
                completions = []
                for k in range(sampling.n):
                    tokens = new_tokens[row * sampling.n + k]
                    stop = next((j for j, t in enumerate(tokens) if t in self.eos_ids), None)
                    kept = tokens if stop is None else tokens[:stop]
                    text = self.tokenizer.decode(kept, skip_special_tokens=True)
                    completions.append(Completion(text.strip(), len(kept), "length" if stop is None else "stop"))
                    self.stats.new_tokens += len(kept)
                results[index] = completions
                self.stats.sequences += sampling.n
                self.stats.prompt_tokens += len(ids) * sampling.n
            if on_done:
                on_done(len(batch))
        self.stats.seconds += time.perf_counter() - start
        return results

    def close(self) -> None:
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
