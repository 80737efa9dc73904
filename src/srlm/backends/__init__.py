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
    """The backend a config asks for (`backend.name`), serving `model_path`: each backend class builds itself from
    the backend and model sections (`from_config`), so what a key means is said in one place per backend."""
    return backend_class(cfg.backend.name).from_config(model_path, cfg.backend, cfg.model, seed=cfg.seed)


__all__ = ["Backend", "backend_for", "Completion", "GenerationRequest", "Sampling", "make_backend", "BACKENDS"]
