"""The hf backend's own decode loop against transformers' `generate`, on a tiny model."""

import pytest

from srlm.backends import GenerationRequest, Sampling, make_backend
from srlm.backends.hf import common_prefix_length, sample_next
from srlm.models import load_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.fixture(autouse=True)
def share_even_short_parts(monkeypatch):
    """The tiny prompts here are short: keep every shared part once, so that the tests exercise that path."""
    import srlm.backends.hf as hf

    monkeypatch.setattr(hf, "SHARED_PART_MIN_TOKENS", 1)


def _reference_greedy(lm, messages, max_new_tokens):
    import torch

    tok = lm.tokenizer
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = lm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True).strip()


def test_greedy_matches_generate_with_shared_prefix_and_padding(tiny):
    # Prompts of different lengths sharing a long prefix: exercises the shared prefill and the padding between
    # prefix and suffix; every row must come out exactly as if it were generated alone.
    prefix = "Review the user's question and the response below, and score the response. "
    questions = ["What?", "What is the capital of France and why?", "Name a color.", prefix]
    requests = [GenerationRequest(f"r{i}", Sampling(n=1, temperature=0, max_new_tokens=12), 0,
                                  messages=[{"role": "user", "content": prefix + q}]) for i, q in enumerate(questions)]
    backend = make_backend("hf", tiny, max_batch_tokens=100_000)
    outputs = backend.generate(requests)
    assert backend.stats.extra["shared_prefix_tokens"] > 10
    for request, outs in zip(requests, outputs):
        assert outs[0].text == _reference_greedy(tiny, request.messages, 12)
    # Two greedy samples per prompt: each prompt's part is then kept once for both (on CPU), and both must still
    # be what generate writes.
    twice = [GenerationRequest(r.request_id, Sampling(n=2, temperature=0, max_new_tokens=12), 0, messages=r.messages)
             for r in requests]
    for request, outs in zip(twice, make_backend("hf", tiny, max_batch_tokens=100_000).generate(twice)):
        assert [c.text for c in outs] == [_reference_greedy(tiny, request.messages, 12)] * 2


def test_a_prefix_kept_once_gives_the_same_text_and_counts_once_in_the_budget(tiny):
    # A judge-like workload: a long rubric shared by every prompt, K samples each. Kept once (the CPU default) or
    # copied to every row, the texts and the scores' probabilities are the same; kept once, the rubric counts once
    # in the token budget, so more prompts share a batch.
    rubric = "Score the response below from 0 to 5, one point for each of the following criteria met. " * 6
    sampling = Sampling(n=3, temperature=1.0, top_p=0.9, max_new_tokens=10)
    requests = [GenerationRequest(f"j{i}", sampling, i, messages=[{"role": "user", "content": rubric + "Answer " * i}])
                for i in range(1, 7)]
    prompt_tokens = make_backend("hf", tiny).count_prompt_tokens(requests[-1])
    budget = 3 * 3 * (prompt_tokens + 10)  # three prompts' worth when every row holds the rubric
    shared = make_backend("hf", tiny, max_batch_tokens=budget)
    copied = make_backend("hf", tiny, max_batch_tokens=budget, share_prefix=False)
    assert shared.share_prefix and not copied.share_prefix
    texts = [[c.text for c in o] for o in shared.generate(requests)]
    assert texts == [[c.text for c in o] for o in copied.generate(requests)]
    assert shared.stats.extra["batches"] == 1 and copied.stats.extra["batches"] == 2
    items = [(r, "Fine.\nScore: ") for r in requests]
    for a, b in zip(shared.score_token_probs(items, list("012345")), copied.score_token_probs(items, list("012345"))):
        assert a.probs == pytest.approx(b.probs, abs=1e-6)


def test_short_shared_parts_are_copied_by_default(tiny, monkeypatch):
    import srlm.backends.hf as hf

    monkeypatch.setattr(hf, "SHARED_PART_MIN_TOKENS", 128)
    sampling = Sampling(n=3, temperature=1.0, top_p=0.9, max_new_tokens=8)
    requests = [GenerationRequest(f"s{i}", sampling, i, messages=[{"role": "user", "content": "hi " * (i + 1)}])
                for i in range(4)]
    budget = 2 * 3 * (make_backend("hf", tiny).count_prompt_tokens(requests[-1]) + 8)
    default = make_backend("hf", tiny, max_batch_tokens=budget)
    copied = make_backend("hf", tiny, max_batch_tokens=budget, share_prefix=False)
    texts = [[c.text for c in o] for o in default.generate(requests)]
    assert texts == [[c.text for c in o] for o in copied.generate(requests)]
    assert default.stats.extra["batches"] == copied.stats.extra["batches"] == 2  # counted as copied, too


