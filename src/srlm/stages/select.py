"""Checkpoint selection (paper section 3): M_t+1 is the DPO checkpoint whose answers beat M_t's most often.

    dpo.checkpoint_every_steps=K   DPO also saves a full model every K optimizer steps (`add_checkpoint_saver`)
    eval.select_checkpoint=true    after DPO, every candidate (each saved step and the final model) answers the
                                   selection prompts greedily; a pairwise judge compares each answer with M_t's
                                   in both orders (as `srlm eval winrate` does); the highest win rate wins, ties
                                   going to the later step, and the winner becomes models/m{t+1}

The paper saves a checkpoint every 200 steps and has Claude 2 compare each one's generations with the previous
model's on 253 validation prompts, in the AlpacaEval prompt format; it does not state the stopping rule. srlm keeps
the candidate with the highest win rate against M_t: every candidate faces the same opponent and the same judge
(M_t by default, `eval.selection_judge`), so their numbers are comparable.

Files:
  models/.m{t+1}.checkpoints/    training.json (which DPO run saved them, its step count) and step-N/ (full
                                 Hugging Face checkpoints, LoRA merged); deleted once the selection is done
  iter_t/selection.json          every candidate's win / tie / loss and win rate against M_t, and the winner
  iter_t/selection.items.jsonl   every answer and every judgement behind those numbers

Resuming: each model's answers and each candidate's verdicts are appended to selection.items.jsonl.partial as
they finish, tagged with the id of the DPO run that saved the checkpoints, so a restarted selection redoes only
what is missing and never mixes in records about an earlier DPO run's checkpoints. The winner is moved into place
by renames (step-N -> models/.m{t+1}.selected -> models/m{t+1}); `recover_model_dir` completes a move that a kill
interrupted, before the loop looks for models/m{t+1}.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from srlm.backends import backend_for
from srlm.errors import ConfigError, DataError, SrlmError
from srlm.io import ResumableJsonlWriter, iter_jsonl, read_json, write_json, write_jsonl
from srlm.models import work_dir
from srlm.seed import BUILTIN_PREFIX, resolve_data_path
from srlm.stages.checkpoints import TRAINING_FILE, checkpoint_dir

_STEP_DIR = re.compile(r"step-(\d+)")
SELECTION_RULE = ("highest win rate (win + tie/2) against M_t on the selection prompts, each pair judged in both "
                  "orders; equal win rates go to the later step")


def _staged_dir(model_dir: Path) -> Path:
    return work_dir(model_dir, "selected")


def _replaced_dir(model_dir: Path) -> Path:
    return work_dir(model_dir, "replaced")


def _discard(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _rename(src: Path, dst: Path) -> None:
    # One place for the renames that move the winner, so that a test can interrupt the move between two of them.
    os.rename(src, dst)


# ----------------------------------------------------------------------------------------------------------------
# Choosing among them


@dataclass
class Candidate:
    name: str  # "step-N"
    step: int
    path: Path
    final: bool  # the model the training stage saved at its last step (in models/m{t+1} itself)


def selection_prompts_path(cfg) -> str | None:
    return cfg.eval.selection_prompts or cfg.eval.heldout_prompts


def check_selection_config(cfg) -> None:
    """Fail before any training when eval.select_checkpoint cannot work with the rest of the config."""
    if not cfg.eval.select_checkpoint:
        return
    if cfg.dpo.checkpoint_every_steps is None:
        raise ConfigError("eval.select_checkpoint=true needs dpo.checkpoint_every_steps (the paper saves every 200 "
                          "steps): without checkpoints the final model is the only candidate")
    path = selection_prompts_path(cfg)
    if path is None:
        raise ConfigError("eval.select_checkpoint=true needs eval.selection_prompts (or eval.heldout_prompts): a "
                          "JSONL file of prompts never trained on")
    if not path.startswith(BUILTIN_PREFIX) and not Path(path).is_file():
        raise DataError(f"{path}: selection prompts file not found (eval.selection_prompts, or eval.heldout_prompts)")
    resolve_data_path(path)  # an unknown builtin: name fails here too


def selection_fingerprint(cfg) -> str:
    """What the selection reads from the config; changing any of it reruns the selection and what follows."""
    picked = {"seed": cfg.seed, "prompts": selection_prompts_path(cfg), "limit": cfg.eval.selection_limit,
              "judge": cfg.eval.selection_judge, "max_new_tokens": cfg.eval.max_new_tokens,
              "backend": cfg.backend.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def list_candidates(model_next: Path) -> tuple[list[Candidate], dict]:
    """Every checkpoint the DPO run saved, then its final model; and that run's training.json."""
    ckpt_dir = checkpoint_dir(model_next)
    info = read_json(ckpt_dir / TRAINING_FILE)
    if "final_step" not in info or not (Path(model_next) / "config.json").exists():
        raise SrlmError(f"{ckpt_dir}: the DPO run that saved these checkpoints did not finish; train M_t+1 again")
    candidates = []
    for path in ckpt_dir.iterdir():
        match = _STEP_DIR.fullmatch(path.name)
        if match and (path / "config.json").exists():  # save_model renames a checkpoint in only when complete
            candidates.append(Candidate(path.name, int(match.group(1)), path, final=False))
    candidates.sort(key=lambda c: c.step)
    candidates.append(Candidate(f"step-{info['final_step']}", info["final_step"], Path(model_next), final=True))
    return candidates, info


