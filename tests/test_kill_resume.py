"""Kill anywhere, resume exactly: `srlm run` is SIGKILLed inside each stage, resumed, and must end with the same
files as an uninterrupted run with the same seed: same ids, same content, no duplicates, nothing lost, same weights.

The default test run kills three times (SFT, respond, judge); `-m slow` sweeps every stage of both iterations, then
sweeps again killing each stage twice in a row (27 kills).
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from test_loop import SMALL, snapshot

STAGES = ["sft", "iter_1/prompts", "iter_1/respond", "iter_1/judge", "iter_1/dpo",
          "iter_2/prompts", "iter_2/respond", "iter_2/judge", "iter_2/dpo"]


def start(run_dir, model_dir, delay="0"):
    args = [sys.executable, "-m", "srlm", "run", "--recipe", "quickstart", "--run-dir", str(run_dir),
            f"model.name_or_path={model_dir}", *SMALL]
    env = {**os.environ, "SRLM_FAKE_DELAY_SECONDS": delay}
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stage_status(run_dir, stage):
    try:
        return json.loads((run_dir / "manifest.json").read_text())["stages"].get(stage, {}).get("status")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_with_kills(run_dir, model_dir, targets, rng):
    """Start the run once per target, SIGKILL it while that stage is running; then let it finish. Returns kills."""
    kills = []
    for target in targets:
        if stage_status(run_dir, target) == "done":
            continue
        proc = start(run_dir, model_dir, delay="0.1")
        deadline = time.time() + 300
        while stage_status(run_dir, target) != "running" and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        if proc.poll() is not None:
            continue
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(target)
    final = start(run_dir, model_dir)
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err[-2000:]
    return kills


def weights(run_dir):
    return {t: hashlib.sha256((run_dir / "models" / f"m{t}" / "model.safetensors").read_bytes()).hexdigest()
            for t in (1, 2, 3)}


@pytest.fixture(scope="module")
def clean_run(tiny_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("clean") / "run"
    proc = start(run_dir, tiny_model_dir)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return run_dir


def check_same_as_clean(killed, clean):
    assert snapshot(killed) == snapshot(clean)
    for name in ("responses", "judgements"):
        for t in (1, 2):
            records = [json.loads(line) for line in (killed / f"iter_{t}" / f"{name}.jsonl").read_text().splitlines()]
            assert len({r["response_id"] for r in records}) == len(records) == 24
    assert weights(killed) == weights(clean)
    leftovers = [p for p in killed.rglob("*") if p.name.endswith((".partial", ".tmp", ".trainer", ".saving"))]
    assert leftovers == []


def test_three_kills_in_sft_respond_and_judge(tiny_model_dir, tmp_path, clean_run):
    killed = tmp_path / "killed"
    kills = run_with_kills(killed, tiny_model_dir, ["sft", "iter_1/respond", "iter_1/judge"], random.Random(0))
    assert len(kills) == 3
    check_same_as_clean(killed, clean_run)


@pytest.mark.slow
def test_twenty_kills_across_every_stage(tiny_model_dir, tmp_path, clean_run):
    killed = tmp_path / "killed"
    rng = random.Random(1)
    kills = run_with_kills(killed, tiny_model_dir, STAGES, rng)
    # A second sweep on a fresh directory with other kill delays, killing every stage twice in a row: the second
    # kill lands in a stage that is itself resuming.
    killed2 = tmp_path / "killed2"
    kills += run_with_kills(killed2, tiny_model_dir, [stage for stage in STAGES for _ in range(2)], rng)
    print(f"{len(kills)} kills: {kills}")
    assert len(kills) >= 20
    check_same_as_clean(killed, clean_run)
    check_same_as_clean(killed2, clean_run)
