"""Manifests are data: loaded, validated, and written in one JSON form.

The form is the pinned ``bge-m3-manifest.json``: ``repo_id``, ``revision`` and
``files``, a list of ``{path, size, sha256}`` with relative, sorted paths.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from huggingface_hub.utils import HFValidationError, validate_repo_id

from verify.errors import ManifestError
from verify.hashes import file_sha256

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    repo_id: str
    revision: str
    files: tuple[FileEntry, ...]
    note: str | None = None

    def digest(self) -> str:
        """A short, stable identity of what this manifest pins (sha256 of its canonical JSON)."""
        return hashlib.sha256(dump_manifest(self, with_note=False).encode()).hexdigest()

    def entry(self, path: str) -> FileEntry:
        for item in self.files:
            if item.path == path:
                return item
        raise KeyError(path)


def _check_path(path: object) -> str:
    if not isinstance(path, str) or not path:
        raise ManifestError(f"file path must be a non-empty string, got {path!r}")
    if "\\" in path or "\x00" in path:
        raise ManifestError(f"unsafe file path {path!r}")
    pure = PurePosixPath(path)
    if pure.is_absolute() or path.startswith("/"):
        raise ManifestError(f"absolute path not allowed: {path!r}")
    if any(part in ("..", ".", "") for part in path.split("/")):
        raise ManifestError(f"path traversal not allowed: {path!r}")
    return path


def check_repo_id(repo_id: object) -> str:
    """The hub's own rule (``OWNER/NAME`` of letters, digits, ``-_.``), for a repo id about to be
    asked of a hub: one it rejects would otherwise fail only when the first URL is built, as a
    traceback mid-download. A manifest that is only verified against may name its model freely."""
    if not isinstance(repo_id, str) or not repo_id:
        raise ManifestError(f"repo_id must be a non-empty string, got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ManifestError(f"bad repo_id: {exc}") from None
    return repo_id


def parse_manifest(data: object) -> Manifest:
    if not isinstance(data, dict):
        raise ManifestError("manifest must be a JSON object")
    repo_id, revision, files = data.get("repo_id"), data.get("revision"), data.get("files")
    if not isinstance(repo_id, str) or not repo_id:
        raise ManifestError("manifest needs a repo_id string")
    if not isinstance(revision, str) or not revision:
        raise ManifestError("manifest needs a revision string")
    if not isinstance(files, list) or not files:
        raise ManifestError("manifest needs a non-empty files list")
    seen: set[str] = set()
    entries = []
    for item in files:
        if not isinstance(item, dict):
            raise ManifestError(f"file entry must be an object, got {item!r}")
        path = _check_path(item.get("path"))
        if path in seen:
            raise ManifestError(f"path listed twice: {path!r}")
        seen.add(path)
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{path}: size must be a non-negative integer, got {size!r}")
        sha = item.get("sha256")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise ManifestError(f"{path}: sha256 must be 64 lowercase hex digits, got {sha!r}")
        entries.append(FileEntry(path, size, sha))
    note = data.get("note") if isinstance(data.get("note"), str) else None
    return Manifest(repo_id, revision, tuple(entries), note)


def load_manifest(path: str | Path) -> Manifest:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"manifest {path} is not readable JSON: {exc}") from None
    return parse_manifest(data)


def dump_manifest(manifest: Manifest, *, with_note: bool = True) -> str:
    data: dict = {"repo_id": manifest.repo_id, "revision": manifest.revision}
    if with_note and manifest.note:
        data["note"] = manifest.note
    data["files"] = [{"path": f.path, "size": f.size, "sha256": f.sha256}
                     for f in sorted(manifest.files, key=lambda f: f.path)]
    return json.dumps(data, indent=2) + "\n"


def build_manifest(folder: str | Path, *, repo_id: str, revision: str) -> Manifest:
    """Hash every regular file under ``folder`` (hidden files and partial downloads skipped)."""
    folder = Path(folder)
    entries = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or path.is_symlink() or any(p.startswith(".") for p in rel.split("/")):
            continue
        entries.append(FileEntry(rel, path.stat().st_size, file_sha256(path)))
    if not entries:
        raise ManifestError(f"no files in {folder}")
    return Manifest(repo_id, revision, tuple(entries))
