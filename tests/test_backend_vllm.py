"""The vllm backend: request -> vLLM request translation and vLLM output -> Completion mapping, checked against a
stand-in engine with the real tokenizer of the tiny model; config keys and wiring; and, where vLLM and a CUDA GPU
are present, one real end-to-end generation."""

from __future__ import annotations

import gc
import importlib.util
import os
import random
import sys
import types
import weakref
from types import SimpleNamespace

import pytest

from srlm.backends import GenerationRequest, Sampling, backend_for, make_backend
from srlm.backends.vllm import VLLMBackend
from srlm.config import load_config
from srlm.errors import ConfigError, SrlmError
from srlm.io import stable_seed
from srlm.models import load_model, load_tokenizer


class FakeSamplingParams:
    """Takes vllm.SamplingParams' keywords and keeps them."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.__dict__.update(kwargs)


class FakeEngine:
    """Answers like vllm.LLM.generate: one output per prompt, in order, each with `n` samples. Sample k of a request
    draws from random.Random(seed + k), as vLLM seeds a request's k-th sample; a sequence that stops early ends
    with the EOS token in token_ids, as vLLM keeps it there."""

    def __init__(self, eos_id: int, vocab: list[int], max_model_len: int = 2048):
        self.eos_id, self.vocab = eos_id, vocab
        self.calls = []
        self.shutdowns = 0
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=max_model_len),
                                          engine_core=SimpleNamespace(shutdown=self._shutdown))

    def _shutdown(self):
        self.shutdowns += 1

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True):
        self.calls.append((prompts, sampling_params, use_tqdm))
        results = []
        for prompt, params in zip(prompts, sampling_params):
            samples = []
            for k in range(params.n):
                rng = random.Random(params.seed + k + 1000 * len(prompt["prompt_token_ids"]))
                length = rng.randint(1, params.max_tokens + 3)
                tokens = [rng.choice(self.vocab) for _ in range(min(length, params.max_tokens))]
                if length <= params.max_tokens:
                    samples.append(SimpleNamespace(token_ids=tokens[:-1] + [self.eos_id], finish_reason="stop",
                                                   stop_reason=None, text="(vLLM's own detokenization)"))
                else:
                    samples.append(SimpleNamespace(token_ids=tokens, finish_reason="length", stop_reason=None,
                                                   text="(vLLM's own detokenization)"))
            results.append(SimpleNamespace(outputs=samples, prompt_token_ids=prompt["prompt_token_ids"],
                                           num_cached_tokens=3))
        return results


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def _backend(tokenizer, **engine_options):
    vocab = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids]
    engine = FakeEngine(tokenizer.eos_token_id, vocab, **engine_options)
    return VLLMBackend(engine, tokenizer, sampling_params_class=FakeSamplingParams), engine


def _chat(request_id, content, sampling, seed=0):
    return GenerationRequest(request_id, sampling, seed, messages=[{"role": "user", "content": content}])


RUBRIC = "Review the user's question and the response below, and score the response with an additive 5-point system. "


def test_prompts_are_the_tokens_the_hf_backend_prefills(tiny_model_dir, tokenizer):
    hf = make_backend("hf", load_model(str(tiny_model_dir)))
    backend, engine = _backend(tokenizer)
    sampling = Sampling(n=2, temperature=0.7, top_p=0.9, max_new_tokens=8)
    requests = [_chat("judge-1", RUBRIC + "What is the capital of France?", sampling),
                _chat("judge-2", RUBRIC + "Name a color.", sampling),
                GenerationRequest("fewshot", sampling, 0, text="Come up with a series of tasks:\n1. explain\n2.")]
    backend.generate(requests)
    [(prompts, params, use_tqdm)] = engine.calls
    assert use_tqdm is False
    sent = [p["prompt_token_ids"] for p in prompts]
    assert sent == [hf._prompt_ids(r) for r in requests]
    # and independently of the hf backend: the chat template with the generation prompt, tokenized once
    reference = tokenizer.apply_chat_template(requests[0].messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"]
    assert sent[0] == list(reference)
    assert tokenizer.decode(sent[0]).endswith("<|im_start|>assistant\n")
    assert sent[2] == tokenizer(requests[2].text)["input_ids"]  # raw text: no chat template
    assert [backend.count_prompt_tokens(r) for r in requests] == [len(s) for s in sent]


def test_sampling_params_seeds_and_n(tokenizer):
    backend, engine = _backend(tokenizer)
    sampled = Sampling(n=4, temperature=0.7, top_p=0.9, max_new_tokens=16)
    requests = [_chat(f"r{i}", f"hello {i}", sampled, seed=7) for i in range(3)]
    outputs = backend.generate(requests)
    [(_, params, _)] = engine.calls
    assert [p.kwargs for p in params] == [
        dict(n=4, temperature=0.7, top_p=0.9, max_tokens=16, seed=stable_seed(f"r{i}", 7), skip_special_tokens=True)
        for i in range(3)
    ]
    assert len({p.seed for p in params}) == 3  # every request its own seed
    assert [len(o) for o in outputs] == [4, 4, 4]
    # a record's seed depends on its request alone: the same request alone, or after others, asks the same
    backend.generate([requests[2]])
    backend.generate([_chat("other", "x", sampled, seed=7), requests[1]])
    assert engine.calls[1][1][0].kwargs == params[2].kwargs
    assert engine.calls[2][1][1].kwargs == params[1].kwargs
    # the request's seed matters too
    backend.generate([_chat("r0", "hello 0", sampled, seed=8)])
    assert engine.calls[3][1][0].seed != params[0].seed


def test_greedy_asks_one_sample_and_copies_it(tokenizer):
    backend, engine = _backend(tokenizer)
    greedy = Sampling(n=3, temperature=0.0, top_p=0.9, max_new_tokens=10)
    [outs] = backend.generate([_chat("g", "hi", greedy)])
    [(_, [param], _)] = engine.calls
    assert (param.n, param.temperature, param.top_p) == (1, 0.0, 1.0)
    assert len(outs) == 3 and outs[0] == outs[1] == outs[2]
    assert backend.stats.sequences == 3 and backend.stats.extra["greedy_copies"] == 2
    assert backend.stats.new_tokens == outs[0].num_tokens  # generated once


def test_outputs_map_to_completions_and_stats(tokenizer):
    backend, engine = _backend(tokenizer)
    sampling = Sampling(n=3, temperature=1.0, top_p=0.95, max_new_tokens=6)
    requests = [_chat(f"q{i}", "hello " * (i + 1), sampling) for i in range(6)]
    done = []
    outputs = backend.generate(requests, on_done=done.append)
    assert sum(done) == len(requests)
    raw = engine.generate(*engine.calls[0][:2], use_tqdm=False)  # the same answers again, to compare with
    reasons = set()
    for out, completions in zip(raw, outputs):
        for sample, completion in zip(out.outputs, completions):
            reasons.add(sample.finish_reason)
            tokens = sample.token_ids
            if sample.finish_reason == "stop":
                assert tokens[-1] == tokenizer.eos_token_id
                tokens = tokens[:-1]  # the EOS is not part of the completion, as in the hf backend
            assert completion.finish_reason == sample.finish_reason
            assert completion.num_tokens == len(tokens) <= sampling.max_new_tokens
            assert completion.text == tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert reasons == {"stop", "length"}
    stats = backend.stats
    assert stats.sequences == 18 and stats.extra["requests"] == 6
    assert stats.new_tokens == sum(c.num_tokens for o in outputs for c in o)
    assert stats.prompt_tokens == sum(backend.count_prompt_tokens(r) * 3 for r in requests)
    assert stats.extra["cached_prompt_tokens"] == 6 * 3
    assert stats.seconds > 0
    assert backend.generate([]) == []


def test_a_stop_token_from_the_generation_config_is_not_counted(tokenizer):
    backend, _ = _backend(tokenizer)
    request = _chat("s", "hi", Sampling(n=1, max_new_tokens=5))
    ids = tokenizer("Paris")["input_ids"]
    stopped = SimpleNamespace(token_ids=ids + [7], finish_reason="stop", stop_reason=7)
    assert backend._completion(stopped, request) == backend._completion(
        SimpleNamespace(token_ids=ids, finish_reason="stop", stop_reason=None), request)
    assert backend._completion(stopped, request).num_tokens == len(ids)


def test_an_aborted_request_is_an_error(tokenizer):
    backend, engine = _backend(tokenizer)
    engine.generate = lambda prompts, sampling_params=None, use_tqdm=True: [SimpleNamespace(
        outputs=[SimpleNamespace(token_ids=[5], finish_reason="abort", stop_reason=None)])]
    with pytest.raises(SrlmError, match="request 'a' ended with finish_reason 'abort'"):
        backend.generate([_chat("a", "hi", Sampling(n=1))])


def test_a_prompt_that_fills_the_context_is_refused_by_name(tokenizer):
    backend, engine = _backend(tokenizer, max_model_len=20)
    assert backend.max_model_len == 20
    with pytest.raises(SrlmError, match="request 'long' has a .*max_model_len=20"):
        backend.generate([_chat("ok", "hi", Sampling()), _chat("long", "hello " * 40, Sampling())])
    assert engine.calls == []  # nothing was submitted


def test_close_shuts_the_engine_down_and_drops_it(tokenizer):
    backend, engine = _backend(tokenizer)
    backend.generate([_chat("c", "hi", Sampling(n=1, max_new_tokens=4))])
    alive = weakref.ref(engine)
    del engine
    backend.close()
    gc.collect()
    assert alive() is None  # no reference to the engine survives close()
    with pytest.raises(SrlmError, match="after close"):
        backend.generate([_chat("c", "hi", Sampling())])
    backend.close()  # a second close is harmless

    # LLM.shutdown() is preferred where the installed vLLM has it
    calls = []
    engine = SimpleNamespace(shutdown=lambda: calls.append("llm"),
                             llm_engine=SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: calls.append("core"))))
    VLLMBackend(engine, tokenizer, sampling_params_class=FakeSamplingParams).close()
    assert calls == ["llm"]
    engine = FakeEngine(tokenizer.eos_token_id, [5])
    VLLMBackend(engine, tokenizer, sampling_params_class=FakeSamplingParams).close()
    assert engine.shutdowns == 1


def test_respond_stage_runs_on_the_backend(tmp_path, tokenizer):
    from srlm.io import iter_jsonl, write_jsonl
    from srlm.stages.respond import run_respond

    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Explain topic {i}."} for i in range(5)])
    backend, _ = _backend(tokenizer)
    cfg = load_config(overrides=["respond.num_samples=3", "respond.max_new_tokens=8"]).respond
    stats = run_respond(tmp_path / "prompts.jsonl", tmp_path / "responses.jsonl", backend, cfg, seed=0,
                        chunk_prompts=2)
    records = list(iter_jsonl(tmp_path / "responses.jsonl"))
    assert stats["responses"] == len(records) == 15
    assert {r["finish_reason"] for r in records} <= {"stop", "length"}
    assert all(r["num_tokens"] <= 8 for r in records)


# -- building the engine ------------------------------------------------------------------------------------------
def test_missing_vllm_says_how_to_install(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, installed or not
    with pytest.raises(SrlmError, match=r"pip install 'srlm\[vllm\]'"):
        VLLMBackend.create(model=str(tiny_model_dir))


@pytest.fixture
def fake_vllm(monkeypatch, tokenizer):
    """A stand-in `vllm` module whose LLM records its keywords, and a torch that reports one bf16 GPU."""
    import torch

    made = []

    class LLM(FakeEngine):
        def __init__(self, **kwargs):
            super().__init__(tokenizer.eos_token_id, [5, 6, 7])
            made.append(kwargs)

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    return made


def test_create_starts_the_engine_with_the_config(fake_vllm, tiny_model_dir):
    backend = VLLMBackend.create(model=str(tiny_model_dir), seed=5, tensor_parallel_size=2,
                                 gpu_memory_utilization=0.5, max_model_len=1024, enforce_eager=True,
                                 max_batch_tokens=999)  # another backend's option: ignored
    [kwargs] = fake_vllm
    assert kwargs == dict(model=str(tiny_model_dir), tokenizer=str(tiny_model_dir), dtype="bfloat16", seed=5,
                          trust_remote_code=False, tensor_parallel_size=2, gpu_memory_utilization=0.5,
                          max_model_len=1024, enforce_eager=True, enable_prefix_caching=True)
    assert backend.sampling_params_class is FakeSamplingParams and backend.max_model_len == 1024
    assert backend.tokenizer.eos_token_id in backend.eos_ids
    VLLMBackend.create(model=str(tiny_model_dir), dtype="float16")
    assert fake_vllm[1]["dtype"] == "float16"
    with pytest.raises(SrlmError, match="tensor_parallel_size=4 but only 2 GPU"):
        VLLMBackend.create(model=str(tiny_model_dir), tensor_parallel_size=4)
    for device in ("cpu", "cuda:1"):
        with pytest.raises(SrlmError, match=f"model.device='{device}' is not supported"):
            VLLMBackend.create(model=str(tiny_model_dir), device=device)


def test_no_cuda_is_a_clear_error(fake_vllm, monkeypatch, tiny_model_dir):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SrlmError, match="no CUDA GPU is visible"):
        VLLMBackend.create(model=str(tiny_model_dir))
    assert fake_vllm == []  # no engine was attempted


# -- config and wiring --------------------------------------------------------------------------------------------
def test_config_keys():
    cfg = load_config(overrides=["backend.name=vllm"])
    b = cfg.backend
    assert (b.name, b.tensor_parallel_size, b.gpu_memory_utilization, b.max_model_len, b.enforce_eager) == (
        "vllm", 1, 0.85, None, False)
    assert b.data_parallel_size == 1
    assert load_config(overrides=["backend.data_parallel_size=4"]).backend.data_parallel_size == 4
    b = load_config(overrides=["backend.tensor_parallel_size=8", "backend.gpu_memory_utilization=1",
                               "backend.max_model_len=4096", "backend.enforce_eager=true"]).backend
    assert (b.tensor_parallel_size, b.gpu_memory_utilization, b.max_model_len, b.enforce_eager) == (8, 1.0, 4096, True)
    for bad in ("backend.tensor_parallel_size=0", "backend.gpu_memory_utilization=0",
                "backend.gpu_memory_utilization=1.2", "backend.max_model_len=0", "backend.max_model_len=long",
                "backend.name=vllm2", "backend.data_parallel_size=0"):
        with pytest.raises(ConfigError, match=f"config key '{bad.split('=')[0]}'"):
            load_config(overrides=[bad])


def test_backend_for_passes_the_vllm_options(monkeypatch, tmp_path, tiny_model_dir):
    import srlm.models

    seen = {}

    def create(cls, loaded_model=None, **options):
        seen.update(options, loaded_model=loaded_model)
        return "the backend"

    monkeypatch.setattr(VLLMBackend, "create", classmethod(create))
    monkeypatch.setattr(srlm.models, "load_model", lambda *a, **k: pytest.fail("vllm loads the model itself"))
    cfg = load_config(recipe="quickstart", overrides=[
        "backend.name=vllm", "seed=11", "backend.tensor_parallel_size=2", "backend.gpu_memory_utilization=0.6",
        "backend.max_model_len=2048", "backend.enforce_eager=true", "model.dtype=float16",
        "model.trust_remote_code=true", "backend.data_parallel_size=3"])
    assert backend_for(cfg, str(tiny_model_dir)) == "the backend"
    assert seen == dict(model=str(tiny_model_dir), chat_template=None, trust_remote_code=True, dtype="float16",
                        device="auto", seed=11, tensor_parallel_size=2, gpu_memory_utilization=0.6,
                        max_model_len=2048, enforce_eager=True, data_parallel_size=3, loaded_model=None)
    with pytest.raises(SrlmError, match="no config.json"):  # the path is resolved (and checked) before vLLM
        backend_for(cfg, str(tmp_path))


# -- data parallelism: one engine per rank, each in its own process -------------------------------------------------
class InProcessRank:
    """A rank without a process: the rank's own code (RankEngine, rank_reply) on the stand-in vllm, here."""

    def __init__(self, rank, environment, engine_kwargs):
        from srlm.backends.vllm_ranks import RankEngine

        self.rank, self.environment, self.closed = rank, environment, False
        try:
            self.engine = RankEngine(engine_kwargs)
            self.replies = [("ready", self.engine.max_model_len)]
        except Exception as exc:
            self.engine, self.replies = None, [("error", f"{type(exc).__name__}: {exc}")]

    def send(self, message):
        from srlm.backends.vllm_ranks import rank_reply

        self.replies.append(rank_reply(self.engine, message)[0])

    def recv(self, timeout=None):
        return self.replies.pop(0)

    def close(self):
        if self.engine is not None and not self.closed:
            self.send(("close",))
        self.closed = True


