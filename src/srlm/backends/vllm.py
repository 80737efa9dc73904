"""Generation with vLLM's offline engine (`vllm.LLM`) in this process: paged KV cache, continuous batching, and
prefix caching for the judge rubric that every judge prompt starts with.

    pip install 'srlm[vllm]'
    srlm run ... backend.name=vllm backend.gpu_memory_utilization=0.85 backend.tensor_parallel_size=1

How requests become vLLM requests:
- Prompts are rendered HERE, with the same tokenizer and chat template as the `hf` backend (`load_tokenizer`, so
  `model.chat_template` applies; `apply_chat_template(..., add_generation_prompt=True)`, then tokenized without
  adding special tokens again), and handed to `LLM.generate` as token ids. A prompt is therefore token for token
  the one the `hf` backend prefills, whatever chat template handling the installed vLLM version has. Raw `text`
  requests (the Self-Instruct few-shot prompts) get no template: they are tokenized as the `hf` backend tokenizes
  them.
- All requests of one `generate` call are submitted at once and vLLM schedules them. Each request carries its own
  `SamplingParams` (n, temperature, top-p, max_tokens = max_new_tokens) and its own seed, derived from its
  request id and seed as in the `hf` backend; vLLM seeds sample k of a request with seed + k. The random draws of a
  record therefore do not depend on which other requests share the call. vLLM does not promise bit-identical
  logits across batch shapes, so a rare token can still differ between a resumed and an uninterrupted run.
- At temperature 0 every sample is the same greedy sequence: one is generated and copied n times, as the `hf`
  backend's greedy samples are identical too.
- Completions are decoded from their token ids by our tokenizer (`skip_special_tokens=True`, stripped), as in
  the `hf` backend, and their token counts leave out the EOS/stop token, so `num_tokens` means the same in both.
  vLLM's finish reason "stop" (EOS or a stop token) and "length" (max_new_tokens or max_model_len reached) map
  one to one; anything else (an aborted request) is an error.

GPU memory. vLLM reserves `gpu_memory_utilization` of each GPU when the engine starts (weights, activations,
CUDA graphs, and all the rest as KV cache), and keeps it until `close()`. The loop creates one backend per model
path and closes it before SFT/DPO, so generation and training never hold the GPU at the same time; nothing in this
module keeps an engine beyond its backend object. `close()`:
1. shuts the engine down (`LLM.shutdown()` where the installed vLLM has it, else `llm_engine.engine_core.shutdown()`).
   With vLLM's default V1 multiprocessing the weights and KV cache live in the EngineCore child process (and, with
   tensor parallelism, in one worker process per GPU): ending those processes is what frees them;
2. drops every reference to the engine and calls vLLM's `destroy_model_parallel()` and
   `destroy_distributed_environment()` (for the in-process engine, `VLLM_ENABLE_V1_MULTIPROCESSING=0`, and older
   engines), unless a process group existed before the engine was created, which is then left alone;
3. runs `gc.collect()` and `torch.cuda.empty_cache()`.
Known to stay behind: this process's own CUDA context (a few hundred MB, reused by training); with the in-process
engine, memory that vLLM's module-level state or compiled CUDA graphs still reference (reported in vLLM issues
#16543 and #18806). Keep the default multiprocessing engine when generation and training alternate.

Data parallelism (`backend.data_parallel_size` = D > 1): D independent engines, each in its own process on its
own `tensor_parallel_size` GPUs (D x tensor_parallel_size GPUs in all). vLLM's offline class does not do this
itself: `vllm.LLM(data_parallel_size=D)` in one process raises "LLM(data_parallel_size=D) is not supported for
single-process usage and may hang" (vLLM >= 0.11.1, PR #27282; before that it could hang, issue #27269), and its
offline data-parallel example (examples/offline_inference/data_parallel.py, now
examples/features/data_parallel/data_parallel_offline.py) starts one process per rank, each with its own
`vllm.LLM` and its own share of the prompts. For a dense model the ranks of vLLM's DP group are independent engines
anyway (vLLM resets a dense worker's data_parallel_rank to 0); the group's coordination (VLLM_DP_RANK,
VLLM_DP_MASTER_IP, ...) only matters for MoE expert parallelism, which this backend does not set up. So, as
lm-evaluation-harness's own vLLM data parallelism does, each rank here is a plain `vllm.LLM` (the same arguments,
no data_parallel_size) in a process spawned with CUDA_VISIBLE_DEVICES set to its GPU group (the visible GPUs taken
tensor_parallel_size at a time, in order) and no VLLM_DP_* variables. Each `generate` call deals its requests out
to the ranks in turn (request i to rank i mod D, which spreads long and short prompts evenly), sends all shares at
once, and puts the outputs back in request order. Every request carries its own seed, so a record's random draws do
not depend on which rank served it. Prompts are still rendered and outputs decoded here, in this process, by the
same tokenizer; ranks exchange token ids and plain values with it over a pipe. `close()` asks every rank to shut
its engine down and waits for its process to exit, which is what returns that rank's GPU memory.
"""

