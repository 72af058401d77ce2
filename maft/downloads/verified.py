"""Downloads of known files (SAM checkpoints, dataset archives) and of CLIP weights, the ecosystem's way.

The files and their recorded sizes and checksums are data: ``maft/assets/downloads.yaml``, read by
:mod:`maft.downloads.registry`. Downloads go
through pooch (temporary file in the target folder, checksum check, atomic move into place, nothing left
behind on a mismatch); this module adds only what pooch lacks:

- resume: the bytes of an interrupted download are kept in ``<file>.part`` (never under the final name)
  and the next run asks for the rest with an HTTP Range request;
- ``MAFT_MIRROR=<base URL>``: replaces scheme and host of every official URL, ``<base><path of url>``
  (for institutes that mirror these files, and for the tests' loopback server);
- an offline switch, ``MAFT_OFFLINE=1`` (``HF_HUB_OFFLINE=1`` is honoured too): nothing is fetched, a
  missing file fails at once naming the file and both ways to provide it;
- files whose authors publish no checksum are checked by their archive's own CRCs before they are placed;
- a file that is already in place is verified once and remembered (``.maft-verified.json`` beside it,
  keyed by size and modification time), so a 19 GB archive is not re-hashed on every run; a corrupt file
  in place is reported, never deleted (it may be the user's).

CLIP weights: :func:`download_clip_weights` leaves tags on the Hugging Face hub to open_clip and the hub
(their own download, cache and progress bar) and only makes open_clip's plain-URL route atomic. Dataset
recipes (unpack, prepare) live in :mod:`maft.downloads.dataset_recipes`; the command line in :mod:`maft.cli.download`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import open_clip
import pooch
import requests
import urllib3
from filelock import FileLock

from ..utils import paths
from ..utils.progress import progress_bar
from .registry import ARCHIVE_SUFFIXES, KnownFile, Registry, human_size, load_registry

VERIFIED_RECORD = ".maft-verified.json"
DOWNLOAD_LOCK = ".maft-download.lock"
_TRUE = {"1", "true", "yes", "on"}
CHUNK = 1 << 20  # reading files
STREAM_CHUNK = 1 << 16  # network reads: a read cut short loses its chunk (urllib3 drops it), so keep it small


class DownloadError(OSError):
    """A download or verification failed; the message names the file and what to do."""


class ChecksumError(DownloadError, ValueError):
    """A file does not match its recorded checksum or size (corrupt or truncated)."""


class MissingFileError(DownloadError, FileNotFoundError):
    """A file is not here and will not be downloaded (offline, or it needs a registration)."""


class DownloadInterrupted(DownloadError):
    """The transfer stopped early; the bytes so far are kept in ``<file>.part`` for the next run."""


# ------------------------------------------------------------------------------ environment switches


def offline_mode() -> bool:
    """True when ``MAFT_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on (read at each call)."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("MAFT_OFFLINE", "HF_HUB_OFFLINE"))


def mirror_url(url: str) -> str:
    """``url`` with scheme and host replaced by ``$MAFT_MIRROR`` (unchanged when it is unset)."""
    mirror = os.environ.get("MAFT_MIRROR", "").strip()
    if not mirror:
        return url
    parts = urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def weights_dir() -> Path:
    """Where downloaded SAM checkpoints go by default: ``$MAFT_CACHE/weights`` (``~/.cache/maft/weights``)."""
    return paths.cache_dir("weights")


# ------------------------------------------------------------------------------------- verification