@pytest.fixture
def in_process_ranks(monkeypatch):
    import srlm.backends.vllm_ranks as module

    started = []

    def start(rank, environment, engine_kwargs):
        started.append(InProcessRank(rank, environment, engine_kwargs))
        return started[-1]

    monkeypatch.setattr(module, "_start_rank", start)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return started


def _requests():
    sampled = Sampling(n=3, temperature=0.7, top_p=0.9, max_new_tokens=12)
    return [_chat(f"dp{i}", "hello " * (i + 1), sampled, seed=3) for i in range(7)] + [
        _chat("greedy", "hi", Sampling(n=2, temperature=0.0, max_new_tokens=5))]


def test_data_parallel_ranks_get_the_engine_arguments_and_their_own_gpus(fake_vllm, in_process_ranks, tiny_model_dir):
    single = VLLMBackend.create(model=str(tiny_model_dir), seed=5)
    [single_kwargs] = fake_vllm
    assert "data_parallel_size" not in single_kwargs  # one engine: vllm.LLM exactly as before
    expected = single.generate(_requests())
    assert in_process_ranks == []  # data_parallel_size=1 starts no rank

    backend = VLLMBackend.create(model=str(tiny_model_dir), seed=5, data_parallel_size=2)
    # two engines, each a plain vllm.LLM with the same arguments: vLLM refuses LLM(data_parallel_size=2) in one
    # process, so the count reaches vLLM as two engines, on GPU 0 and GPU 1, outside vLLM's own DP group
    assert fake_vllm[1:] == [single_kwargs, single_kwargs]
    assert [r.environment["CUDA_VISIBLE_DEVICES"] for r in in_process_ranks] == ["0", "1"]
    for rank in in_process_ranks:
        assert all(rank.environment[v] is None for v in ("VLLM_DP_RANK", "VLLM_DP_SIZE", "VLLM_DP_MASTER_IP"))
    assert backend.max_model_len == 2048 and backend.engine.model_config.max_model_len == 2048
    # requests dealt out in turn, outputs back in request order: the same completions as one engine's
    assert backend.generate(_requests()) == expected
    [(rank0_prompts, rank0_params, _)] = in_process_ranks[0].engine.llm.calls
    [(rank1_prompts, _, _)] = in_process_ranks[1].engine.llm.calls
    assert (len(rank0_prompts), len(rank1_prompts)) == (4, 4)
    assert rank0_params[0].kwargs == dict(n=3, temperature=0.7, top_p=0.9, max_tokens=12,
                                          seed=stable_seed("dp0", 3), skip_special_tokens=True)
    assert backend.stats.sequences == single.stats.sequences and backend.stats.new_tokens == single.stats.new_tokens
    # a single request goes to one rank only
    backend.generate([_requests()[0]])
    assert [len(r.engine.llm.calls) for r in in_process_ranks] == [2, 1]
    engines = [r.engine.llm for r in in_process_ranks]
    backend.close()
    assert all(r.closed and r.engine.llm is None for r in in_process_ranks)
    assert [e.shutdowns for e in engines] == [1, 1]


