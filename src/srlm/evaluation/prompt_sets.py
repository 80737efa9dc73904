"""Evaluation prompt sets: answer MT-Bench, AlpacaEval or any prompt file (grading the answers: `grading.py`).

    srlm eval generate --set mtbench --data question.jsonl --model runs/x/models/m3 --out m3_mtbench.jsonl
    srlm eval generate --set alpacaeval --data alpaca_eval.json --model runs/x/models/m3 --out model_outputs.json
    srlm eval grade --answers m3_mtbench.jsonl --grader mtbench --judge-model JUDGE --out m3_mtbench_grades.json

The paper evaluates on AlpacaEval 2.0 (805 instructions, paper-spec 6.3) and MT-Bench (80 two-turn questions in 8
categories, scored 1-10 by GPT-4, paper-spec 6.4). Neither official judge (GPT-4) is reachable here, so this module
does the part that needs our models, in the sets' own formats so the official tools can take over:

- MT-Bench: turn 1 is answered, then turn 2 with the conversation so far (question 1, our answer 1, question 2),
  as FastChat's `gen_model_answer` does, with FastChat's per-category temperatures by default. The answers file is
  JSONL that FastChat's judge reads (`question_id`, `model_id`, `choices[0].turns`) plus our own fields.
- AlpacaEval: one answer per instruction, written as AlpacaEval's `model_outputs.json` (a JSON list of
  {instruction, output, generator, dataset}).
- Any prompt file `srlm.data.formats.load_records` reads: one answer per prompt, JSONL.

`srlm.evaluation.grading` then scores each answer alone with a local judge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from srlm.backends import GenerationRequest, Sampling
from srlm.errors import DataError, SrlmError
from srlm.io import stable_id, stable_seed, write_json, write_jsonl

NAMED_SETS = ("mtbench", "alpacaeval")

# FastChat's `temperature_config` for MT-Bench answer generation (fastchat/llm_judge/common.py): creative
# categories sample, exact ones decode greedily.
MT_BENCH_TEMPERATURE = {
    "writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
    "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0,
}
_CHUNK_REQUESTS = 64


@dataclass
class PromptItem:
    """One evaluation question: one turn (AlpacaEval, prompt files) or several (MT-Bench)."""

    id: str
    turns: list[str]
    category: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class PromptSet:
    name: str  # "mtbench", "alpacaeval" or "file"
    items: list[PromptItem]
    source: str


# ----------------------------------------------------------------------------------------------------------------
# Loading sets


def read_source_records(path: str | Path):
    from srlm.data.formats import iter_source  # JSON array, JSONL (.gz), Parquet, or a Hub id for users online

    return iter_source(path, split="eval", allow_strings=False)


def _string(record: Any, name: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{name}' must be a non-empty string")
    return value


def load_mt_bench(path: str | Path) -> list[PromptItem]:
    """MT-Bench's question.jsonl: {question_id, category, turns: [str, ...]}."""
    items = []
    for where, record in read_source_records(path):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        turns = record.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise DataError(f"{where}: field 'turns' must be a non-empty list of non-empty strings")
        if "question_id" not in record:
            raise DataError(f"{where}: missing field 'question_id'")
        category = record.get("category")
        items.append(PromptItem(id=str(record["question_id"]), turns=list(turns),
                                category=category if isinstance(category, str) else None,
                                meta={"question_id": record["question_id"]}))
    return items


def load_alpaca_eval(path: str | Path) -> list[PromptItem]:
    """AlpacaEval's instructions: a JSON list (or JSONL) of {instruction, dataset?, ...}; `dataset` is the category."""
    items = []
    for index, (where, record) in enumerate(read_source_records(path)):
        instruction = _string(record, "instruction", where)
        dataset = record.get("dataset")
        items.append(PromptItem(id=str(index), turns=[instruction],
                                category=dataset if isinstance(dataset, str) else None,
                                meta={"dataset": dataset}))
    return items


def load_prompt_file(path: str | Path) -> list[PromptItem]:
    """Any file `load_records(kind="prompts")` reads; each record is one single-turn question."""
    from srlm.data.formats import load_records

    items = []
    for index, record in enumerate(load_records(path, kind="prompts")):
        item_id = str(record.get("id", index))  # the file's own id when it has one, else the position
        items.append(PromptItem(id=item_id, turns=[record["prompt"]]))
    return items


def load_prompt_set(set_name: str, data: str | Path | None = None, *, limit: int | None = None) -> PromptSet:
    """`set_name`: "mtbench" or "alpacaeval" (read from `data`), or the path of a prompt file (`data` unused)."""
    if set_name in NAMED_SETS:
        if data is None:
            where = "question.jsonl from FastChat" if set_name == "mtbench" else "AlpacaEval's instructions JSON"
            raise SrlmError(f"--set {set_name} needs --data PATH ({where})")
        items = load_mt_bench(data) if set_name == "mtbench" else load_alpaca_eval(data)
        name, source = set_name, str(data)
    else:
        if not Path(set_name).exists():
            raise SrlmError(f"--set {set_name}: not one of {', '.join(NAMED_SETS)} and not an existing prompt file")
        items, name, source = load_prompt_file(set_name), "file", set_name
    if not items:
        raise DataError(f"{source}: no questions")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{source}: question id {duplicate} appears twice")
    return PromptSet(name=name, items=items[:limit] if limit else items, source=source)


