"""The command line as a user meets it: help texts, and bad input answered with a clear message and exit status 2,
leaving no half-written output."""

import json

import pytest

from srlm.cli import build_parser, main

COMMANDS = ["run", "recipes", "config", "sft", "prompts", "respond", "judge", "pairs", "dpo", "data", "eval", "report"]


def test_every_command_has_help(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert len(capsys.readouterr().out) > 100, command


def test_recipes_and_config_keys(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "paper" in out
    assert main(["config", "--keys"]) == 0
    assert "respond.num_samples" in capsys.readouterr().out


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: ["respond", "--prompts", str(d / "nope.jsonl")], "nope.jsonl: file not found"),
        (lambda d: ["respond", "--prompts", _write(d / "p.jsonl", '{"prompt": "ok"}\n{"prompt": \n')],
         "p.jsonl:2: malformed JSON"),
        (lambda d: ["respond", "--prompts", _write(d / "p.jsonl", '{"question": "ok"}\n')],
         "p.jsonl:1: missing field 'prompt'"),
        (lambda d: ["respond", "--prompts", _write(d / "p.jsonl", '{"prompt": ""}\n')], "p.jsonl:1: field 'prompt' is empty"),
        (lambda d: ["respond", "--prompts", _write(d / "p.jsonl", '{"prompt": ["a"]}\n')],
         "p.jsonl:1: field 'prompt' must be a string"),
        (lambda d: ["respond", "--prompts", _write(d / "p.jsonl", "")], "p.jsonl: no prompts"),
        (lambda d: ["judge", "--responses", _write(d / "r.jsonl", '{"prompt_id": "a", "prompt": "q", "response": "r"}\n')],
         "r.jsonl:1: missing field 'response_id'"),
        (lambda d: ["pairs", "--responses", _write(d / "r.jsonl", '{"prompt_id": "a", "response_id": "x", "prompt": "q", "response": "r"}\n'),
                    "--judgements", _write(d / "j.jsonl", '{"response_id": "x", "score": NaN}\n')],
         "j.jsonl:1: non-finite number NaN"),
        (lambda d: ["dpo", "--pairs", _write(d / "pairs.jsonl", '{"prompt": [], "chosen": "a", "rejected": []}\n'),
                    "--model", str(d)], "pairs.jsonl:1: field 'chosen' must be a list"),
        (lambda d: ["sft", "--ift", _write(d / "ift.jsonl", '{"prompt": "q", "response": "a"}\n'),
                    "--eft", _write(d / "eft.jsonl", '{"prompt": "q", "response": "a", "judgement": "fine"}\n')],
         "eft.jsonl:1: field 'judgement' does not end in a score line"),
        (lambda d: ["sft", "--ift", _write(d / "ift.jsonl", '{"prompt": "q", "response": "a"}\n'), "--no-eft",
                    "--model", str(d / "not-a-model")], "not-a-model: model path does not exist"),
        (lambda d: ["run", "--run-dir", str(d / "run")], "needs --recipe NAME or --config FILE"),
        (lambda d: ["run", "--recipe", "quickstart", "--run-dir", str(d / "run"), "sft.epoch=2"],
         "unknown config key 'sft.epoch'"),
        (lambda d: ["run", "--recipe", "quickstart", "--run-dir", str(d / "run"), "judge.num_samples=zero"],
         "config key 'judge.num_samples'"),
        (lambda d: ["run", "--config", _write(d / "c.yaml", "model: [1, 2]\n"), "--run-dir", str(d / "run")],
         "config key 'model'"),
        (lambda d: ["run", "--recipe", "quickstart", "--run-dir", str(d / "run"), "data.ift=missing.jsonl"],
         "missing.jsonl: data file not found"),
        (lambda d: ["run", "--recipe", "quickstart", "--run-dir", _write(d / "file", "x"), "backend.name=fake"],
         "run directory path exists and is not a directory"),
        (lambda d: ["judge", "--responses", _write(d / "r.jsonl", '{"prompt_id": "a", "response_id": "x", "prompt": "q", "response": "r"}\n'),
                    "backend.name=fake", f"judge.template_file={d / 'none.txt'}"], "none.txt: judge template file not found"),
    ],
)
def test_bad_input_gets_a_clear_message_and_no_output(tmp_path, capsys, setup, message):
    out = tmp_path / "out"
    args = setup(tmp_path)
    if args[0] in ("respond", "judge", "pairs", "dpo", "sft"):
        args += ["--out", str(out)]
    if args[0] in ("respond", "judge") and "backend.name=fake" not in args:
        args.append("backend.name=fake")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message.split("(")[0] in err or __import__("re").search(message, err), err
    assert not out.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_stage_commands_run_alone_on_files(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(3)))
    assert main(["respond", "--prompts", str(prompts), "--out", str(tmp_path / "r.jsonl"), "backend.name=fake"]) == 0
    assert main(["judge", "--responses", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "j.jsonl"),
                 "backend.name=fake"]) == 0
    assert main(["pairs", "--responses", str(tmp_path / "r.jsonl"), "--judgements", str(tmp_path / "j.jsonl"),
                 "--out", str(tmp_path / "pairs.jsonl")]) == 0
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 12
    assert len((tmp_path / "j.jsonl").read_text().splitlines()) == 12
    assert (tmp_path / "pairs.jsonl").exists()
    assert main(["prompts", "--seed-prompts", str(prompts), "--out", str(tmp_path / "new.jsonl"), "backend.name=fake",
                 "prompts.num_prompts=3"]) == 0
    assert len((tmp_path / "new.jsonl").read_text().splitlines()) == 3


def test_parser_has_the_documented_run_signature():
    args = build_parser().parse_args(["run", "--recipe", "quickstart", "--run-dir", "x", "a=1", "b.c=2"])
    assert (args.recipe, args.run_dir, args.overrides) == ("quickstart", "x", ["a=1", "b.c=2"])
