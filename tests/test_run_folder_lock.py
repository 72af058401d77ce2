"""A training run's folder is claimed atomically and locked while the run writes it (issue 18).

Two real ``maft train`` processes where it matters (the lock is between processes), the tiny CPU config
made smaller still; Ctrl-C is a real SIGINT after the first checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maft.config import load_config
from maft.train import finetune

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--set", "data.max_images=4", "--set", "train.batch_size=2", "--set", "train.augmentation=false"]


def _default_sigint() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: give the run the SIGINT a user's terminal gives, whatever started the tests.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def maft_train(*args, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MAFT_PROGRESS": "off"}
    return subprocess.Popen([sys.executable, "-m", "maft", "train", "--config", "voc20_tiny_cpu", *SMALL, *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint, **popen)


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {path} appeared: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear within {seconds} s")
        time.sleep(0.2)


def read_steps(folder: Path) -> list[int]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "event" not in row]


def tiny(out_dir: Path, **train) -> dict:
    config = load_config("voc20_tiny_cpu")
    config["data"]["max_images"] = 4
    config["train"].update({"iterations": 4, "batch_size": 2, "augmentation": False, "checkpoint_every": 2,
                            "out_dir": str(out_dir), **train})
    return config


def test_a_live_run_keeps_its_folder_and_ctrl_c_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    # far more steps than the test lasts: the run must still be training when Ctrl-C comes (400 steps were
    # once over before the two refused runs had finished starting)
    live = maft_train("--set", f"train.out_dir={run}", "--set", "train.iterations=100000",
                      "--set", "train.checkpoint_every=20", "--set", "train.lr=1e-3")
    try:
        first = run / "checkpoints" / "step_000020.pt"
        wait_for(first, live)
        # a second run into the live run's folder fails at once, with or without --overwrite, naming it
        for extra in (["--overwrite"], []):
            second = maft_train("--set", f"train.out_dir={run}", "--set", "train.lr=5e-4", *extra)
            out, err = second.communicate(timeout=300)
            assert second.returncode == 2, (out, err)
            assert f"maft train: error: {run} is in use by a live run (pid {live.pid} on " in err
            assert "Traceback" not in err
        assert live.poll() is None and first.exists()  # nothing of the live run was deleted
        assert not (tmp_path / "run-2").exists()
        live.send_signal(signal.SIGINT)
        out, err = live.communicate(timeout=300)
    finally:
        if live.poll() is None:
            live.kill()
    assert live.returncode == 130, (out, err)
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("maft train: interrupted: stopped at step ") and "/100000; last checkpoint " in last
    checkpoint = last.split("last checkpoint ")[1].split(";")[0]
    assert last.endswith(f"resume with: maft train --resume {checkpoint}")
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["config"]["train"]["lr"] == 1e-3 and saved["step"] >= 20
    assert yaml_lr(run) == 1e-3  # config.yaml is the live run's, not the refused one's
    assert not (run / ".maft-run.json").exists()  # released: the next run may use the folder


def yaml_lr(folder: Path) -> float:
    import yaml

    return yaml.safe_load((folder / "config.yaml").read_text())["train"]["lr"]


def test_two_runs_started_together_never_share_a_folder(tmp_path):
    run = tmp_path / "run"
    runs = [maft_train("--set", f"train.out_dir={run}", "--set", "train.iterations=2", "--set", f"train.lr={lr}")
            for lr in (1e-3, 2e-3)]
    results = [(process.returncode, *process.communicate(timeout=600)) for process in runs]
    results = [(process.returncode, out, err) for process, (_, out, err) in zip(runs, results)]
    codes = sorted(code for code, _, _ in results)
    if codes == [0, 2]:  # they overlapped: the second was refused at once, naming the first
        refused = next(err for code, _, err in results if code == 2)
        assert f"{run} is in use by a live run (pid " in refused
    else:  # the first had finished before the second claimed: a fresh -2 folder
        assert codes == [0, 0] and read_steps(tmp_path / "run-2") == [1, 2]
    assert read_steps(run) == [1, 2]  # each step once, from one run
    assert yaml_lr(run) == torch.load(run / "checkpoint.pt", weights_only=False)["config"]["train"]["lr"]


def test_claim_is_exclusive_within_a_process_too(tmp_path):
    from maft.utils.run_folder import RunFolderBusy, claim_run_folder

    folder = claim_run_folder(tmp_path / "run")
    try:
        with pytest.raises(RunFolderBusy, match=rf"run is in use by a live run \(pid {os.getpid()} on "):
            claim_run_folder(tmp_path / "run", overwrite=True)
        with pytest.raises(RunFolderBusy):
            claim_run_folder(tmp_path / "run", resume=True)
    finally:
        folder.release()
    again = claim_run_folder(tmp_path / "run")  # released: free again
    again.release()
    assert not (tmp_path / "run").exists()  # nothing written: the empty folder is not left behind


def test_overwrite_deletes_only_what_a_run_writes(tmp_path):
    run = tmp_path / "run"
    finetune(tiny(run), progress=False)
    assert (run / "checkpoints" / "step_000002.pt").is_file()
    (run / "checkpoints" / "my_notes.txt").write_text("mine")
    (run / "baseline.pt").write_text("mine too")
    summary = finetune(tiny(run, iterations=1, checkpoint_every=None), progress=False, overwrite=True)
    assert summary["out_dir"] == str(run)
    assert (run / "checkpoints" / "my_notes.txt").read_text() == "mine"
    assert (run / "baseline.pt").read_text() == "mine too"
    assert not (run / "checkpoints" / "step_000002.pt").exists()  # the old run's own checkpoint is gone
    assert read_steps(run) == [1]


def test_a_resumed_run_logs_each_step_once(tmp_path):
    run = tmp_path / "run"
    finetune(tiny(run), progress=False)  # 4 steps, a checkpoint at step 2: steps 3 and 4 come after it
    finetune(None, resume=run / "checkpoints" / "step_000002.pt", progress=False)
    assert read_steps(run) == [1, 2, 3, 4]
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row.get("event") for row in events] == [None, None, "resume", None, None]


def test_keep_steps_up_to_drops_later_rows_and_a_torn_line(tmp_path):
    from maft.utils.run_folder import keep_steps_up_to

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2}\n{"event": "resume", "step": 1}\n{"step": 3}\n{"step": 4, "lo')
    assert keep_steps_up_to(metrics, 2) == 2
    assert metrics.read_text() == '{"step": 1}\n{"step": 2}\n{"event": "resume", "step": 1}\n'
