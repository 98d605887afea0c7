"""Build a manifest from the hub's own metadata (``bge-m3 manifest --from-hub REPO@REV``).

LFS files carry their sha256 in ``HfApi.model_info(files_metadata=True)``; plain git
files (the small JSON ones) only carry a git blob sha1, so those are fetched and
hashed here. Nothing is written to the hub cache.
"""
from __future__ import annotations

import fnmatch
import hashlib

import requests

from bge_m3.redaction import scrub
from verify.endpoint import Endpoint
from verify.errors import ManifestError, VerifyError
from verify.manifest import FileEntry, Manifest, check_repo_id, parse_manifest
from verify.transfer import READ_CHUNK


def split_ref(ref: str) -> tuple[str, str]:
    """``REPO@REV`` -> (repo, rev); the revision defaults to ``main``."""
    repo, _, rev = ref.partition("@")
    if not repo or "/" not in repo:
        raise ManifestError(f"expected OWNER/NAME@REVISION, got {ref!r}")
    return check_repo_id(repo), rev or "main"


def _hash_remote(endpoint: Endpoint, repo_id: str, revision: str, path: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with endpoint.get(repo_id, revision, path, 0) as resp:
        if resp.status_code != 200:
            raise VerifyError(f"GET {path}: HTTP {resp.status_code}")
        while chunk := resp.raw.read1(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def manifest_from_hub(repo_id: str, revision: str, endpoint: str, token: str | None = None,
                      include: tuple[str, ...] = ()) -> Manifest:
    """The manifest of ``repo_id`` at ``revision`` (pinned to the commit the hub resolves it to)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint.rstrip("/"), token=token or False)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:  # huggingface_hub raises many types; all mean "no metadata"
        raise VerifyError(f"{scrub(endpoint)}: model_info({repo_id}@{revision}) failed: "
                          f"{type(exc).__name__}: {scrub(str(exc), token)[:200]}") from None
    commit = info.sha or revision
    session = requests.Session()
    remote = Endpoint(endpoint, session, token)
    entries = []
    try:
        for sibling in info.siblings or []:
            name = sibling.rfilename
            if include and not any(fnmatch.fnmatch(name, pat) for pat in include):
                continue
            if sibling.lfs is not None:
                entries.append(FileEntry(name, int(sibling.lfs.size), sibling.lfs.sha256.lower()))
                continue
            size, sha = _hash_remote(remote, repo_id, commit, name)
            if sibling.size is not None and sibling.size != size:
                raise VerifyError(f"{name}: hub lists {sibling.size} bytes, served {size}")
            entries.append(FileEntry(name, size, sha))
    finally:
        session.close()
    if not entries:
        raise ManifestError(f"{repo_id}@{revision}: no files matched")
    # Validated like any manifest: a hub listing an unsafe path must not get one past us.
    return parse_manifest({"repo_id": repo_id, "revision": commit,
                           "note": f"built from {scrub(endpoint)} metadata for {repo_id}@{revision}",
                           "files": [{"path": e.path, "size": e.size, "sha256": e.sha256}
                                     for e in sorted(entries, key=lambda e: e.path)]})
