"""Where things live: the repository, dataset roots and the outputs folder; writing and reading there.

:func:`check_output_path` is the one check every entry point runs on its output paths before the long
work; :func:`read_yaml` reads configs, profiles and specs with errors that name the file and line;
:func:`write_json` is the one JSON writer (atomic, NaN as null).

Dataset roots are resolved in a fixed order (see :func:`dataset_dir`): an explicit argument, the
``MAFT_DATA`` environment variable, the repository's ``data/`` folder, then ``../shared/data`` beside
the repository (a read-only sample of real VOC, COCO and ADE20K data).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import yaml

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # maft/
REPO_ROOT = PACKAGE_DIR.parent
ASSETS_DIR = PACKAGE_DIR / "assets"


def _outputs_root() -> Path:
    return Path(os.environ.get("MAFT_OUTPUTS", REPO_ROOT / "outputs"))


def outputs_dir(*parts: str, create: bool = True) -> Path:
    """``outputs/<parts...>`` (or ``$MAFT_OUTPUTS/<parts...>``), created on demand."""
    path = _outputs_root().joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(*parts: str) -> Path:
    """A writable cache (``$MAFT_CACHE`` or ``~/.cache/maft``), never inside a dataset root."""
    base = Path(os.environ.get("MAFT_CACHE", Path.home() / ".cache" / "maft"))
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_roots(root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """Candidate dataset roots in resolution order, each with where it came from."""
    if root is not None:
        return [("argument", Path(root))]
    candidates = []
    if os.environ.get("MAFT_DATA"):
        candidates.append(("MAFT_DATA", Path(os.environ["MAFT_DATA"])))
    candidates.append(("data/", REPO_ROOT / "data"))
    candidates.append(("../shared/data", REPO_ROOT.parent / "shared" / "data"))
    return candidates


def dataset_dir(folder_names: str | list[str], root: str | os.PathLike | None = None) -> Path:
    """The first ``<root>/<folder>`` that exists, trying roots in order and folder names in order.

    An explicit ``root`` (or ``MAFT_DATA``) that lacks the dataset is an error rather than a silent
    fall-back, so a user who points somewhere never gets other data than what they named.
    """
    names = [folder_names] if isinstance(folder_names, str) else list(folder_names)
    tried = []
    for source, base in data_roots(root):
        for name in names:
            path = base / name
            if path.is_dir():
                return path
            tried.append(str(path))
        if source in ("argument", "MAFT_DATA"):
            break
    raise FileNotFoundError(
        f"dataset folder not found; looked for {', '.join(tried)}. Prepare it with "
        f"`maft data prepare <dataset> --src <official download> --dst <root>` or set MAFT_DATA."
    )


def resolve_output_path(out: str | os.PathLike | None, name: str, default: tuple[str, ...]) -> Path:
    """Where a run writes: ``out`` with ``<name>`` filled in.

    None gives ``outputs/<default...>`` (with ``<name>`` filled in there too); a relative path starting
    with ``outputs/`` goes under the outputs root (``$MAFT_OUTPUTS``), so every command honours it the
    same way; any other path is used as given.
    """
    if out is None:
        return outputs_dir(*(part.replace("<name>", name) for part in default), create=False)
    path = Path(str(out).replace("<name>", name))
    if not path.is_absolute() and path.parts and path.parts[0] == "outputs":
        return outputs_dir(*path.parts[1:], create=False)
    return path


def check_output_path(path: str | os.PathLike, argument: str, directory: bool = False) -> Path:
    """``path`` as a Path, after checking now that a run will be able to write it; creates nothing.

    Every entry point calls this before its long work (inference, evaluation, training), so a bad
    ``argument`` (``--out``, ``eval.out``, ``train.out_dir``...) fails at once with a message naming it,
    not with an OSError when the results are written minutes later. ``directory``: ``path`` is a folder
    to create or reuse, else a file to create or replace. Errors (OSError subclasses, which the CLI
    reports as one line): NotADirectoryError when ``path`` or one of its parents is a regular file,
    IsADirectoryError when a file path is an existing folder, PermissionError when the nearest existing
    folder cannot be written (read-only filesystem, permissions).
    """
    path = Path(path)
    target = path.absolute()
    if directory and target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{argument} {path}: is a file, not a folder")
    if not directory and target.is_dir():
        raise IsADirectoryError(f"{argument} {path}: is a folder; give a file path")
    existing = target if directory else target.parent
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{argument} {path}: cannot be created, {existing} is not a folder")
    # Writing a probe is the only check that holds everywhere: permission bits mean nothing to root,
    # while a read-only mount, ACLs or a full quota stop everyone, and os.access misses some of those.
    try:
        handle, probe = tempfile.mkstemp(prefix=".maft-write-check-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise PermissionError(f"{argument} {path}: cannot write in {existing} ({reason})") from None
    if target.is_file() and not os.access(target, os.W_OK):
        raise PermissionError(f"{argument} {path}: the existing file cannot be replaced (not writable)")
    return path


def read_yaml(path: str | os.PathLike) -> Any:
    """The parsed YAML file (configs, profiles, class specs); a syntax error is a ValueError naming the
    file and its line, so the CLI reports it as one line instead of PyYAML's traceback."""
    try:
        with open(path) as handle:
            return yaml.safe_load(handle)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"{path}{where}: not valid YAML: {problem}") from None


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(partial)`` on a temporary file beside ``path``, then rename it to ``path``.

    The rename is atomic, so a concurrent reader (or a later run after a crash) never sees a
    half-written checkpoint, cache entry or metrics file under the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return path


def json_ready(value):
    """``value`` as plain JSON data: mappings (typed configs included) and sequences recursively, tensors and
    numpy values as Python numbers, NaN and infinities as None (JSON has neither)."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(data, path: str | os.PathLike, overwrite: bool = True, sort_keys: bool = False,
               indent: int = 2, what: str = "the output", ensure_ascii: bool = True) -> Path:
    """The one JSON writer: :func:`json_ready` data, written atomically (UTF-8); without ``overwrite`` an
    existing file is an error (``what`` names the setting that chose the path)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) or choose another {what}")
    text = json.dumps(json_ready(data), indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii) + "\n"
    return atomic_write(path, lambda partial: partial.write_text(text, encoding="utf-8"))