def test_data_parallel_with_tensor_parallel_needs_every_gpu(fake_vllm, in_process_ranks, monkeypatch, tiny_model_dir):
    import torch

    with pytest.raises(SrlmError, match=r"data_parallel_size=2 x backend.tensor_parallel_size=2 needs 4 GPUs .*"
                                        r"only 2 are visible"):
        VLLMBackend.create(model=str(tiny_model_dir), tensor_parallel_size=2, data_parallel_size=2)
    with pytest.raises(SrlmError, match=r"data_parallel_size=3 x backend.tensor_parallel_size=1 needs 3 GPUs"):
        VLLMBackend.create(model=str(tiny_model_dir), data_parallel_size=3)
    with pytest.raises(SrlmError, match=r"data_parallel_size=0: must be 1 or more"):
        VLLMBackend.create(model=str(tiny_model_dir), data_parallel_size=0)
    assert fake_vllm == [] and in_process_ranks == []  # refused before any engine

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    backend = VLLMBackend.create(model=str(tiny_model_dir), tensor_parallel_size=2, data_parallel_size=2)
    assert [r.environment["CUDA_VISIBLE_DEVICES"] for r in in_process_ranks] == ["0,1", "2,3"]
    assert [kwargs["tensor_parallel_size"] for kwargs in fake_vllm] == [2, 2]
    backend.close()
    # the GPUs this process was given, in order, by whatever names CUDA_VISIBLE_DEVICES uses
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    VLLMBackend.create(model=str(tiny_model_dir), tensor_parallel_size=1, data_parallel_size=3).close()
    assert [r.environment["CUDA_VISIBLE_DEVICES"] for r in in_process_ranks[2:]] == ["4", "5", "6"]