from __future__ import annotations

import gc
import sys
import time

from srlm.backends.base import Completion, GenerationRequest, GenerationStats, prompt_token_ids
from srlm.errors import SrlmError
from srlm.io import stable_seed

INSTALL_HINT = "pip install 'srlm[vllm]'"
_FINISH_REASONS = {"stop": "stop", "length": "length"}


def _import_vllm():
    """The `vllm` module, or an SrlmError saying how to install it (imported only when this backend is asked for)."""
    try:
        import vllm
    except ImportError as exc:
        raise SrlmError(f"backend.name=vllm needs the vllm package ({exc}); install it with: {INSTALL_HINT} "
                        "(it needs a CUDA GPU; on a CPU use backend.name=hf)") from None
    return vllm


def _vllm_dtype(dtype: str) -> str:
    """srlm's `model.dtype` as vLLM's `dtype`. 'auto' means bf16 where the GPU has it, else fp16: vLLM's own 'auto'
    follows the checkpoint's dtype and would run a float32 checkpoint (the embedded model's) in float32."""
    if dtype != "auto":
        return dtype
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def _engine_max_model_len(engine) -> int | None:
    """The context length the engine settled on (from `max_model_len` or the model's config), where it says."""
    for owner in (engine, getattr(engine, "llm_engine", None)):
        value = getattr(getattr(owner, "model_config", None), "max_model_len", None)
        if isinstance(value, int):
            return value
    return None


def _eos_ids(tokenizer, model_path: str | None) -> set[int]:
    """Token ids that end a sequence: the tokenizer's EOS plus the model's generation config ones, the set vLLM
    stops on. Used to leave the final stop token out of a completion's token count."""
    ids = {tokenizer.eos_token_id}
    if model_path:
        try:
            from transformers import GenerationConfig

            config_eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        except (OSError, ValueError):  # no generation_config.json: the tokenizer's EOS is all vLLM stops on
            config_eos = None
        ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
    return {i for i in ids if i is not None}


