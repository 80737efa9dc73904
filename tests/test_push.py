"""`srlm push`: a run's model and its card to the Hub through huggingface_hub, refused at once when it cannot work."""

from __future__ import annotations

import shutil
import time

import pytest

from srlm.errors import SrlmError


@pytest.fixture
def run_dir(tiny_model_dir, tmp_path):
    model = tmp_path / "run" / "models" / "m2"
    shutil.copytree(tiny_model_dir, model)
    (model / "README.md").write_text("---\nbase_model: tiny\nlibrary_name: transformers\n---\n# m2\n")
    (model / ".m2.trainer").mkdir()
    return tmp_path / "run"


def test_offline_push_fails_at_once_with_a_clear_message(run_dir, capsys):
    from srlm.cli import main

    start = time.perf_counter()
    assert main(["push", str(run_dir), "--model", "m2", "--repo-id", "me/m2"]) == 2  # conftest: HF_HUB_OFFLINE=1
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert time.perf_counter() - start < 30  # no minute of retries (a bound on a failure path, not a speed claim)


def test_push_refuses_a_missing_model_or_card(run_dir, capsys):
    from srlm.cli import main

    assert main(["push", str(run_dir), "--model", "m9", "--repo-id", "me/m9"]) == 2
    assert "models there: m2" in capsys.readouterr().err
    (run_dir / "models" / "m2" / "README.md").unlink()
    assert main(["push", str(run_dir), "--model", "m2", "--repo-id", "me/m2"]) == 2
    assert "no model card" in capsys.readouterr().err


def test_push_uploads_the_folder_with_its_card(run_dir, monkeypatch, capsys):
    import huggingface_hub

    from srlm import hub
    from srlm.cli import main

    calls = {}

    class StandInApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["create"] = (repo_id, kwargs)

        def upload_folder(self, **kwargs):
            calls["upload"] = kwargs
            return "https://huggingface.co/me/m2/commit/abc"

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "unreachable_reason", lambda timeout=5.0: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", StandInApi)
    assert main(["push", str(run_dir), "--model", "m2", "--repo-id", "me/m2", "--private"]) == 0
    assert calls["create"] == ("me/m2", {"private": True, "exist_ok": True, "repo_type": "model"})
    upload = calls["upload"]
    assert upload["folder_path"] == str(run_dir / "models" / "m2") and upload["repo_id"] == "me/m2"
    assert ".*" in upload["ignore_patterns"]  # trainer leftovers and other hidden files stay home
    assert "commit/abc" in capsys.readouterr().out


def test_push_refuses_an_unreachable_hub(run_dir, monkeypatch):
    from srlm import hub

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "unreachable_reason", lambda timeout=5.0: "cannot resolve huggingface.co")
    with pytest.raises(SrlmError, match="not reachable: cannot resolve"):
        hub.push_model(run_dir / "models" / "m2", "me/m2")
