"""Build a manifest from the hub's own metadata (``bge-m3 manifest --from-hub REPO@REV``).

LFS files carry their sha256 in ``HfApi.model_info(files_metadata=True)``; plain git
files (the small JSON ones) only carry a git blob sha1, so those are fetched and
hashed here. Nothing is written to the hub cache.
"""
from __future__ import annotations

import fnmatch
import hashlib
import time

import requests

from bge_m3.redaction import scrub
from verify.endpoint import Endpoint, status_error
from verify.errors import BadContentError, EndpointError, ManifestError, TransientError, VerifyError
from verify.manifest import FileEntry, Manifest, check_repo_id, parse_manifest
from verify.retry import RetryPolicy
from verify.transfer import NETWORK_ERRORS, READ_CHUNK


def split_ref(ref: str) -> tuple[str, str]:
    """``REPO@REV`` -> (repo, rev); the revision defaults to ``main``."""
    repo, _, rev = ref.partition("@")
    if not repo or "/" not in repo:
        raise ManifestError(f"expected OWNER/NAME@REVISION, got {ref!r}")
    return check_repo_id(repo), rev or "main"


HASH_ATTEMPTS = 3
"""Tries to fetch one plain git file whole and matching its git blob id before giving up: a
503, a cut body or damaged bytes are worth asking again; the same answer three times is not."""


PLAIN_FILE_MAX = 64 * 1024 * 1024
"""Most bytes a plain git file (not LFS) may have: the hub stores bigger ones in LFS (10 MB), so
more is no hub's answer, and this many are held in memory to check the blob id."""


def _hash_once(endpoint: Endpoint, repo_id: str, revision: str, path: str,
               size: int | None, blob_id: str | None) -> tuple[int, str]:
    """(size, sha256) of the served bytes, checked against the git blob id the hub lists for
    the file (sha1 of ``blob <size>\\0`` and the bytes): a manifest is what every later download
    is held to, so bytes damaged on the way must not be pinned as the model's."""
    body = bytearray()
    with endpoint.get(repo_id, revision, path, 0) as resp:
        if resp.status_code != 200:
            raise status_error(resp, "GET")
        try:
            while chunk := resp.raw.read1(READ_CHUNK):
                body += chunk
                if len(body) > PLAIN_FILE_MAX:
                    raise VerifyError(f"{path}: over {PLAIN_FILE_MAX} bytes for a file the hub "
                                      "lists as plain git, not LFS")
        except NETWORK_ERRORS as exc:
            raise TransientError(f"GET: connection cut at byte {len(body)} ({type(exc).__name__})") from None
    if size is not None and len(body) != size:
        raise TransientError(f"GET: the hub lists {size} bytes, {len(body)} were served")
    if blob_id is not None:
        actual = hashlib.sha1(f"blob {len(body)}\0".encode() + body).hexdigest()
        if actual != blob_id.lower():
            raise BadContentError(f"git blob sha1 mismatch: the hub lists {blob_id.lower()}, "
                                  f"the bytes served hash to {actual}")
    return len(body), hashlib.sha256(body).hexdigest()


def _hash_remote(endpoint: Endpoint, repo_id: str, revision: str, path: str,
                 size: int | None, blob_id: str | None, policy: RetryPolicy) -> tuple[int, str]:
    for attempt in range(1, HASH_ATTEMPTS + 1):
        try:
            return _hash_once(endpoint, repo_id, revision, path, size, blob_id)
        except (TransientError, BadContentError) as exc:
            if attempt == HASH_ATTEMPTS:
                raise VerifyError(f"{path}: {exc} ({attempt} attempts)") from None
            time.sleep(policy.delay(attempt, getattr(exc, "retry_after", None)))
        except EndpointError as exc:  # 404, 401/403, a bad redirect: asking again will not help
            raise VerifyError(f"{path}: {exc}") from None
    raise AssertionError("unreachable")


def manifest_from_hub(repo_id: str, revision: str, endpoint: str, token: str | None = None,
                      include: tuple[str, ...] = (), policy: RetryPolicy = RetryPolicy()) -> Manifest:
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
            size, sha = _hash_remote(remote, repo_id, commit, name, sibling.size,
                                     sibling.blob_id, policy)
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
