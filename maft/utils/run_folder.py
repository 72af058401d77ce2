"""A training run's folder: claimed atomically, locked while the run writes it, cleaned only of its own files.

``maft train`` writes ``metrics.jsonl``, ``config.yaml``, ``summary.json``, ``checkpoint.pt`` and
``checkpoints/step_NNNNNN.pt`` into one folder. Two runs writing the same folder would interleave their
metrics and mix their config and checkpoints, so a run holds a lock on its folder for as long as it
writes there (``.maft-run.lock``, a ``filelock`` lock that the operating system releases if the process
dies) and records who it is beside it (``.maft-run.json``: pid, host, start time, command line). A
second run into a locked folder, with or without ``--overwrite``, or resuming into it, fails at once
naming the live run. A new folder is created with ``os.mkdir``, which succeeds for exactly one of two
runs racing for the same name; the other moves on to the next ``-N`` name (or meets the lock).

``--overwrite`` deletes only what a run writes (the names above), never other files a user put there.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import socket
import sys
from pathlib import Path

from filelock import FileLock, Timeout

from .paths import atomic_write

LOCK_NAME = ".maft-run.lock"
OWNER_NAME = ".maft-run.json"
RUN_FILES = ("metrics.jsonl", "config.yaml", "summary.json", "checkpoint.pt")  # and checkpoints/step_*.pt
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_FILE = re.compile(r"step_\d{6}\.pt")  # maft.train's checkpoints/step_NNNNNN.pt


class RunFolderBusy(FileExistsError):
    """Another live run holds the folder; the message names it (pid, host, start time, command)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the last checkpoint is and how to resume."""


class RunFolder:
    """A claimed run folder (``path``), locked until :meth:`release` (or the process ends)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = FileLock(str(path / LOCK_NAME))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunFolderBusy(f"{path} is in use by a live run ({describe_owner(path)}); wait for it to end or "
                                "write elsewhere (train.out_dir, or another name)") from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "command": " ".join(sys.argv)}
        atomic_write(path / OWNER_NAME, lambda partial: partial.write_text(json.dumps(owner) + "\n"))

    def release(self) -> None:
        """Unlock; a folder left empty (the run failed before writing anything) is removed."""
        if self._lock.is_locked:
            (self.path / OWNER_NAME).unlink(missing_ok=True)
            self._lock.release()
            if self.path.is_dir() and not holds_run(self.path):
                (self.path / LOCK_NAME).unlink(missing_ok=True)
                try:
                    self.path.rmdir()
                except OSError:  # another run claimed it meanwhile
                    pass


def describe_owner(path: Path) -> str:
    """"pid 123 on host, started <time>: <command>" from a folder's owner record (or what is unknown)."""
    try:
        owner = json.loads((path / OWNER_NAME).read_text())
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}: {owner['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its owner record is missing; it is starting or was just stopped"


def holds_run(path: Path) -> bool:
    """True when ``path`` holds anything beyond the lock's own files (a finished run, or user files)."""
    return any(entry.name not in (LOCK_NAME, OWNER_NAME) for entry in path.iterdir())


def delete_run_files(path: Path) -> list[Path]:
    """Delete what a training run writes in ``path`` (``--overwrite``); other files stay. Returns them."""
    deleted = [path / name for name in RUN_FILES if (path / name).is_file()]
    checkpoints = path / CHECKPOINTS_DIR
    if checkpoints.is_dir():
        deleted += [entry for entry in checkpoints.iterdir() if entry.is_file() and CHECKPOINT_FILE.fullmatch(entry.name)]
    for file in deleted:
        file.unlink()
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    return deleted


def claim_run_folder(base: Path, overwrite: bool = False, resume: bool = False) -> RunFolder:
    """Claim ``base`` for a run, locked (see the module doc).

    ``resume``: continue the run in ``base`` (its files are kept). Otherwise an empty or new ``base``
    is used; one holding a finished run is cleaned (``overwrite``, run files only) or left for the next
    free ``<base>-N``. A ``base`` that a live run holds raises :class:`RunFolderBusy` in every case.
    """
    base.parent.mkdir(parents=True, exist_ok=True)
    base.mkdir(exist_ok=True)
    folder = RunFolder(base)  # raises RunFolderBusy while another run writes there
    if resume or not holds_run(base):
        return folder
    if overwrite:
        delete_run_files(base)
        return folder
    folder.release()
    number = 2
    while True:
        fresh = base.parent / f"{base.name}-{number}"
        try:
            fresh.mkdir()  # atomic: of two runs racing for this name, one gets it
        except FileExistsError:
            number += 1
            continue
        print(f"maft train: {base} already holds a run; writing to {fresh} (use --overwrite to replace it)")
        return RunFolder(fresh)


def keep_steps_up_to(metrics: Path, step: int) -> int:
    """Drop the rows of ``metrics.jsonl`` logged after ``step`` (a resumed run logs them again), and a
    torn last line; returns how many rows were dropped."""
    if not metrics.is_file():
        return 0
    kept, dropped = [], 0
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic_write(metrics, lambda partial: partial.write_text("".join(f"{line}\n" for line in kept)))
    return dropped


def interrupted(step: int, iterations: int, checkpoint: str | os.PathLike | None) -> TrainingInterrupted:
    """The one line Ctrl-C leaves: where the run stopped, its last checkpoint, the command to resume."""
    if checkpoint is None:
        return TrainingInterrupted(f"stopped at step {step}/{iterations} before any checkpoint was written "
                                   "(train.checkpoint_every); start the run again")
    return TrainingInterrupted(f"stopped at step {step}/{iterations}; last checkpoint {checkpoint}; resume with: "
                               f"maft train --resume {checkpoint}")