def test_a_rank_that_cannot_start_closes_the_others(fake_vllm, in_process_ranks, monkeypatch, tiny_model_dir):
    vllm = sys.modules["vllm"]
    working = vllm.LLM

    class Failing(working):
        def __init__(self, **kwargs):
            if len(fake_vllm) == 1:  # the second rank
                raise ValueError("not enough memory for the KV cache\nmore detail")
            super().__init__(**kwargs)

    monkeypatch.setattr(vllm, "LLM", Failing)
    with pytest.raises(SrlmError, match=r"cannot start the engine on .*: data-parallel rank 1 \(GPUs 1\): "
                                        r"ValueError: not enough memory for the KV cache"):
        VLLMBackend.create(model=str(tiny_model_dir), data_parallel_size=2)
    assert in_process_ranks[0].closed and in_process_ranks[0].engine.llm is None


def test_a_rank_error_while_generating_is_reported_by_rank(fake_vllm, in_process_ranks, tokenizer, tiny_model_dir):
    backend = VLLMBackend.create(model=str(tiny_model_dir), data_parallel_size=2)

    def broken(prompts, sampling_params=None, *, use_tqdm=True):
        raise RuntimeError("CUDA error: an illegal memory access")

    in_process_ranks[1].engine.llm.generate = broken
    with pytest.raises(SrlmError, match=r"generation failed on data-parallel rank 1: RuntimeError: CUDA error"):
        backend.generate(_requests())
    assert len(in_process_ranks[0].engine.llm.calls) == 1  # the other rank's answer was still read
    backend.close()