def test_rows_finishing_at_different_steps_leave_the_others_unchanged(tiny):
    # A third of the vocabulary ends a sequence, so rows finish at different steps, finished rows are dropped from
    # the batch, and prompts none of whose samples is left are dropped from the shared parts: the survivors must
    # write what they write with the cache copied to every row.
    sampling = Sampling(n=4, temperature=1.0, top_p=1.0, max_new_tokens=16)
    requests = [GenerationRequest(f"d{i}", sampling, i, messages=[{"role": "user", "content": "Tell me " * (i + 1)}])
                for i in range(6)]
    outputs = {}
    for share in (True, False):
        backend = make_backend("hf", tiny, max_batch_tokens=100_000, share_prefix=share)
        backend.eos_ids = list(range(0, tiny.model.config.vocab_size, 3))
        outputs[share] = [[(c.text, c.num_tokens, c.finish_reason) for c in o] for o in backend.generate(requests)]
    assert outputs[True] == outputs[False]
    lengths = sorted({n for o in outputs[True] for _, n, _ in o})
    assert len(lengths) > 3 and sum(r == "stop" for o in outputs[True] for _, _, r in o) > 12


def test_n_samples_budget_batching_and_determinism(tiny):
    sampling = Sampling(n=3, temperature=1.0, top_p=0.9, max_new_tokens=8)
    requests = [GenerationRequest(f"q{i}", sampling, i, messages=[{"role": "user", "content": "hello " * (i + 1)}])
                for i in range(5)]
    small = make_backend("hf", tiny, max_batch_tokens=96)  # forces several batches
    first = small.generate(requests)
    assert small.stats.extra["batches"] > 1
    assert [len(o) for o in first] == [3] * 5
    assert all(c.finish_reason in ("stop", "length") and c.num_tokens <= 8 for o in first for c in o)
    again = make_backend("hf", tiny, max_batch_tokens=96).generate(requests)
    assert [[c.text for c in o] for o in first] == [[c.text for c in o] for o in again]
    # the same samples whatever the batch size: one big batch, and one request at a time
    big = make_backend("hf", tiny, max_batch_tokens=100_000).generate(requests)
    alone = [make_backend("hf", tiny).generate([r])[0] for r in requests]
    assert [[c.text for c in o] for o in big] == [[c.text for c in o] for o in first] == [[c.text for c in o] for o in alone]
    done = []
    small.generate(requests[:2], on_done=done.append)
    assert sum(done) == 2


def test_eos_stops_a_sequence(tiny):
    import torch

    # Make EOS the only likely token: every sequence must stop at once with finish_reason "stop".
    lm = tiny
    eos = lm.tokenizer.eos_token_id
    with torch.no_grad():
        lm.model.lm_head.weight[eos] += 50.0
    try:
        outs = make_backend("hf", lm).generate(
            [GenerationRequest("e", Sampling(n=2, temperature=0.7, max_new_tokens=5), 0,
                               messages=[{"role": "user", "content": "hi"}])])
    finally:
        with torch.no_grad():
            lm.model.lm_head.weight[eos] -= 50.0
    assert [(c.text, c.num_tokens, c.finish_reason) for c in outs[0]] == [("", 0, "stop"), ("", 0, "stop")]


def test_top_p_keeps_only_the_nucleus():
    import torch

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = [torch.Generator().manual_seed(0)]
    draws = [int(sample_next(logits, Sampling(temperature=1.0, top_p=0.7), gen)) for _ in range(400)]
    assert set(draws) == {0, 1}  # 0.5 + 0.3 reaches 0.7; tokens 2 and 3 are outside the nucleus
    assert 0.55 < draws.count(0) / 400 < 0.70  # renormalised: 0.5 / 0.8 = 0.625
    full = [int(sample_next(logits, Sampling(temperature=1.0, top_p=1.0), gen)) for _ in range(400)]
    assert set(full) == {0, 1, 2, 3}
    assert int(sample_next(logits, Sampling(temperature=0.0), gen)) == 0