def hash_file(path: Path, algorithm: str, progress: bool = True) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle, progress_bar(total=path.stat().st_size, unit="B", unit_scale=True,
                                           desc=f"{algorithm} {path.name}", disable=not progress,
                                           leave=False) as bar:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def check_archive(path: Path, progress: bool = True, name: str | None = None) -> None:
    """Read a zip or gzip-compressed archive through, so its CRC-32s are checked; raise ChecksumError.

    ``name`` (default: the file's own) tells the archive type, for a download still named ``<name>.part``.
    """
    name = name or path.name
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
                with progress_bar(total=sum(m.file_size for m in members), unit="B", unit_scale=True,
                          desc=f"checking {name}", disable=not progress, leave=False) as bar:
                    for member in members:
                        with archive.open(member) as handle:  # raises BadZipFile on a CRC mismatch
                            for block in iter(lambda: handle.read(CHUNK), b""):
                                bar.update(len(block))
        elif name.endswith(ARCHIVE_SUFFIXES):
            with tarfile.open(path, "r:*") as archive:
                for member in progress_bar(archive, desc=f"checking {name}", unit=" files", disable=not progress,
                                   leave=False):
                    if member.isfile():
                        handle = archive.extractfile(member)
                        while handle.read(CHUNK):
                            pass
        else:
            raise ChecksumError(f"{path}: no checksum is recorded and it is not an archive that carries "
                                f"its own CRCs, so it cannot be verified")
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as error:
        raise ChecksumError(f"{path} is corrupt or truncated ({error}); no checksum is published for it, "
                            f"and its archive CRCs do not hold") from None