# ----------------------------------------------------------------------------------------------------------------
# Answering


def run_requests(backend, requests: list[GenerationRequest], desc: str) -> list:
    from srlm.progress import chunks, progress

    out = []
    with progress(len(requests), desc, unit="request") as bar:
        for chunk in chunks(requests, _CHUNK_REQUESTS):
            out.extend(backend.generate(list(chunk), on_done=bar.update))
    return out


def generate_answers(
    items: Sequence[PromptItem], backend, *, seed: int, sampling_for: Callable[[PromptItem], Sampling]
) -> list[dict]:
    """Answer every item turn by turn: turn k is asked with the questions and the model's own answers before it.

    All items' turn 1 go to the backend together, then all turn 2, and so on (items with fewer turns drop out).
    Returns one record per item: {id, category, questions, answers, finish_reasons, num_tokens}.
    """
    records = [{"id": it.id, "category": it.category, "questions": list(it.turns), "answers": [],
                "finish_reasons": [], "num_tokens": []} for it in items]
    for turn in range(max(len(it.turns) for it in items)):
        active = [(it, rec) for it, rec in zip(items, records) if turn < len(it.turns)]
        requests = []
        for it, rec in active:
            messages = []
            for question, answer in zip(it.turns[:turn], rec["answers"]):
                messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            messages.append({"role": "user", "content": it.turns[turn]})
            requests.append(GenerationRequest(f"{it.id}/turn{turn + 1}", sampling_for(it),
                                              stable_seed(seed, "eval-generate", it.id, turn), messages=messages))
        for (_, rec), completions in zip(active, run_requests(backend, requests, f"answer turn {turn + 1}")):
            rec["answers"].append(completions[0].text)
            rec["finish_reasons"].append(completions[0].finish_reason)
            rec["num_tokens"].append(completions[0].num_tokens)
    return records


def default_sampling(set_name: str, *, temperature: float | None, top_p: float, max_new_tokens: int):
    """Sampling per item: `temperature` when given; otherwise FastChat's per-category table for MT-Bench (0.7 for
    an unknown category) and greedy decoding for everything else (an evaluation should not hinge on a seed)."""

    def sampling_for(item: PromptItem) -> Sampling:
        t = temperature
        if t is None:
            t = MT_BENCH_TEMPERATURE.get(item.category or "", 0.7) if set_name == "mtbench" else 0.0
        return Sampling(n=1, temperature=t, top_p=top_p, max_new_tokens=max_new_tokens)

    return sampling_for


def write_answers(path: str | Path, prompt_set: PromptSet, records: list[dict], generator: str) -> Path:
    """AlpacaEval: its `model_outputs.json` list; MT-Bench: JSONL with FastChat's answer fields; files: JSONL."""
    path = Path(path)
    if prompt_set.name == "alpacaeval":
        write_json(path, [
            {"instruction": rec["questions"][0], "output": rec["answers"][0], "generator": generator,
             "dataset": item.meta.get("dataset")}
            for item, rec in zip(prompt_set.items, records)
        ])
        return path
    rows = []
    for item, rec in zip(prompt_set.items, records):
        row = {**rec, "generator": generator, "set": prompt_set.name}
        if prompt_set.name == "mtbench":  # what FastChat's gen_judgment reads from a model_answer file
            row.update(question_id=item.meta["question_id"], model_id=generator,
                       answer_id=stable_id(generator, item.id, *rec["answers"]),
                       choices=[{"index": 0, "turns": rec["answers"]}], tstamp=time.time())
        rows.append(row)
    write_jsonl(path, rows)
    return path


def read_answers(path: str | Path) -> list[dict]:
    """Answered items for grading: {id, category, questions, answers} from any file `write_answers` wrote
    (AlpacaEval list, srlm JSONL) or {prompt, response} records."""
    out = []
    for index, (where, record) in enumerate(read_source_records(path)):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "questions" in record and "answers" in record:
            questions, answers = record["questions"], record["answers"]
            if not (isinstance(questions, list) and isinstance(answers, list) and questions
                    and all(isinstance(x, str) for x in questions + answers)):
                raise DataError(f"{where}: fields 'questions' and 'answers' must be lists of strings")
            if len(answers) != len(questions):
                raise DataError(f"{where}: {len(questions)} questions but {len(answers)} answers")
            item = {"id": str(record.get("id", index)), "category": record.get("category"),
                    "questions": questions, "answers": answers}
        elif "instruction" in record and "output" in record:
            item = {"id": str(index), "category": record.get("dataset"),
                    "questions": [_string(record, "instruction", where)], "answers": [str(record["output"])]}
        elif "prompt" in record and "response" in record:
            item = {"id": str(record.get("id", index)), "category": record.get("category"),
                    "questions": [_string(record, "prompt", where)], "answers": [str(record["response"])]}
        else:
            keys = ", ".join(sorted(record)[:10])
            raise DataError(f"{where}: not an answers record (keys: {keys}); expected questions/answers, "
                            "instruction/output or prompt/response")
        out.append(item)
    if not out:
        raise DataError(f"{path}: no answers")
    return out