def recover_model_dir(model_next: Path) -> None:
    """Finish moving a selected checkpoint into models/m{t+1} when a kill left it half way (a cheap no-op else)."""
    model_next = Path(model_next)
    staged = _staged_dir(model_next)
    if staged.exists() and not model_next.exists():
        _rename(staged, model_next)


def _move_winner(decision: dict, model_next: Path) -> None:
    """Put the winning checkpoint at models/m{t+1}. Each step is a rename and the whole is safe to repeat."""
    if decision["final"]:
        return  # the final model is already there
    source = checkpoint_dir(model_next) / decision["winner"]
    staged, replaced = _staged_dir(model_next), _replaced_dir(model_next)
    if source.exists():
        _discard(staged)
        _rename(source, staged)
    if staged.exists():
        if model_next.exists():
            _discard(replaced)
            _rename(model_next, replaced)
        _rename(staged, model_next)


def _selection_prompts(cfg) -> list[str]:
    path = resolve_data_path(selection_prompts_path(cfg))
    prompts = [r["prompt"] for r in iter_jsonl(path, {"prompt": str})][: cfg.eval.selection_limit]
    if not prompts:
        raise DataError(f"{path}: no selection prompts")
    return prompts


def _find(journal: ResumableJsonlWriter, record_id: str) -> dict | None:
    return next((r for r in journal.records if r["id"] == record_id), None)


def _evaluate(cfg, model_prev: Path, candidates: list[Candidate], run_id: str,
              journal: ResumableJsonlWriter) -> dict:
    """Answers of M_t and of every candidate, then the verdicts of every candidate vs M_t; the decision."""
    from srlm.evaluation.winrate import pairwise_winrate
    from srlm.stages.evaluate import _answers

    prompts = _selection_prompts(cfg)

    def answers_of(name: str, path: Path) -> list[str]:
        record = _find(journal, f"answers/{name}")
        if record is None:
            record = {"id": f"answers/{name}", "run_id": run_id, "model": str(path),
                      "answers": _answers(cfg, str(path), prompts)}
            if name == "previous":
                record["prompts"] = prompts  # once: every candidate answers the same prompts
            journal.append([record])
        return record["answers"]

    previous = answers_of("previous", model_prev)
    answers = {c.name: answers_of(c.name, c.path) for c in candidates}
    pending = [c for c in candidates if _find(journal, f"verdicts/{c.name}") is None]
    if pending:
        judge_path = str(model_prev) if cfg.eval.selection_judge == "previous" else cfg.eval.selection_judge
        with closing(backend_for(cfg, judge_path)) as judge:
            for c in pending:
                result = pairwise_winrate(prompts, answers[c.name], previous, judge, seed=cfg.seed,
                                          max_new_tokens=cfg.eval.max_new_tokens,
                                          max_prompt_tokens=cfg.judge.max_prompt_tokens)
                # The texts are in the answers records already; keep the judgements and verdicts.
                items = [{k: v for k, v in item.items() if k not in ("prompt", "answer_a", "answer_b")}
                         for item in result["items"]]
                journal.append([{"id": f"verdicts/{c.name}", "run_id": run_id, "candidate": c.name, "step": c.step,
                                 "final": c.final, "metrics": result["metrics"], "items": items}])
    verdicts = [_find(journal, f"verdicts/{c.name}") for c in candidates]
    best = max(verdicts, key=lambda r: (r["metrics"]["win_rate"], r["step"]))
    decision = {"id": "decision", "run_id": run_id, "winner": best["candidate"], "step": best["step"],
                "final": best["final"]}
    journal.append([decision])
    return decision


