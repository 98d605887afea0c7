"""Check a model folder against a manifest: existence, regular file inside the folder, size, SHA-256."""
from __future__ import annotations

import errno
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from verify.hashes import file_sha256
from verify.manifest import FileEntry, Manifest

OK, MISSING, SIZE, HASH, UNSAFE = "OK", "MISSING", "SIZE", "HASH", "UNSAFE"
UNREADABLE = "UNREADABLE"
"""The file is there but cannot be opened or read (permissions, an I/O error): not verified."""

REPAIR_HINT = "`bge-m3 download` fetches what is missing and replaces what is wrong"
"""What a failed verification advises (``verify`` and the worker's gate), unless a file is
``UNREADABLE``: no download replaces one."""


@dataclass(frozen=True)
class FileResult:
    path: str
    status: str
    expected_size: int
    actual_size: int | None = None
    expected_sha256: str = ""
    actual_sha256: str | None = None
    error: str | None = None
    """Why an ``UNREADABLE`` file could not be read (``Permission denied (EACCES)``)."""

    @property
    def ok(self) -> bool:
        return self.status == OK

    def describe(self) -> str:
        if self.status == OK:
            return f"OK       {self.path}"
        if self.status == MISSING:
            return f"MISSING  {self.path}"
        if self.status == UNSAFE:
            return f"UNSAFE   {self.path}: not a regular file inside the model folder"
        if self.status == UNREADABLE:
            return f"UNREADABLE {self.path}: cannot be read: {self.error}"
        if self.status == SIZE:
            return f"SIZE     {self.path}: expected {self.expected_size} bytes, actual {self.actual_size}"
        return (f"HASH     {self.path}: expected sha256 {self.expected_sha256}, "
                f"actual {self.actual_sha256}")


@dataclass(frozen=True)
class Report:
    model_dir: str
    repo_id: str
    revision: str
    manifest_digest: str
    files: list[FileResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    @property
    def failures(self) -> list[FileResult]:
        return [f for f in self.files if not f.ok]

    def to_dict(self) -> dict:
        return {"model_dir": self.model_dir, "repo_id": self.repo_id, "revision": self.revision,
                "manifest_digest": self.manifest_digest, "ok": self.ok,
                "files": [asdict(f) for f in self.files]}


def resolve_inside(folder: Path, rel: str) -> Path | None:
    """The real path of ``folder/rel`` if it is a regular file that stays inside ``folder``."""
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(root / rel))
    if root not in target.parents:
        return None
    return target


def check_file(folder: Path, entry: FileEntry, keep: dict[str, int] | None = None) -> FileResult:
    """Check one file, reading it through one descriptor. With ``keep``, the descriptor of a file
    that verified is left open in ``keep[entry.path]``: whoever loads it then reads the very
    bytes that were hashed, whatever is renamed over the path meanwhile (``worker.model``)."""
    try:
        return _check_file(folder, entry, keep)
    except OSError as exc:  # one unreadable file is a per-file failure, never a traceback
        return FileResult(entry.path, UNREADABLE, entry.size, expected_sha256=entry.sha256,
                          error=_os_reason(exc))


def _os_reason(exc: OSError) -> str:
    """``Permission denied (EACCES)``: no path (the report names the file), no ``[Errno 13]``."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or type(exc).__name__
    return f"{text} ({name})" if name else text


def _check_file(folder: Path, entry: FileEntry, keep: dict[str, int] | None) -> FileResult:
    path = Path(folder) / entry.path
    if not path.exists() and not path.is_symlink():
        return FileResult(entry.path, MISSING, entry.size, expected_sha256=entry.sha256)
    real = resolve_inside(folder, entry.path)
    if real is None or not real.is_file():
        return FileResult(entry.path, UNSAFE, entry.size, expected_sha256=entry.sha256)
    try:
        fd: int | None = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:  # it changed since the checks above
        if exc.errno == errno.ENOENT:  # removed (another process replacing a bad copy)
            return FileResult(entry.path, MISSING, entry.size, expected_sha256=entry.sha256)
        if exc.errno != errno.ELOOP:  # ELOOP: a link raced in; anything else: UNREADABLE
            raise
        return FileResult(entry.path, UNSAFE, entry.size, expected_sha256=entry.sha256)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # a link or device raced in after the check above
            return FileResult(entry.path, UNSAFE, entry.size, expected_sha256=entry.sha256)
        if info.st_size != entry.size:
            return FileResult(entry.path, SIZE, entry.size, info.st_size, entry.sha256)
        actual = file_sha256(fd)
        status = OK if actual == entry.sha256 else HASH
        if status == OK and keep is not None:
            keep[entry.path], fd = fd, None
        return FileResult(entry.path, status, entry.size, info.st_size, entry.sha256, actual)
    finally:
        if fd is not None:
            os.close(fd)


def verify_folder(folder: str | Path, manifest: Manifest, workers: int | None = None,
                  keep: dict[str, int] | None = None) -> Report:
    """Verify every manifest file; biggest files first so parallel hashing finishes together.
    ``keep``: collects the open descriptors of the files that verified (``check_file``)."""
    folder = Path(folder)
    order = sorted(manifest.files, key=lambda f: -f.size)
    workers = workers or min(8, (os.cpu_count() or 2), len(order))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = dict(zip([e.path for e in order], pool.map(lambda e: check_file(folder, e, keep), order)))
    return Report(str(folder), manifest.repo_id, manifest.revision, manifest.digest(),
                  [results[e.path] for e in manifest.files])