STAND_IN_VLLM = """
import json, os

class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

class LLM:
    def __init__(self, **kwargs):
        self.log = os.path.join(os.path.dirname(__file__), f"rank-{os.getpid()}.json")
        env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "VLLM_DP_RANK", "VLLM_DP_SIZE")}
        with open(self.log, "w") as f:
            json.dump({"kwargs": kwargs, "env": env, "prompts": 0}, f)

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        with open(self.log) as f:
            log = json.load(f)
        log["prompts"] += len(prompts)
        with open(self.log, "w") as f:
            json.dump(log, f)
        class Out:  # the first two prompt tokens, as if generated, then stopped by length
            def __init__(self, ids, n):
                self.outputs = [type("S", (), {"token_ids": ids[:2], "finish_reason": "length",
                                               "stop_reason": None})() for _ in range(n)]
                self.num_cached_tokens = 1
        return [Out(p["prompt_token_ids"], s.n) for p, s in zip(prompts, sampling_params)]

    def shutdown(self):
        with open(self.log) as f:
            log = json.load(f)
        log["shutdown"] = True
        with open(self.log, "w") as f:
            json.dump(log, f)
"""


def test_data_parallel_ranks_run_in_their_own_processes(fake_vllm, monkeypatch, tmp_path, tokenizer, tiny_model_dir):
    """The real plumbing: spawned processes, the pipe, the environment, shutdown; vllm there is a stand-in package
    (the spawned interpreters get this process's sys.path)."""
    import json

    package = tmp_path / "stand_in" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(STAND_IN_VLLM)
    monkeypatch.syspath_prepend(str(tmp_path / "stand_in"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("VLLM_DP_RANK", "7")  # must not reach the ranks
    backend = VLLMBackend.create(model=str(tiny_model_dir), seed=2, data_parallel_size=2)
    assert os.environ["VLLM_DP_RANK"] == "7" and "CUDA_VISIBLE_DEVICES" not in os.environ  # restored here
    requests = _requests()
    outputs = backend.generate(requests)
    for request, completions in zip(requests, outputs):
        ids = backend._prompt_ids(request)[:2]
        assert completions == [completions[0]] * request.sampling.n
        assert completions[0].text == tokenizer.decode(ids, skip_special_tokens=True).strip()
        assert completions[0].finish_reason == "length" and completions[0].num_tokens == 2
    processes = [rank.process for rank in backend.engine.ranks]
    backend.close()
    assert [p.exitcode for p in processes] == [0, 0]
    logs = sorted((json.loads(p.read_text()) for p in package.glob("rank-*.json")),
                  key=lambda log: log["env"]["CUDA_VISIBLE_DEVICES"])
    assert [log["env"] for log in logs] == [{"CUDA_VISIBLE_DEVICES": "0", "VLLM_DP_RANK": None, "VLLM_DP_SIZE": None},
                                            {"CUDA_VISIBLE_DEVICES": "1", "VLLM_DP_RANK": None, "VLLM_DP_SIZE": None}]
    assert [log["prompts"] for log in logs] == [4, 4] and all(log["shutdown"] for log in logs)
    assert all("data_parallel_size" not in log["kwargs"] and log["kwargs"]["seed"] == 2 for log in logs)


# -- the real thing -------------------------------------------------------------------------------------------
def _gpu_skip_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'srlm[vllm]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU: vLLM runs on GPUs only"
    return None


@pytest.mark.skipif(_gpu_skip_reason() is not None, reason=_gpu_skip_reason() or "")
def test_end_to_end_on_a_gpu(tmp_path, tiny_model_dir, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    # The tiny Llama's 16-wide attention heads are below what vLLM's GPU attention kernels take; this one has the
    # same tokenizer and 64-wide heads.
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True)
    model_dir = tmp_path / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)

    free_before, _ = torch.cuda.mem_get_info()
    cfg = load_config(overrides=["backend.name=vllm", "backend.gpu_memory_utilization=0.3", "backend.max_model_len=512",
                                 "backend.enforce_eager=true"])
    backend = backend_for(cfg, str(model_dir))
    assert isinstance(backend, VLLMBackend)
    sampling = Sampling(n=4, temperature=0.7, top_p=0.9, max_new_tokens=12)
    requests = [_chat(f"e{i}", RUBRIC + f"question {i}", sampling) for i in range(8)]
    requests.append(GenerationRequest("g", Sampling(n=2, temperature=0.0, max_new_tokens=12), 0, text="1. explain"))
    done = []
    first = backend.generate(requests, on_done=done.append)
    assert sum(done) == len(requests)
    assert [len(o) for o in first] == [4] * 8 + [2]
    assert all(c.finish_reason in ("stop", "length") and c.num_tokens <= 12 for o in first for c in o)
    assert first[-1][0] == first[-1][1]
    assert backend.stats.extra["cached_prompt_tokens"] > 0  # the shared rubric came from the prefix cache
    assert [[c.text for c in o] for o in backend.generate(requests)] == [[c.text for c in o] for o in first]
    backend.close()
    free_after, _ = torch.cuda.mem_get_info()
    # vLLM reserved 30% of the GPU; what close() leaves behind is this process's CUDA context and small buffers
    assert free_after > free_before - 2 * 2**30, (free_before, free_after)