def _records(directory: Path) -> dict:
    try:
        return json.loads((directory / VERIFIED_RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def is_verified(entry: KnownFile, path: Path) -> bool:
    """Whether ``path`` was verified against ``entry`` and has not changed since (no hashing)."""
    record = _records(path.parent).get(entry.name)
    return bool(path.is_file() and record and record.get("hash") == entry.hash and
                {k: record.get(k) for k in ("size", "mtime_ns")} == _stamp(path))


def _remember_verified(entry: KnownFile, path: Path) -> None:
    records = _records(path.parent)
    records[entry.name] = {"hash": entry.hash, **_stamp(path)}
    tmp = path.parent / f"{VERIFIED_RECORD}.tmp"
    tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
    os.replace(tmp, path.parent / VERIFIED_RECORD)


def verify_file(entry: KnownFile, path: Path, progress: bool = True) -> Path:
    """Check a file in place against its registry entry; raise ChecksumError naming it (never deletes it)."""
    path = Path(path)
    if is_verified(entry, path):
        return path
    size = path.stat().st_size
    if entry.hash is None:
        check_archive(path, progress)
    else:
        algorithm, expected = entry.hash.split(":")
        actual = hash_file(path, algorithm, progress)
        if actual != expected:
            size_note = f", {size} bytes where {entry.size} are recorded" if entry.size and size != entry.size else ""
            raise ChecksumError(f"{path} is corrupt or truncated: its {algorithm} is {actual}, expected "
                                f"{entry.hash}{size_note}. Delete it (or replace it with a good copy) and run "
                                f"again to download it afresh.")
    _remember_verified(entry, path)
    return path


# ----------------------------------------------------------------------------------------- download


class ResumableDownloader:
    """A pooch downloader that resumes from ``<file>.part`` with an HTTP Range request.

    pooch hands it a temporary file in the target folder, checks the hash of what it wrote and then moves
    it into place (or deletes it on a mismatch). The partial bytes live in ``<file>.part``, which is only
    renamed onto pooch's temporary file once the transfer is complete, so an interrupted run keeps them
    for the next one and nothing incomplete ever carries the final name.
    """

    def __init__(self, entry: KnownFile, part: Path, progress: bool = True, timeout: float = 60.0):
        self.entry, self.part, self.progress, self.timeout = entry, Path(part), progress, timeout
        self.fetched = 0  # bytes transferred by this run (a resumed run fetches only the rest)
        self.received = 0  # size of the complete file handed to pooch

    def __call__(self, url: str, output_file, pooch, check_only: bool = False):
        if check_only:
            return requests.head(url, timeout=self.timeout, allow_redirects=True).status_code == 200
        start = self.part.stat().st_size if self.part.exists() else 0
        if self.entry.size is not None and start > self.entry.size:
            self.part.unlink()  # longer than the file can be: not a prefix of it
            start = 0
        headers = {"Range": f"bytes={start}-"} if start else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if start and response.status_code == 416:  # nothing left to send: the part may be complete
                total = _range_total(response.headers.get("Content-Range"))
                if total != start:
                    self.part.unlink()
                    return self(url, output_file, pooch)
            else:
                response.raise_for_status()
                if response.status_code == 206 and _range_start(response) != start:
                    if not start:
                        raise DownloadError(f"{url} answered a plain request with a partial response (206)")
                    self.part.unlink()  # a range we did not ask for: start over with a plain request
                    return self(url, output_file, pooch)
                resumed = response.status_code == 206
                start = start if resumed else 0  # a plain 200 means the server ignored the Range header
                length = response.headers.get("Content-Length")
                total = start + int(length) if length is not None else self.entry.size
                self._stream(response, url, start, total, mode="ab" if resumed else "wb")
        self.received = self.part.stat().st_size
        if self.entry.hash is None and self.entry.name.endswith(ARCHIVE_SUFFIXES):
            if self.entry.size is not None and self.received != self.entry.size:
                self.part.unlink()
                raise ChecksumError(f"{self.entry.name} from {url} has {self.received} bytes, {self.entry.size} "
                                    f"are recorded: corrupt or truncated; deleted")
            try:
                check_archive(self.part, self.progress, name=self.entry.name)
            except ChecksumError:
                self.part.unlink()
                raise
        os.replace(self.part, output_file)

    def _stream(self, response, url: str, start: int, total: int | None, mode: str) -> None:
        with open(self.part, mode) as out, progress_bar(total=total, initial=start, unit="B", unit_scale=True,
                                                unit_divisor=1024, desc=self.entry.name,
                                                disable=not self.progress) as bar:
            try:
                for block in response.iter_content(chunk_size=STREAM_CHUNK):
                    out.write(block)
                    self.fetched += len(block)
                    bar.update(len(block))
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
                out.flush()
                raise DownloadInterrupted(self._interrupted(url, total, error)) from None
        if total is not None and self.part.stat().st_size < total:
            raise DownloadInterrupted(self._interrupted(url, total, "the server closed the connection"))

    def _interrupted(self, url: str, total: int | None, why) -> str:
        return (f"download of {self.entry.name} from {url} stopped after {self.part.stat().st_size} of "
                f"{total if total is not None else '?'} bytes ({why}). The bytes so far are kept in {self.part}; "
                f"run the same command again to resume.")


def _range_total(header: str | None) -> int | None:
    match = re.search(r"/(\d+)\s*$", header or "")
    return int(match.group(1)) if match else None


def _range_start(response) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def missing_message(entry: KnownFile, target: Path) -> str:
    """Why ``target`` cannot be fetched now, and the two ways to provide it."""
    if entry.manual:
        return (f"{entry.name} is not at {target}. {entry.manual}, put it at {target} and run again; it is "
                f"verified before use ({entry.checksum_source}).")
    return (f"{entry.name} is not at {target}, and downloads are off (MAFT_OFFLINE or HF_HUB_OFFLINE is set). "
            f"Either unset the switch and run again to download it from {mirror_url(entry.url)} (or set "
            f"MAFT_MIRROR to a mirror), or copy the file to {target} ({entry.size_text}, "
            f"{entry.hash or 'no published checksum'}).")


def fetch(name: str, directory: str | os.PathLike, progress: bool = True, registry: Registry | None = None) -> Path:
    """The known file ``name`` in ``directory``: verified if there, else downloaded, verified and placed.

    Raises :class:`MissingFileError` (offline, or a registration is needed), :class:`ChecksumError` (corrupt
    or truncated; nothing is left under the final name), :class:`DownloadInterrupted` (the bytes so far are
    kept in ``<name>.part`` and the next call resumes) or :class:`DownloadError`.
    """
    entry = (registry or load_registry()).file(name)
    directory = Path(directory).expanduser().resolve()
    target = directory / entry.name
    if target.is_file():
        return verify_file(entry, target, progress)
    if entry.manual or offline_mode():
        raise MissingFileError(missing_message(entry, target))
    download(entry, directory, progress)
    return verify_file(entry, target, progress)  # recorded when this process downloaded it, else checked now


def download(entry: KnownFile, directory: Path, progress: bool = True) -> Path:
    """Download ``entry`` (through ``$MAFT_MIRROR`` if set) into ``directory`` with pooch, resuming a part."""
    url = mirror_url(entry.url)
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / f"{entry.name}.part"
    if entry.size is not None:  # say so now rather than fail with a full disk an hour in
        needed = entry.size - (part.stat().st_size if part.exists() else 0)
        free = shutil.disk_usage(directory).free
        if needed > free:
            raise DownloadError(f"{entry.name} needs {human_size(needed)} more in {directory}, which has "
                                f"{human_size(free)} free")
    downloader = ResumableDownloader(entry, part, progress)
    # One download per folder at a time, across processes (torchrun ranks share the .part files).
    with FileLock(directory / DOWNLOAD_LOCK):
        if (directory / entry.name).is_file():  # another process finished it while this one waited
            return directory / entry.name
        _retrieve(entry, url, directory, downloader)
        _remember_verified(entry, directory / entry.name)
    return directory / entry.name


def _retrieve(entry: KnownFile, url: str, directory: Path, downloader: ResumableDownloader) -> None:
    try:
        pooch.retrieve(url, known_hash=entry.hash, fname=entry.name, path=directory, downloader=downloader)
    except ChecksumError:
        raise
    except ValueError as error:  # pooch's hash check: it has already deleted the download
        got = f" ({downloader.received} bytes; {entry.size} recorded)" if entry.size else ""
        raise ChecksumError(f"{entry.name} downloaded from {url} is corrupt or truncated{got}: expected "
                            f"{entry.hash}. Nothing was kept; run again to retry. ({error})") from None
    except requests.RequestException as error:
        raise DownloadError(f"could not download {entry.name} from {url}: {error}") from None


def sam_checkpoint(model_type: str, directory: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The official SAM checkpoint of ``model_type`` (vit_h, vit_l, vit_b), downloaded when missing."""
    registry = load_registry()
    # Official names are sam_<model type>_<md5 prefix>.pth, e.g. sam_vit_b_01ec64.pth.
    names = {name.removeprefix("sam_").rsplit("_", 1)[0]: name
             for name, entry in registry.files.items() if entry.group == "sam"}
    if model_type not in names:
        raise ValueError(f"unknown SAM model type {model_type!r}; choose from {', '.join(sorted(names))}")
    return fetch(names[model_type], directory or weights_dir(), progress=progress, registry=registry)


# ------------------------------------------------------------------------------------------- CLIP


def download_clip_weights(tag_cfg: dict, cache_dir: str | None = None) -> str:
    """Fetch a tag's weights the way open_clip does, into open_clip's cache; returns the file.

    Tags on the Hugging Face hub go through ``open_clip.pretrained.download_pretrained`` unchanged (the
    hub's download, cache, progress bar and ``HF_ENDPOINT``). open_clip's route for URL-only tags writes
    straight to the final file name and does not notice a connection that closes early, so a later run
    would load a truncated file: such a file is fetched here into the very place open_clip looks
    (atomic, resumable, ``MAFT_MIRROR`` honoured), and open_clip then checks and returns it.
    """
    url = tag_cfg.get("url", "")
    if url and not tag_cfg.get("file") and not (tag_cfg.get("hf_hub") and open_clip.pretrained.has_hf_hub()):
        directory = Path(cache_dir or os.path.expanduser("~/.cache/clip")).resolve()
        if not (directory / os.path.basename(url)).is_file():
            download(KnownFile(name=os.path.basename(url), url=url, group="clip"), directory)
    path = open_clip.pretrained.download_pretrained(tag_cfg, cache_dir=cache_dir)
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"open_clip returned no weights file for {tag_cfg}")
    return path
