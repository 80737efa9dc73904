import shutil

import pytest

from srlm.errors import SrlmError
from srlm.models import load_model, load_tokenizer, resolve_model_path


def test_local_model_loads_with_its_chat_template(tiny_model_dir):
    lm = load_model(str(tiny_model_dir))
    assert lm.device == "cpu" and str(lm.model.dtype) == "torch.float32"
    assert lm.tokenizer.chat_template


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "does not exist or is not a directory"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "not a model directory \\(no config.json\\)"),
    ],
)
def test_paths_that_are_not_models(tmp_path, make, message):
    with pytest.raises(SrlmError, match=message):
        resolve_model_path(str(make(tmp_path)))


def test_pickle_weights_are_refused(tiny_model_dir, tmp_path):
    copy = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "model.safetensors").rename(copy / "pytorch_model.bin")
    with pytest.raises(SrlmError, match="no safetensors weights.*pickle weights \\['pytorch_model.bin'\\]"):
        load_model(str(copy))


def test_a_tokenizer_without_chat_template_needs_one(tiny_model_dir, tmp_path):
    copy = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    import json

    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(SrlmError, match="has no chat template; set model.chat_template"):
        load_tokenizer(str(copy))
    tok = load_tokenizer(str(copy), chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi"


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_a_hub_model_is_snapshotted_without_pickle_weights_or_code_it_may_not_run(monkeypatch, tmp_path,
                                                                                 trust_remote_code):
    """loop.m1=base / loop.eval_base need the base model as a folder: a hub id becomes its downloaded snapshot,
    safetensors and tokenizer files only, and modelling code only with model.trust_remote_code."""
    import huggingface_hub

    import srlm.hub
    from srlm.models import local_model_dir

    calls = []

    def snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(tmp_path)

    # As if online with the Hub reachable (the tests run with HF_HUB_OFFLINE=1): the id itself is kept
    monkeypatch.setattr(srlm.hub, "offline", lambda: False)
    monkeypatch.setattr(srlm.hub, "unreachable_reason", lambda: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert local_model_dir("org/some-model", trust_remote_code=trust_remote_code) == str(tmp_path)
    [(repo_id, patterns)] = calls
    assert repo_id == "org/some-model"
    assert {"*.safetensors", "*.json", "*.jinja", "*.model", "*.tiktoken"} <= set(patterns)
    assert not any(p.endswith((".bin", ".pt", ".pth", ".ckpt")) for p in patterns)
    assert ("*.py" in patterns) == trust_remote_code


def test_a_local_model_folder_is_used_where_it_is(tiny_model_dir, monkeypatch):
    import huggingface_hub

    from srlm.models import local_model_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("no download for a folder"))
    assert local_model_dir(str(tiny_model_dir)) == str(tiny_model_dir)
