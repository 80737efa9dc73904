"""Generation backends behind one small interface, picked by short name from one table.

A backend takes a list of `GenerationRequest`s (chat messages or raw text, sampling settings, a seed) and returns,
for each, its `n` completions. Stages never touch a model's `generate` directly, so a faster backend (vLLM, an
OpenAI-compatible server) plugs in without changing them. Imports are lazy: a missing optional dependency is
reported with the extra to install only when that backend is asked for.
"""

from __future__ import annotations

from srlm.backends.base import Backend, Completion, GenerationRequest, Sampling
from srlm.errors import SrlmError

BACKENDS = {
    "hf": "srlm.backends.hf:HFBackend",
    "vllm": "srlm.backends.vllm:VLLMBackend",
    "openai": "srlm.backends.openai:OpenAIBackend",
    "fake": "srlm.backends.fake:FakeBackend",
}
IN_PROCESS = {"hf"}  # backends that need the model loaded into this process (vllm loads it itself)


def make_backend(name: str, loaded_model=None, **options) -> Backend:
    """Build the backend `name`. `loaded_model` is a `srlm.models.LoadedModel` for backends that run one in-process."""
    return backend_class(name).create(loaded_model, **options)


def backend_class(name: str):
    """The class behind a backend name, imported without building it (no model, no engine, no optional package)."""
    import importlib

    if name not in BACKENDS:
        raise SrlmError(f"unknown backend '{name}'; available: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def backend_for(cfg, model_path: str) -> Backend:
    """The backend a config asks for, serving `model_path` (loaded here for in-process backends).

    For the `openai` backend the server decides which weights answer; `backend.model_name` names them, defaulting
    to `model_path`. The `vllm` backend starts its own engine on the resolved local path or hub id (a new one for each
    `model_path`, so each iteration's model is loaded fresh).
    """
    loaded = None
    b = cfg.backend
    if b.name in IN_PROCESS:
        from srlm.models import load_model

        m = cfg.model
        loaded = load_model(model_path, **m.load_options())
    options = dict(max_batch_tokens=b.max_batch_tokens, max_batch_size=b.max_batch_size)
    if b.name == "openai":
        if not b.base_url:
            raise SrlmError("backend.name=openai needs backend.base_url (e.g. http://127.0.0.1:8000/v1)")
        options = dict(base_url=b.base_url, model=b.model_name or model_path, api_key_env=b.api_key_env,
                       max_concurrency=b.max_concurrency, timeout_seconds=b.timeout_seconds, max_retries=b.max_retries)
    if b.name == "vllm":
        from srlm.models import resolve_model_path

        m = cfg.model
        options = dict(model=resolve_model_path(model_path), chat_template=m.chat_template,
                       trust_remote_code=m.trust_remote_code, dtype=m.dtype, device=m.device, seed=cfg.seed,
                       tensor_parallel_size=b.tensor_parallel_size, gpu_memory_utilization=b.gpu_memory_utilization,
                       max_model_len=b.max_model_len, enforce_eager=b.enforce_eager,
                       data_parallel_size=b.data_parallel_size)
    return make_backend(b.name, loaded, **options)


__all__ = ["Backend", "backend_for", "Completion", "GenerationRequest", "Sampling", "make_backend", "BACKENDS"]
