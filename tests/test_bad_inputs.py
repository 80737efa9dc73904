"""Bad inputs a new user gives, and files srlm itself writes, replayed against the command line (issue 12).

Every bad input gets exit status 2, a one-line `srlm: error:` naming the path, line or field, no traceback, and
leaves the folder as it was: no output, no `.partial`, no temporary file. Every file a stage writes, with its edge
cases (empty and whitespace-only answers, answers cut at max_new_tokens, non-ASCII and very long answers), is
accepted by the next stage. Everything runs in-process on the scripted `fake` backend; no model is loaded.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from srlm.backends import fake
from srlm.cli import main
from srlm.io import read_jsonl
from srlm.stages.pairs import read_pair_file

FAKE = "backend.name=fake"


def write(path: Path, *records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return str(path)


def response(rid, text="An answer.", pid="q1", prompt="Question?"):
    return {"prompt_id": pid, "response_id": rid, "sample_index": 0, "prompt": prompt, "response": text,
            "num_tokens": 2, "finish_reason": "stop"}


def pair(chosen, rejected, prompt=None):
    return {"prompt": prompt or [{"role": "user", "content": "Q?"}], "chosen": chosen, "rejected": rejected}


def answer(text):
    return [{"role": "assistant", "content": text}]


def tree(folder: Path) -> dict[str, tuple]:
    """Every path under `folder` with its kind and content: what must be the same before and after."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = ("dir",) if p.is_dir() else ("file", p.read_bytes())
    return out


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# Each case: (id, setup(tmp_path) -> argv, fragment the message must contain). The setup writes its input files.
def _prompts(d):
    return write(d / "p.jsonl", {"prompt": "Say hi"}, {"prompt": "Say bye"})


def _responses(d, name="r.jsonl"):
    return write(d / name, response("a", "Hello there."), response("b", "Hi."))


def _judgements(d, *scores):
    return write(d / "j.jsonl", *({"response_id": rid, "score": s} for rid, s in zip("ab", scores)))


def _dir(d, name):
    (d / name).mkdir()
    return str(d / name)


def _manifest(d, content):
    (d / "rd").mkdir()
    (d / "rd" / "manifest.json").write_text(content)
    return str(d / "rd")


def _model_dir(d):
    (d / "m1").mkdir()
    (d / "m1" / "config.json").write_text("{}")
    return str(d / "m1")


