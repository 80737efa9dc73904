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
    "fake": "srlm.backends.fake:FakeBackend",
}


def make_backend(name: str, loaded_model=None, **options) -> Backend:
    """Build the backend `name`. `loaded_model` is a `srlm.models.LoadedModel` for backends that run one in-process."""
    import importlib

    if name not in BACKENDS:
        raise SrlmError(f"unknown backend '{name}'; available: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name).create(loaded_model, **options)


__all__ = ["Backend", "Completion", "GenerationRequest", "Sampling", "make_backend", "BACKENDS"]
