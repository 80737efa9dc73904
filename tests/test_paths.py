"""What srlm writes stays inside the folder it writes to: names from configs, records and the file system cannot
lead a write elsewhere (srlm.io.safe_child and its users: the run directory, shard files, resumable writers).
Input paths are another matter: a user may read data from anywhere."""

from __future__ import annotations

import json
import os

import pytest

from srlm.backends import make_backend
from srlm.config import JudgeConfig, RespondConfig
from srlm.distributed import shard_path, write_shards
from srlm.io import ResumableJsonlWriter, UnsafePathError, ensure_inside, read_jsonl, safe_child
from srlm.rundir import RunDir


def tree(folder) -> list[str]:
    """Every path under `folder`, relative, sorted: what a test compares before and after."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def places(tmp_path):
    """A base folder to write in and, beside it, an outside folder that must stay empty."""
    base, outside = tmp_path / "run", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    return base, outside


ESCAPES = [
    ("../x", r"'\.\.' parts are not accepted"),
    ("/etc/x", r"an absolute name would leave this folder"),
    ("a/../../x", r"'\.\.' parts are not accepted"),
    ("a/../b", r"'\.\.' parts are not accepted"),  # back inside, but srlm never composes such a name: refused
    ("", r"refusing to write an empty name"),
    ("a\x00b", r"contains a NUL byte"),
]


@pytest.mark.parametrize("name, message", ESCAPES)
def test_names_that_leave_the_folder_are_refused(places, name, message):
    base, outside = places
    with pytest.raises(UnsafePathError, match=message):
        safe_child(base, name)
    assert tree(base) == [] and tree(outside) == []


def test_links_that_lead_outside_are_refused_wherever_they_are(places):
    base, outside = places
    (base / "iter_1").symlink_to(outside, target_is_directory=True)  # a run subfolder pointing outside
    (base / "models").mkdir()
    (base / "models" / "m2").symlink_to(outside / "m2")  # dangling: the target does not exist yet
    (base / "manifest.json").symlink_to(outside / "manifest.json")  # a file name
    for name in ["iter_1", "iter_1/prompts.jsonl", "iter_1/eval/deep/x.json", "models/m2", "models/m2/config.json",
                 "manifest.json"]:
        with pytest.raises(UnsafePathError, match=rf"symbolic link to {outside}.*outside {base}"):
            safe_child(base, name)
    (base / "loop").symlink_to(base / "loop")
    with pytest.raises(UnsafePathError, match="cannot tell where it leads"):
        safe_child(base, "loop/x")
    assert tree(outside) == []


def test_links_inside_and_a_linked_base_are_fine(tmp_path):
    real = tmp_path / "disk" / "run"
    (real / "models" / "m1").mkdir(parents=True)
    (real / "latest").symlink_to(real / "models" / "m1", target_is_directory=True)
    assert safe_child(real, "latest/config.json") == real / "latest" / "config.json"
    assert safe_child(real, "models/m1") == real / "models" / "m1"
    assert safe_child(real, "./models//m3") == real / "models" / "m3"  # '.' and doubled slashes are harmless
    link = tmp_path / "run"
    link.symlink_to(real, target_is_directory=True)  # the run directory itself on another disk: the user's choice
    assert safe_child(link, "iter_1/prompts.jsonl") == link / "iter_1" / "prompts.jsonl"
    assert ensure_inside(link, link / "models" / "m2") == link / "models" / "m2"
    with pytest.raises(UnsafePathError, match="refusing to write outside"):
        ensure_inside(link, tmp_path / "elsewhere.json")


def test_run_directory_refuses_a_subfolder_linked_outside_before_running_anything(places):
    base, outside = places
    rd = RunDir(base)
    assert rd.iter_dir(1) == base / "iter_1" and rd.model_dir(2) == base / "models" / "m2"
    (base / "iter_1").symlink_to(outside, target_is_directory=True)
    (outside / "prompts.jsonl.partial").write_text("{}\n")  # would be deleted as stale by a changed stage
    with pytest.raises(UnsafePathError, match="iter_1"):
        rd.iter_dir(1)
    ran = []
    with pytest.raises(UnsafePathError, match="symbolic link"):
        rd.stage("iter_1/prompts", "fp", [base / "iter_1" / "prompts.jsonl"], lambda: ran.append(1) or {})
    with pytest.raises(UnsafePathError, match=r"'\.\.' parts are not accepted"):
        rd.stage("escape", "fp", [base / ".." / "outside" / "x.json"], lambda: ran.append(1) or {})
    with pytest.raises(UnsafePathError, match="refusing to write outside"):
        rd.stage("escape", "fp", [outside / "x.json"], lambda: ran.append(1) or {})
    assert ran == [] and "iter_1/prompts" not in rd.manifest["stages"]
    assert tree(outside) == ["prompts.jsonl.partial"]

    (base / "models").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="models/m1"):
        rd.model_dir(1)
    (base / "manifest.json").symlink_to(outside / "manifest.json")
    with pytest.raises(UnsafePathError, match="manifest.json"):
        RunDir(base)
    assert tree(outside) == ["prompts.jsonl.partial"]


def test_srlm_run_stops_with_a_clear_error_before_training_into_a_linked_folder(places, capsys):
    from srlm.cli import main

    base, outside = places
    (base / "models").symlink_to(outside, target_is_directory=True)
    assert main(["run", "--recipe", "quickstart", "--run-dir", str(base)]) == 2
    err = capsys.readouterr().err
    assert "srlm: error:" in err and "models/m1" in err and "symbolic link" in err
    assert tree(outside) == []


def test_shard_files_cannot_be_written_through_a_link(places, tmp_path):
    base, outside = places
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(4)))
    paths = write_shards(source, 2, kind="prompts", out_dir=base)
    assert [p.name for p in paths] == ["prompts.shard-00-of-02.jsonl", "prompts.shard-01-of-02.jsonl"]
    for p in paths:
        p.unlink()
    (base / "prompts.shard-01-of-02.jsonl").symlink_to(outside / "stolen.jsonl")
    with pytest.raises(UnsafePathError, match="shard-01-of-02"):
        shard_path(source, 1, 2, base)
    with pytest.raises(UnsafePathError):
        write_shards(source, 2, kind="prompts", out_dir=base)
    assert tree(outside) == []


def test_a_resumable_writer_never_appends_through_a_link(places):
    base, outside = places
    target = outside / "victim.jsonl"
    target.write_text('{"id": "mine"}\n')
    (base / "out.jsonl.partial").symlink_to(target)
    with pytest.raises(UnsafePathError, match="out.jsonl.partial: is a symbolic link"):
        ResumableJsonlWriter(base / "out.jsonl", "id")
    assert target.read_text() == '{"id": "mine"}\n'


@pytest.mark.parametrize("bad_id", ["../../escaped", "/tmp/escaped", "a/../../escaped", "..", "con:x\\..\\y"])
def test_record_ids_never_become_file_names(places, bad_id):
    """respond and judge carry ids inside records only; the files they write are named by the caller."""
    from srlm.stages.judge import run_judge
    from srlm.stages.respond import run_respond

    base, outside = places
    prompts = base / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt_id": bad_id, "prompt": "Name a colour."}) + "\n")
    before = sorted(os.listdir(base.parent))
    run_respond(prompts, base / "responses.jsonl", make_backend("fake"), RespondConfig(num_samples=2), seed=0)
    responses = read_jsonl(base / "responses.jsonl")
    assert {r["prompt_id"] for r in responses} == {bad_id}
    run_judge(base / "responses.jsonl", base / "judgements.jsonl", make_backend("fake"), JudgeConfig(num_samples=1),
              seed=0)
    assert tree(base) == ["judgements.jsonl", "prompts.jsonl", "responses.jsonl"]
    assert sorted(os.listdir(base.parent)) == before and tree(outside) == []