class VLLMBackend:
    name = "vllm"

    def __init__(self, engine, tokenizer, *, sampling_params_class, eos_ids: set[int] | None = None,
                 max_model_len: int | None = None, owns_distributed: bool = True):
        """`engine` is a `vllm.LLM` (or anything with its `generate(prompts, sampling_params=, use_tqdm=)`),
        `sampling_params_class` is `vllm.SamplingParams` (or a stand-in taking the same keywords). `create` builds
        both from config; tests pass stand-ins here."""
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampling_params_class = sampling_params_class
        self.eos_ids = set(eos_ids) if eos_ids is not None else _eos_ids(tokenizer, None)
        self.max_model_len = max_model_len or _engine_max_model_len(engine)
        # False when a torch.distributed process group existed before the engine: close() must not destroy it.
        self.owns_distributed = owns_distributed
        self.stats = GenerationStats(extra={"requests": 0, "cached_prompt_tokens": 0, "greedy_copies": 0})

    @classmethod
    def from_config(cls, model_path: str, backend, model, *, seed: int) -> "VLLMBackend":
        """An engine of its own on `model_path` resolved to a local path or hub id: a new one for each model, so
        each iteration's model is loaded fresh."""
        from srlm.models import resolve_model_path

        return cls.create(model=resolve_model_path(model_path), chat_template=model.chat_template,
                          trust_remote_code=model.trust_remote_code, dtype=model.dtype, device=model.device, seed=seed,
                          tensor_parallel_size=backend.tensor_parallel_size,
                          gpu_memory_utilization=backend.gpu_memory_utilization, max_model_len=backend.max_model_len,
                          enforce_eager=backend.enforce_eager, data_parallel_size=backend.data_parallel_size)

    @classmethod
    def create(
        cls,
        loaded_model=None,
        *,
        model: str | None = None,
        chat_template: str | None = None,
        trust_remote_code: bool = False,
        dtype: str = "auto",
        device: str = "auto",
        seed: int = 0,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        data_parallel_size: int = 1,
        **_options,
    ) -> "VLLMBackend":
        """Start a vLLM engine on `model` (a local directory or hub id, as `resolve_model_path` gives it), or
        `data_parallel_size` engines in their own processes (see the module docstring).
        `loaded_model` is ignored: vLLM loads the weights itself. Options of other backends are ignored."""
        if not model:
            raise SrlmError("vllm backend: no model path given")
        if device.startswith("cpu") or (device.startswith("cuda:") and device != "cuda:0"):
            raise SrlmError(f"vllm backend: model.device={device!r} is not supported; vLLM runs on the GPUs that "
                            "CUDA_VISIBLE_DEVICES shows (use model.device=auto or cuda, and pick GPUs with "
                            "CUDA_VISIBLE_DEVICES); on a CPU use backend.name=hf")
        vllm = _import_vllm()
        import torch

        if not torch.cuda.is_available():
            raise SrlmError("vllm backend: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                            "vLLM needs one. Check CUDA_VISIBLE_DEVICES and the installed torch build, or use "
                            "backend.name=hf")
        if data_parallel_size < 1:
            raise SrlmError(f"vllm backend: backend.data_parallel_size={data_parallel_size}: must be 1 or more")
        if tensor_parallel_size > torch.cuda.device_count():
            raise SrlmError(f"vllm backend: backend.tensor_parallel_size={tensor_parallel_size} but only "
                            f"{torch.cuda.device_count()} GPU(s) are visible")
        if data_parallel_size * tensor_parallel_size > torch.cuda.device_count():
            raise SrlmError(f"vllm backend: backend.data_parallel_size={data_parallel_size} x "
                            f"backend.tensor_parallel_size={tensor_parallel_size} needs "
                            f"{data_parallel_size * tensor_parallel_size} GPUs (one group of tensor_parallel_size per "
                            f"engine), but only {torch.cuda.device_count()} are visible")
        from srlm.models import load_tokenizer

        tokenizer = load_tokenizer(model, chat_template, trust_remote_code)
        distributed_before = torch.distributed.is_available() and torch.distributed.is_initialized()
        engine_kwargs = dict(
            model=model,
            tokenizer=model,
            dtype=_vllm_dtype(dtype),
            seed=seed,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            enable_prefix_caching=True,  # the judge rubric and each prompt's N samples share long prefixes
        )
        if data_parallel_size > 1:
            from srlm.backends.vllm_ranks import DataParallelEngine, SamplingKwargs

            engine = DataParallelEngine.start(engine_kwargs, data_parallel_size=data_parallel_size,
                                              tensor_parallel_size=tensor_parallel_size)
            return cls(engine, tokenizer, sampling_params_class=SamplingKwargs, eos_ids=_eos_ids(tokenizer, model),
                       max_model_len=max_model_len, owns_distributed=not distributed_before)
        try:
            engine = vllm.LLM(**engine_kwargs)
        except (ValueError, RuntimeError) as exc:  # vLLM reports a bad config or too little memory this way
            raise SrlmError(f"vllm backend: cannot start the engine on {model}: {_first_line(exc)} (see "
                            "backend.max_model_len, backend.gpu_memory_utilization, backend.tensor_parallel_size)"
                            ) from exc
        return cls(engine, tokenizer, sampling_params_class=vllm.SamplingParams, eos_ids=_eos_ids(tokenizer, model),
                   max_model_len=max_model_len, owns_distributed=not distributed_before)

    # -- tokenization: exactly the hf backend's ------------------------------------------------------------------
    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        return prompt_token_ids(self.tokenizer, request)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self._prompt_ids(request))

    # -- generation ---------------------------------------------------------------------------------------------
    def _sampling_params(self, request: GenerationRequest, n: int):
        s = request.sampling
        return self.sampling_params_class(
            n=n,
            temperature=s.temperature,
            top_p=1.0 if s.greedy else s.top_p,
            max_tokens=s.max_new_tokens,
            seed=stable_seed(request.request_id, request.seed),
            skip_special_tokens=True,
        )

    def _completion(self, output, request: GenerationRequest) -> Completion:
        reason = _FINISH_REASONS.get(output.finish_reason)
        if reason is None:
            raise SrlmError(f"vllm backend: request '{request.request_id}' ended with finish_reason "
                            f"{output.finish_reason!r} (expected 'stop' or 'length')")
        tokens = list(output.token_ids)
        # vLLM keeps the EOS / stop token it stopped on in token_ids; the hf backend's counts leave it out.
        stop_reason = getattr(output, "stop_reason", None)
        if reason == "stop" and tokens and (tokens[-1] in self.eos_ids or tokens[-1] == stop_reason):
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(text.strip(), len(tokens), reason)

    def generate(self, requests, on_done=None):
        if self.engine is None:
            raise SrlmError("vllm backend: generate() after close()")
        start = time.perf_counter()
        prompts, params, prompt_lengths = [], [], []
        for request in requests:
            ids = self._prompt_ids(request)
            if self.max_model_len is not None and len(ids) >= self.max_model_len:
                raise SrlmError(f"vllm backend: request '{request.request_id}' has a {len(ids)}-token prompt, which "
                                f"leaves no room to generate within max_model_len={self.max_model_len}; raise "
                                "backend.max_model_len or lower the stage's max_prompt_tokens")
            prompts.append({"prompt_token_ids": ids})  # vLLM's TokensPrompt
            params.append(self._sampling_params(request, 1 if request.sampling.greedy else request.sampling.n))
            prompt_lengths.append(len(ids))
        if not requests:
            return []
        outputs = self.engine.generate(prompts, sampling_params=params, use_tqdm=False)
        if len(outputs) != len(requests):
            raise SrlmError(f"vllm backend: {len(requests)} requests gave {len(outputs)} outputs")
        results = []
        for request, output, length, param in zip(requests, outputs, prompt_lengths, params):
            asked = param.n
            if len(output.outputs) != asked:
                raise SrlmError(f"vllm backend: request '{request.request_id}' asked for {asked} samples and got "
                                f"{len(output.outputs)}")
            completions = [self._completion(o, request) for o in output.outputs]
            self.stats.new_tokens += sum(c.num_tokens for c in completions)
            if asked < request.sampling.n:  # greedy: the same sequence for every sample
                self.stats.extra["greedy_copies"] += request.sampling.n - asked
                completions = completions * request.sampling.n
            results.append(completions)
            self.stats.sequences += request.sampling.n
            self.stats.prompt_tokens += length * request.sampling.n
            cached = getattr(output, "num_cached_tokens", None)
            if isinstance(cached, int):
                self.stats.extra["cached_prompt_tokens"] += cached
        self.stats.extra["requests"] += len(requests)
        self.stats.seconds += time.perf_counter() - start
        if on_done:
            on_done(len(requests))
        return results

    # -- freeing the GPU ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the engine's GPU memory before training; see the module docstring for what stays behind."""
        engine, self.engine = self.engine, None
        if engine is None:
            return
        try:
            _shutdown(engine)
        finally:
            del engine
            _release_memory(self.owns_distributed)


def _shutdown(engine) -> None:
    """Stop the engine's background processes (V1 EngineCore, tensor-parallel workers), which hold the GPU memory."""
    shutdown = getattr(engine, "shutdown", None)
    if not callable(shutdown):
        core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):
        try:
            shutdown()
        except Exception as exc:  # the rest of close() still runs; training then shows whether memory came back
            print(f"srlm: warning: vLLM engine shutdown failed ({type(exc).__name__}: {exc}); "
                  "GPU memory may not have been freed", file=sys.stderr, flush=True)


def _release_memory(owns_distributed: bool) -> None:
    """vLLM's own teardown of its parallel state, then Python's and torch's caches."""
    if "vllm" in sys.modules and owns_distributed:
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
        except ImportError:  # a vLLM without these functions keeps no such state in this process
            pass
        else:
            destroy_model_parallel()
            destroy_distributed_environment()
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