def _table(cfg, model_prev: Path, journal: ResumableJsonlWriter, decision: dict) -> dict:
    verdicts = sorted((r for r in journal.records if r["id"].startswith("verdicts/")), key=lambda r: r["step"])
    rows = []
    for r in verdicts:
        m = r["metrics"]
        rows.append({"candidate": r["candidate"], "step": r["step"], "final": r["final"],
                     "selected": r["candidate"] == decision["winner"], "win": m["win"], "tie": m["tie"],
                     "loss": m["loss"], "win_rate": m["win_rate"], "win_rate_ci": m.get("win_rate_ci"),
                     "n": m["n"], "n_unparsed": m["n_unparsed"],
                     "n_order_disagreements": m["n_order_disagreements"], "mean_len": m.get("mean_len_a"),
                     "mean_len_previous": m.get("mean_len_b")})
    judge = cfg.eval.selection_judge
    return {
        "selected": decision["winner"],
        "selected_step": decision["step"],
        "selected_final": decision["final"],
        "final_step": max(r["step"] for r in verdicts),
        "previous_model": str(model_prev),
        "judge": "previous (M_t)" if judge == "previous" else judge,
        "prompts": selection_prompts_path(cfg),
        "n_prompts": rows[0]["n"] if rows else 0,
        "rule": SELECTION_RULE,
        "candidates": rows,
    }


def run_selection(cfg, model_prev: Path, model_next: Path, out_dir: Path) -> dict:
    """Pick M_t+1 among the checkpoints of the DPO run that trained `model_next`; returns the selection table.

    Writes out_dir/selection.json and out_dir/selection.items.jsonl, leaves the winner at `model_next`, and
    deletes the other checkpoints.
    """
    model_prev, model_next, out_dir = Path(model_prev), Path(model_next), Path(out_dir)
    table_path, items_path = out_dir / "selection.json", out_dir / "selection.items.jsonl"
    ckpt_dir = checkpoint_dir(model_next)
    journal = ResumableJsonlWriter(items_path, "id")
    decision = _find(journal, "decision")
    if ckpt_dir.exists():
        info = read_json(ckpt_dir / TRAINING_FILE)
        if any(r.get("run_id") != info.get("run_id") for r in journal.records):
            # Records about the checkpoints of an earlier DPO run (it was trained again since): start over.
            journal.partial_path.unlink()
            journal = ResumableJsonlWriter(items_path, "id")
            decision = None
            _discard(_staged_dir(model_next))
        if decision is None:
            candidates, info = list_candidates(model_next)
            print(f"srlm: selecting M_t+1 among {len(candidates)} checkpoints: "
                  f"{', '.join(c.name for c in candidates)}", flush=True)
            decision = _evaluate(cfg, model_prev, candidates, info["run_id"], journal)
    elif decision is None:
        if table_path.exists() and not journal.records:
            return read_json(table_path)  # finished before a kill; only the manifest had not recorded it
        raise SrlmError(f"{ckpt_dir}: no DPO checkpoints to select from; train M_t+1 again with "
                        "dpo.checkpoint_every_steps set")

    _move_winner(decision, model_next)
    table = _table(cfg, model_prev, journal, decision)
    write_json(table_path, table)
    write_jsonl(items_path, [{k: v for k, v in r.items() if k != "run_id"} for r in journal.records])
    # The checkpoints go before the partial records: a restart in between still finds the decision.
    _discard(ckpt_dir)
    _discard(_replaced_dir(model_next))
    _discard(_staged_dir(model_next))  # only a kill between renames followed by a new DPO run can leave one
    journal.partial_path.unlink(missing_ok=True)
    return table