def test_a_wide_nucleus_is_sorted_in_full_and_rows_do_not_affect_each_other():
    import torch

    from srlm.backends.hf import NUCLEUS_CANDIDATES

    vocab = 4 * NUCLEUS_CANDIDATES
    flat = torch.zeros(vocab)  # every token equally likely: the nucleus is 90% of the vocabulary
    peaked = torch.full((vocab,), -30.0)
    peaked[7] = 0.0
    sampling = Sampling(temperature=1.0, top_p=0.9)
    together, alone = [], []
    for seed in range(200):
        pair = sample_next(torch.stack([flat, peaked]), sampling,
                           [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(1000 + seed)])
        together.append(pair.tolist())
        alone.append([int(sample_next(flat[None], sampling, [torch.Generator().manual_seed(seed)])),
                      int(sample_next(peaked[None], sampling, [torch.Generator().manual_seed(1000 + seed)]))])
    assert together == alone
    assert {b for _, b in together} == {7}
    assert max(a for a, _ in together) > NUCLEUS_CANDIDATES  # drawn beyond the top candidates


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5, 1], [6, 1]]) == 0


def test_int8_weights_quantize_all_but_the_head_and_decode_as_generate_does(tiny_model_dir):
    # backend.int8_weights: the backend loads its model with every linear layer but the output head in int8. Its
    # own decode loop (shared prefix, cache buffers) must give what transformers' generate gives with the same
    # quantized model, and the head must stay an fp32 nn.Linear.
    import dataclasses

    import torch

    from srlm.backends import backend_for
    from srlm.config import load_config

    cfg = load_config(overrides=["backend.int8_weights=true"])
    backend = backend_for(cfg, str(tiny_model_dir))
    model = backend.model
    int8_linear = torch.ao.nn.quantized.dynamic.Linear
    kinds = {name: type(m) for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, int8_linear))}
    head = next(name for name, m in model.named_modules() if m is model.get_output_embeddings())
    assert kinds.pop(head) is torch.nn.Linear
    assert kinds and set(kinds.values()) == {int8_linear}
    messages = [{"role": "user", "content": "Review the response and score it. What is the capital of France?"}]
    request = GenerationRequest("q", Sampling(n=1, temperature=0, max_new_tokens=12), 0, messages=messages)
    quantized_model = dataclasses.replace(load_model(str(tiny_model_dir)), model=model)
    assert backend.generate([request])[0][0].text == _reference_greedy(quantized_model, messages, 12)


def test_int8_weights_refuse_a_model_that_is_not_on_the_cpu():
    # The int8 matmuls are the CPU's; a model placed elsewhere (a GPU; here the meta device) is refused by name.
    import torch

    from srlm.backends.int8 import quantize_linear_layers
    from srlm.errors import SrlmError

    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.get_output_embeddings = lambda: None
    with pytest.raises(SrlmError, match="backend.int8_weights.*meta"):
        quantize_linear_layers(model)


def test_int8_weights_are_the_hf_backends_and_mark_the_evaluations_apart():
    from srlm.config import load_config
    from srlm.errors import ConfigError
    from srlm.stage_settings import stage_fingerprint

    with pytest.raises(ConfigError, match="int8_weights"):
        load_config(overrides=["backend.name=vllm", "backend.int8_weights=true"])
    fp32, int8 = load_config(), load_config(overrides=["backend.int8_weights=true"])
    # At its default the key is in no fingerprint (runs from before it was added do not rerun); set, it reruns the
    # generation stages and the evaluations, whose figures it changes, and not the training stages.
    assert stage_fingerprint(fp32, "eval") != stage_fingerprint(int8, "eval")
    assert stage_fingerprint(fp32, "respond") != stage_fingerprint(int8, "respond")
    assert stage_fingerprint(fp32, "dpo") == stage_fingerprint(int8, "dpo")
    assert fp32.fingerprint("backend") == load_config(overrides=["backend.int8_weights=false"]).fingerprint("backend")