CASES = [
    # -- outputs that cannot be written -----------------------------------------------------------------------
    ("out-empty", lambda d: ["respond", "--prompts", _prompts(d), "--out", "", FAKE], "--out is empty"),
    ("out-is-dir-respond", lambda d: ["respond", "--prompts", _prompts(d), "--out", _dir(d, "o"), FAKE],
     "o: is a directory; --out must name a file"),
    ("out-is-dir-judge", lambda d: ["judge", "--responses", _responses(d), "--out", _dir(d, "o"), FAKE],
     "o: is a directory"),
    ("out-is-dir-pairs", lambda d: ["pairs", "--responses", _responses(d), "--judgements", _judgements(d, 1, 2),
                                    "--out", _dir(d, "o")], "o: is a directory"),
    ("out-under-file", lambda d: ["respond", "--prompts", _prompts(d), "--out", d / "p.jsonl" / "r.jsonl", FAKE],
     "p.jsonl/r.jsonl: cannot be created: ", ),
    ("out-deep-under-file", lambda d: ["judge", "--responses", _responses(d), "--out", d / "r.jsonl" / "x" / "j.jsonl",
                                       FAKE], "r.jsonl is a file, not a folder"),
    ("dpo-out-is-file", lambda d: ["dpo", "--pairs", write(d / "pairs.jsonl", pair(answer("a"), answer("b"))),
                                   "--model", _model_dir(d), "--out", write(d / "m2", "x")],
     "m2: exists and is not a directory; --out must name a folder"),
    ("stats-out-is-dir", lambda d: ["dpo", "--pairs", write(d / "pairs.jsonl", pair(answer("a"), answer("b"))),
                                    "--model", _model_dir(d), "--out", d / "m2", "--stats-out", _dir(d, "s")],
     "s: is a directory; --stats-out must name a file"),
    ("run-dir-under-file", lambda d: ["run", "--recipe", "quickstart", "--run-dir", Path(_prompts(d)) / "run", FAKE],
     "p.jsonl/run: cannot be created: "),
    ("run-dir-empty", lambda d: ["run", "--recipe", "quickstart", "--run-dir", "", FAKE], "run directory is empty"),
    ("oasst-out-is-file", lambda d: ["data", "oasst", _prompts(d), "--out", write(d / "o", "x")],
     "o: exists and is not a directory"),
    # -- a broken manifest --------------------------------------------------------------------------------------
    ("manifest-list", lambda d: ["run", "--recipe", "quickstart", "--run-dir", _manifest(d, "[]"), FAKE],
     "rd/manifest.json: expected a JSON object with a 'stages' object, got a JSON list"),
    ("manifest-no-fingerprint", lambda d: ["run", "--recipe", "quickstart", "--run-dir",
                                           _manifest(d, '{"stages": {"sft": {"status": "done"}}}'), FAKE],
     "rd/manifest.json: stage 'sft' lacks field 'fingerprint'"),
    ("manifest-stages-list", lambda d: ["run", "--recipe", "quickstart", "--run-dir",
                                        _manifest(d, '{"stages": []}'), FAKE],
     "rd/manifest.json: field 'stages' must be an object"),
    ("manifest-entry-string", lambda d: ["run", "--recipe", "quickstart", "--run-dir",
                                         _manifest(d, '{"stages": {"sft": "done"}}'), FAKE],
     "rd/manifest.json: stage 'sft' must be an object"),
    # -- an output that is one of the inputs ----------------------------------------------------------------------
    ("respond-out-is-prompts", lambda d: ["respond", "--prompts", _prompts(d), "--out", d / "p.jsonl", FAKE],
     "p.jsonl: --out is the input --prompts"),
    ("respond-out-links-to-prompts", lambda d: ["respond", "--prompts", _prompts(d), "--out",
                                                (os.symlink(d / "p.jsonl", d / "link.jsonl"), d / "link.jsonl")[1],
                                                FAKE], "link.jsonl: --out is the input --prompts"),
    ("judge-out-is-responses", lambda d: ["judge", "--responses", _responses(d), "--out", d / "r.jsonl", FAKE],
     "--out is the input --responses"),
    ("pairs-out-is-judgements", lambda d: ["pairs", "--responses", _responses(d), "--judgements",
                                           _judgements(d, 1, 2), "--out", d / "j.jsonl"],
     "--out is the input --judgements"),
    ("prompts-out-is-pool", lambda d: ["prompts", "--seed-prompts", _prompts(d), "--pool",
                                       write(d / "pool.jsonl", {"prompt": "x"}), "--out", d / "pool.jsonl", FAKE],
     "--out is the input --pool"),
    ("prompts-attempts-is-seed", lambda d: ["prompts", "--seed-prompts", write(d / "n.attempts.jsonl", {"prompt": "x"}),
                                            "--out", d / "n.jsonl", FAKE], "is the input --seed-prompts"),
    ("dpo-out-is-model", lambda d: ["dpo", "--pairs", write(d / "pairs.jsonl", pair(answer("a"), answer("b"))),
                                    "--model", _model_dir(d), "--out", d / "m1"], "--out is the input --model"),
    ("dpo-out-holds-pairs", lambda d: ["dpo", "--pairs", (_dir(d, "m2"), write(d / "m2" / "p.jsonl",
                                       pair(answer("a"), answer("b"))))[1], "--model", _model_dir(d), "--out", d / "m2"],
     "--out would replace the folder holding the input --pairs"),
    ("sft-out-holds-ift", lambda d: ["sft", "--ift", (_dir(d, "m"), write(d / "m" / "ift.jsonl", {"prompt": "q",
                                     "response": "a"}))[1], "--no-eft", "--out", d / "m"],
     "--out would replace the folder holding the input --ift"),
    ("sft-stats-out-is-ift", lambda d: ["sft", "--ift", write(d / "ift.jsonl", {"prompt": "q", "response": "a"}),
                                        "--no-eft", "--out", d / "m", "--stats-out", d / "ift.jsonl"],
     "--stats-out is the input --ift"),
    ("eval-judge-out-is-data", lambda d: ["eval", "judge", "--data", write(d / "h.jsonl", {"x": 1}), "--out",
                                          d / "h.jsonl", FAKE], "--out is the input --data"),
    ("eval-judge-items-is-data", lambda d: ["eval", "judge", "--data", write(d / "m.items.jsonl", {"x": 1}), "--out",
                                            d / "m.json", FAKE], "m.items.jsonl: the file --out"),
    ("eval-winrate-out-is-outputs", lambda d: ["eval", "winrate", "--outputs-a", write(d / "a.jsonl", {"prompt": "q",
                                               "response": "x"}), "--outputs-b", write(d / "b.jsonl", {"prompt": "q",
                                               "response": "y"}), "--out", d / "a.jsonl", FAKE],
     "--out is the input --outputs-a"),
    ("eval-grade-out-is-answers", lambda d: ["eval", "grade", "--answers", write(d / "a.jsonl", {"prompt": "q",
                                             "response": "x"}), "--out", d / "a.jsonl", FAKE],
     "--out is the input --answers"),
    ("convert-out-is-input", lambda d: ["data", "convert", _prompts(d), "--out", d / "p.jsonl", "--kind", "prompts"],
     "--out is the input INPUT"),
    ("decontaminate-report-is-eval", lambda d: ["data", "decontaminate", _prompts(d), "--eval",
                                                write(d / "e.jsonl", {"prompt": "x"}), "--out", d / "o.jsonl",
                                                "--report", d / "e.jsonl"], "--report is the input --eval"),
    ("eft-log-is-source", lambda d: ["data", "eft", "--source", write(d / "e.judgements.jsonl", {"x": 1}), "--out",
                                     d / "e.jsonl", FAKE], "is the input --source"),
    ("config-is-out", lambda d: ["respond", "--config", write(d / "c.yaml", "seed: 0"), "--prompts", _prompts(d),
                                 "--out", d / "c.yaml", FAKE], "--out is the input --config"),
    # -- values that must not be accepted silently -----------------------------------------------------------------
    ("score-above-5", lambda d: ["pairs", "--responses", _responses(d), "--judgements", _judgements(d, 7, 1),
                                 "--out", d / "o.jsonl"], "j.jsonl:1: field 'score' is 7, outside the judge's range 0 to 5"),
    ("score-below-0", lambda d: ["pairs", "--responses", _responses(d), "--judgements",
                                 write(d / "j.jsonl", {"response_id": "a", "score": 1}, "",
                                       {"response_id": "b", "score": -1}), "--out", d / "o.jsonl"],
     "j.jsonl:3: field 'score' is -1, outside"),
    ("responses-as-judgements", lambda d: ["pairs", "--responses", _responses(d), "--judgements",
                                           _responses(d, "r2.jsonl"), "--out", d / "o.jsonl"],
     "r2.jsonl:1: missing field 'score' (this looks like a responses file"),
    ("judged-twice", lambda d: ["pairs", "--responses", _responses(d), "--judgements",
                                write(d / "j.jsonl", {"response_id": "a", "score": 1}, {"response_id": "b", "score": 2},
                                      {"response_id": "a", "score": 3}), "--out", d / "o.jsonl"],
     "j.jsonl:3: response 'a' is judged twice (also at line 1)"),
    ("duplicate-response-id", lambda d: ["judge", "--responses", write(d / "r.jsonl", response("a"), response("a")),
                                         "--out", d / "j.jsonl", FAKE],
     "r.jsonl:2: field 'response_id' 'a' is also used at line 1"),
    ("dpo-chosen-equals-rejected", lambda d: ["dpo", "--pairs", write(d / "pairs.jsonl", pair(answer("a"), answer("b")),
                                              pair(answer("same"), answer("same"))), "--model", d / "not-a-model",
                                              "--out", d / "m2"],
     "pairs.jsonl:2: fields 'chosen' and 'rejected' are the same answer"),
    ("dpo-user-role-in-chosen", lambda d: ["dpo", "--pairs", write(d / "pairs.jsonl", pair(
        [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "a"}], answer("b"))),
        "--model", d / "not-a-model", "--out", d / "m2"],
     "pairs.jsonl:1: field 'chosen' message 1 has role 'user', expected 'assistant'"),
    ("dpo-message-without-content", lambda d: ["dpo", "--pairs", write(d / "pairs.jsonl", pair(
        answer("a"), [{"role": "assistant"}])), "--model", d / "not-a-model", "--out", d / "m2"],
     "pairs.jsonl:1: field 'rejected' message 1 has no 'content'"),
    ("dpo-content-not-string", lambda d: ["dpo", "--pairs", write(d / "pairs.jsonl", pair(
        answer("a"), [{"role": "assistant", "content": ["b"]}])), "--model", d / "not-a-model", "--out", d / "m2"],
     "pairs.jsonl:1: field 'rejected' message 1: 'content' must be a string"),
    ("dpo-message-not-object", lambda d: ["dpo", "--pairs", write(d / "pairs.jsonl", pair(answer("a"), ["b"])),
                                          "--model", d / "not-a-model", "--out", d / "m2"],
     "pairs.jsonl:1: field 'rejected' message 1 must be an object"),
    ("dpo-empty-chosen", lambda d: ["dpo", "--pairs", write(d / "pairs.jsonl", pair([], answer("b"))),
                                    "--model", d / "not-a-model", "--out", d / "m2"],
     "pairs.jsonl:1: field 'chosen' is an empty list"),
    ("dpo-bad-prompt-role", lambda d: ["dpo", "--pairs", write(d / "pairs.jsonl", pair(
        answer("a"), answer("b"), prompt=[{"role": "human", "content": "Q"}])), "--model", d / "not-a-model",
        "--out", d / "m2"], "pairs.jsonl:1: field 'prompt' message 1 has role 'human'"),
    ("dpo-no-pairs", lambda d: ["dpo", "--pairs", write(d / "pairs.jsonl"), "--model", d / "not-a-model",
                                "--out", d / "m2"], "pairs.jsonl: zero preference pairs"),
    ("winrate-duplicate-prompt", lambda d: ["eval", "winrate",
                                            "--outputs-a", write(d / "a.jsonl", {"prompt": "q", "response": "x"},
                                                                 {"prompt": "q2", "response": "x"},
                                                                 {"prompt": "q", "response": "other"}),
                                            "--outputs-b", write(d / "b.jsonl", {"prompt": "q", "response": "y"}),
                                            "--out", d / "w.json", FAKE],
     "a.jsonl: record 3: prompt 'q' is answered again with a different answer (first at record 1)"),
    ("all-prompts-too-long", lambda d: ["respond", "--prompts", write(d / "p.jsonl", {"prompt": "word " * 50}),
                                        "--out", d / "r.jsonl", FAKE, "respond.max_prompt_tokens=10"],
     "p.jsonl: all 1 prompts are longer than respond.max_prompt_tokens=10"),
    # -- messages that tell the truth --------------------------------------------------------------------------------
    ("report-on-a-file", lambda d: ["report", _prompts(d)], "p.jsonl: is not a directory"),
    ("report-missing", lambda d: ["report", d / "nope"], "nope: run directory not found"),
    ("report-stat-wrong-type", lambda d: ["report", (_dir(d, "run"), write(d / "run" / "summary.json", json.dumps(
        {"iterations": [{"iteration": 1, "judge_parse_rate": "high"}]})))[0]],
     "summary.json: iterations[0] field 'judge_parse_rate' must be a number or null, got \"high\""),
    ("convert-unknown-format", lambda d: ["data", "convert", write(d / "x.jsonl", {"foo": 1}), "--out", d / "o.jsonl",
                                          "--kind", "ift"], "name it with --format"),
    ("eval-judge-unknown-format", lambda d: ["eval", "judge", "--data", write(d / "h.jsonl", {"foo": 1}),
                                             "--out", d / "o.json", FAKE], "pass --format oasst|pairs|groups"),
]


@pytest.mark.parametrize("setup, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error_and_leaves_nothing(tmp_path, capsys, setup, message):
    argv = setup(tmp_path)
    before = tree(tmp_path)
    code, _out, err = run(argv, capsys)
    assert code == 2, err
    assert err.startswith("srlm: error: ") or err.splitlines()[-1].startswith("srlm: error: "), err
    assert message in err, err
    assert "Traceback" not in err
    assert tree(tmp_path) == before  # no output, no .partial, no temporary file


USAGE_ERRORS = [
    ("sft-eft-and-no-eft", lambda d: ["sft", "--eft", _prompts(d), "--no-eft", "--out", d / "m"],
     "argument --no-eft: not allowed with argument --eft"),
    ("unknown-option", lambda d: ["respond", "--prompts", _prompts(d), "--out", d / "r.jsonl", "--bogus", FAKE],
     "unrecognized arguments: --bogus"),
    ("override-where-none-taken", lambda d: ["report", d, "a=1"], "unrecognized arguments: a=1"),
]


@pytest.mark.parametrize("setup, message", [c[1:] for c in USAGE_ERRORS], ids=[c[0] for c in USAGE_ERRORS])
def test_usage_errors_exit_2_before_anything_runs(tmp_path, capsys, setup, message):
    argv = setup(tmp_path)
    before = tree(tmp_path)
    code, _out, err = run(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert tree(tmp_path) == before


def test_read_only_folders_are_named(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    _prompts(tmp_path)
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user can write into a mode 0555 folder (root): nothing to refuse")
        for argv, fragment in [
            (["respond", "--prompts", tmp_path / "p.jsonl", "--out", locked / "r.jsonl", FAKE], "is not writable"),
            (["run", "--recipe", "quickstart", "--run-dir", locked, FAKE], "is not writable"),
            (["run", "--recipe", "quickstart", "--run-dir", locked / "new", FAKE], "is not writable"),
        ]:
            code, _out, err = run(argv, capsys)
            assert code == 2 and "srlm: error:" in err and fragment in err and "Traceback" not in err, err
            assert str(locked) in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_a_folder_that_refuses_writes_is_named_even_for_root(tmp_path, capsys, monkeypatch):
    """As root, chmod cannot make a folder read-only; the same refusal is simulated (EROFS / EACCES)."""
    import errno

    import srlm.io

    _prompts(tmp_path)
    monkeypatch.setattr(srlm.io.os, "access", lambda path, mode: False)
    code, _out, err = run(["respond", "--prompts", tmp_path / "p.jsonl", "--out", tmp_path / "r.jsonl", FAKE], capsys)
    assert code == 2 and f"folder {tmp_path} is not writable" in err and "Traceback" not in err, err
    monkeypatch.undo()

    # A write refused after the checks passed (the folder went read-only mid-run): still a message, no temp file.
    _responses(tmp_path)
    _judgements(tmp_path, 1, 2)
    before = tree(tmp_path)
    real_open = os.open

    def refuse(path, flags, mode=0o777, **kw):
        if str(path).endswith(".tmp"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(srlm.io.os, "open", refuse)
    code, _out, err = run(["pairs", "--responses", tmp_path / "r.jsonl", "--judgements", tmp_path / "j.jsonl",
                           "--out", tmp_path / "o.jsonl"], capsys)
    assert code == 2 and "o.jsonl: cannot write (Read-only file system" in err and "Traceback" not in err, err
    assert tree(tmp_path) == before


def test_hub_id_offline_fails_fast_and_says_why(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _prompts(tmp_path)
    start = time.perf_counter()
    code, _out, err = run(["respond", "--prompts", tmp_path / "p.jsonl", "--out", tmp_path / "r.jsonl",
                           "--model", "someone/no-such-model"], capsys)
    assert code == 2 and "someone/no-such-model: a Hugging Face Hub id, but HF_HUB_OFFLINE is set" in err, err
    assert "Traceback" not in err and time.perf_counter() - start < 30
    assert not (tmp_path / "r.jsonl").exists()


def test_unreachable_hub_fails_fast_without_offline_flag(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    start = time.perf_counter()
    code, _out, err = run(["data", "convert", "someone/no-such-data", "--out", tmp_path / "o.jsonl", "--kind", "ift"],
                          capsys)
    assert code == 2 and "someone/no-such-data: a Hugging Face Hub dataset id, but the Hub at http://127.0.0.1:9 " \
        "cannot be reached" in err and "HF_HUB_OFFLINE=1" in err, err
    assert time.perf_counter() - start < 10 and not (tmp_path / "o.jsonl").exists()


# -- stage outputs flow into the next stage ---------------------------------------------------------------------


LONG_JUDGED = " ".join(["long"] * 1200)        # judged: the judge prompt stays under judge.max_prompt_tokens
LONG_SKIPPED = " ".join(["longer"] * 2500)     # its judge prompt is over the 2048 limit: skipped and counted
UNICODE = "Réponse: 你好, мир! ∑ x² — 🚀 naïve café"


def scripted(request, index):
    """Answers by prompt: empty, whitespace, mixed, non-ASCII, very long, cut at max_new_tokens, all the same."""
    last = request.messages[-1]["content"] if request.messages else ""
    if request.text is not None or "Score: <total points>" in last:
        return fake.__dict__["_original_default_script"](request, index)
    kind = last.split()[0]
    return {
        "EMPTY": "",
        "BLANK": " \n\t ",
        "MIXED": ["", f"Answer number {index}.", "   ", f"Another answer {index}: ok."][index % 4],
        "UNICODE": f"{UNICODE} ({index})",
        "LONG": [LONG_JUDGED, LONG_SKIPPED, "short", ""][index % 4],
        "CUT": " ".join(["cut"] * 4000),  # over respond.max_new_tokens: cut, finish_reason 'length'
        "SAME": "The very same answer.",
    }[kind]


@pytest.fixture
def scripted_backend(monkeypatch):
    monkeypatch.setitem(fake.__dict__, "_original_default_script", fake.default_script)
    monkeypatch.setattr(fake, "default_script", scripted)


def _chain(tmp_path, capsys, prompts: list[str], *extra):
    p = write(tmp_path / "prompts.jsonl", *({"prompt": f"{k} question {i}?"} for i, k in enumerate(prompts)))
    r, j, pairs = tmp_path / "responses.jsonl", tmp_path / "judgements.jsonl", tmp_path / "pairs.jsonl"
    stats = {}
    for name, argv in [
        ("respond", ["respond", "--prompts", p, "--out", r, FAKE, "respond.max_new_tokens=3000", *extra]),
        ("judge", ["judge", "--responses", r, "--out", j, FAKE, *extra]),
        ("pairs", ["pairs", "--responses", r, "--judgements", j, "--out", pairs, *extra]),
    ]:
        code, out, err = run(argv, capsys)
        assert code == 0, f"{name}: {err}"
        assert "Traceback" not in err
        stats[name] = json.loads(out)
        stats[name + "_err"] = err
    return stats, read_jsonl(r), read_jsonl(j), list(map(json.loads, pairs.read_text().splitlines()))


def test_empty_and_odd_answers_flow_from_respond_to_judge_to_pairs(tmp_path, capsys, scripted_backend):
    kinds = ["EMPTY", "BLANK", "MIXED", "UNICODE", "LONG", "CUT", "SAME", "MIXED"]
    stats, responses, judgements, pairs = _chain(tmp_path, capsys, kinds)
    empty = [r for r in responses if not r["response"].strip()]
    assert stats["respond"]["empty_responses"] == len(empty) > 0
    assert any(r["finish_reason"] == "length" for r in responses)
    assert any(UNICODE in r["response"] for r in responses)
    assert UNICODE in (tmp_path / "responses.jsonl").read_text(encoding="utf-8")  # written as UTF-8, not escaped
    # the judge accepts the file respond wrote: empty answers unjudged and counted, never fatal
    assert len(judgements) == len(responses)
    by_id = {j["response_id"]: j for j in judgements}
    for r in empty:
        assert by_id[r["response_id"]]["skipped"] == "empty_response" and by_id[r["response_id"]]["score"] is None
        assert by_id[r["response_id"]]["judgements"] == []
    assert stats["judge"]["skipped_empty_response"] == len(empty)
    assert stats["judge"]["skipped_judge_prompt_too_long"] >= 2  # LONG_SKIPPED and the CUT answers
    assert "responses are empty" in stats["judge_err"] and "judge.max_prompt_tokens" in stats["judge_err"]
    assert any(by_id[r["response_id"]]["score"] is not None for r in responses if r["response"] == LONG_JUDGED)
    # pairs sees empty answers as unscored, never pairs a text with itself, and DPO's check accepts the file
    assert stats["pairs"]["empty_responses"] == len(empty)
    for p in pairs:
        assert p["chosen"][0]["content"].strip() and p["rejected"][0]["content"].strip()
        assert p["chosen"] != p["rejected"]
    prompt_of = {r["prompt_id"]: r["prompt"] for r in responses}
    assert not any(prompt_of[p["prompt_id"]].startswith(("EMPTY", "BLANK", "SAME")) for p in pairs)
    assert stats["pairs"]["dropped"].get("fewer_than_2_scored", 0) >= 2  # EMPTY and BLANK
    assert "SAME" not in {prompt_of[p["prompt_id"]].split()[0] for p in pairs}
    if pairs:
        assert len(read_pair_file(tmp_path / "pairs.jsonl")) == len(pairs)

    # A rerun of the judge on the same files neither fails nor judges anything again.
    code, out, err = run(["judge", "--responses", tmp_path / "responses.jsonl", "--out",
                          tmp_path / "judgements.jsonl", FAKE], capsys)
    assert code == 0, err
    assert read_jsonl(tmp_path / "judgements.jsonl") == judgements


def test_a_model_that_answers_only_empty_strings_wedges_nothing(tmp_path, capsys, scripted_backend):
    stats, responses, judgements, pairs = _chain(tmp_path, capsys, ["EMPTY", "BLANK", "EMPTY"])
    assert stats["respond"]["empty_responses"] == len(responses) == 12
    assert stats["judge"]["skipped_empty_response"] == 12 and stats["judge"]["responses_scored"] == 0
    assert all(j["score"] is None for j in judgements)
    assert pairs == [] and stats["pairs"]["pairs"] == 0
    assert stats["pairs"]["dropped"] == {"fewer_than_2_scored": 3}


def test_identical_texts_are_never_a_pair(tmp_path, capsys, scripted_backend):
    stats, _responses, judgements, pairs = _chain(tmp_path, capsys, ["SAME"] * 4)
    assert pairs == []
    scored = [j["score"] for j in judgements]
    assert len(set(scored)) > 1  # the same text scored differently: exactly the case that must not become a pair
    assert stats["pairs"]["dropped"].get("identical_texts", 0) >= 1


def test_prompts_skipped_for_length_are_warned_about(tmp_path, capsys):
    p = write(tmp_path / "p.jsonl", {"prompt": "Short question?"}, {"prompt": "long " * 200},
              {"prompt": "Another short one?"})
    code, out, err = run(["respond", "--prompts", p, "--out", tmp_path / "r.jsonl", FAKE,
                          "respond.max_prompt_tokens=50"], capsys)
    assert code == 0, err
    assert "srlm: warning: 1 of 3 prompts" in err and "respond.max_prompt_tokens=50" in err
    assert json.loads(out)["skipped_prompt_too_long"] == 1


def test_overrides_are_accepted_anywhere(tmp_path, capsys):
    p = _prompts(tmp_path)
    code, _out, err = run(["respond", FAKE, "--prompts", p, "respond.num_samples=2", "--out", tmp_path / "r.jsonl",
                           "seed=3"], capsys)
    assert code == 0, err
    assert len(read_jsonl(tmp_path / "r.jsonl")) == 4  # 2 prompts x respond.num_samples=2
    code, _out, err = run(["config", "seed=5", "--recipe", "quickstart", "respond.num_samples=3"], capsys)
    assert code == 0, err


# -- files follow the umask ------------------------------------------------------------------------------------


@pytest.fixture
def umask():
    def set_umask(value):
        os.umask(value)

    old = os.umask(0o022)
    os.umask(old)
    yield set_umask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path, capsys, umask, mask, expected):
    umask(mask)
    p = _prompts(tmp_path)
    r, j, pairs = tmp_path / "r.jsonl", tmp_path / "j.jsonl", tmp_path / "pairs.jsonl"
    assert run(["respond", "--prompts", p, "--out", r, FAKE], capsys)[0] == 0
    assert run(["judge", "--responses", r, "--out", j, FAKE], capsys)[0] == 0
    assert run(["pairs", "--responses", r, "--judgements", j, "--out", pairs], capsys)[0] == 0
    assert (_mode(r), _mode(j), _mode(pairs)) == (expected, expected, expected)


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    from srlm.io import write_json

    umask(0o022)
    target = tmp_path / "stats.json"
    write_json(target, {"a": 1})
    assert _mode(target) == 0o644
    target.chmod(0o600)  # the user made it private: rewriting it must not widen it
    write_json(target, {"a": 2})
    assert _mode(target) == 0o600 and json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]
