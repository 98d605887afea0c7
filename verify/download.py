"""Bring a model folder to the manifest: fetch only what is missing or bad, then report.

``ensure_model`` is what ``bge-m3 download`` and a worker's start-up gate (with
auto-download on) call. It holds a file lock on the folder for the whole run, so
two processes sharing a volume never fetch the same file at once: the second
waits, then finds everything verified.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import requests
from filelock import FileLock, Timeout
from tqdm import tqdm

from verify.endpoint import Endpoint, RemoteMeta
from verify.errors import (BadContentError, DownloadError, EndpointError, LocalDiskError,
                           TransientError)
from verify.manifest import FileEntry, Manifest, check_repo_id
from verify.retry import RetryPolicy
from verify.transfer import fetch
from verify.verifier import MISSING, OK, UNREADABLE, FileResult, Report, verify_folder

LOCK_NAME = ".bge-m3-download.lock"
"""The folder lock's file name; hidden, so manifests built from the folder skip it."""

logger = logging.getLogger("bge_m3.download")


def _contradiction(meta: RemoteMeta, entry: FileEntry) -> str | None:
    if meta.size is not None and meta.size != entry.size:
        return f"serves {meta.size} bytes, the manifest says {entry.size}"
    if meta.lfs_sha256 and meta.lfs_sha256 != entry.sha256:
        return f"serves sha256 {meta.lfs_sha256}, the manifest says {entry.sha256}"
    return None


class _Run:
    """State of one ``ensure_model`` call: endpoints, retry policy, endpoints found unreachable."""

    def __init__(self, folder: Path, manifest: Manifest, endpoints: list[Endpoint],
                 policy: RetryPolicy, log: Callable[[str], None]):
        self.folder, self.manifest, self.endpoints = folder, manifest, endpoints
        self.policy, self.log = policy, log
        self.unreachable: set[str] = set()

    def fetch_entry(self, entry: FileEntry) -> str | None:
        """Fetch one file, endpoint after endpoint; None on success, else what each endpoint did."""
        final = self.folder / entry.path
        outside = "its folder leads outside the model folder (symlink); refusing to write there"
        if not _inside(self.folder, final.parent):  # before mkdir: it would follow the link too
            return outside
        final.parent.mkdir(parents=True, exist_ok=True)
        if not _inside(self.folder, final.parent):  # a link raced in while the folders were made
            return outside
        notes = []
        for i, endpoint in enumerate(self.endpoints):
            if endpoint.base in self.unreachable:
                notes.append(f"{endpoint} -> skipped (unreachable earlier)")
                continue
            note = self._try(endpoint, entry, final, last=i == len(self.endpoints) - 1)
            if note is None:
                return None
            notes.append(f"{endpoint} -> {note}")
        return "; ".join(notes) or "no endpoints configured (BGE_M3_ENDPOINTS)"

    def _try(self, endpoint: Endpoint, entry: FileEntry, final: Path, last: bool) -> str | None:
        where = f"{entry.path} from {endpoint}"
        transient = bad = requests_made = 0
        # Progress is a new high-water mark: an endpoint that restarts a file from byte 0 (a 200
        # to a Range request, a 206 from the wrong byte) and cuts it again has gained nothing,
        # and must not reset the count of failures in a row (it was fetched 100 times in full).
        reached = 0
        meta: RemoteMeta | None = None
        with tqdm(total=entry.size, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.path,
                  disable=None, leave=False) as bar:
            def on_bytes(n: int, offset: int) -> None:
                nonlocal reached
                reached = max(reached, offset)
                if n:
                    bar.update(n)
                else:
                    bar.n = offset
                    bar.refresh()

            while True:
                requests_made += 1
                before = reached
                try:
                    if meta is None:
                        meta = endpoint.head(self.manifest.repo_id, self.manifest.revision,
                                             entry.path)
                        reason = _contradiction(meta, entry)
                        if reason:
                            raise EndpointError(f"HEAD: {reason}")
                    outcome = fetch(endpoint, self.manifest.repo_id, self.manifest.revision,
                                    entry, final, meta, on_bytes,
                                    (self.policy.low_speed_bytes, self.policy.low_speed_window))
                    self.log(f"{where}: {outcome}, sha256 OK")
                    return None
                except EndpointError as exc:
                    self.log(f"{where}: {exc}; " + ("no endpoint left to try" if last else
                                                    "trying the next endpoint"))
                    return str(exc)
                except BadContentError as exc:
                    # The bytes were deleted: the next attempt starts from 0, and reaching as far
                    # again is progress (bad content has its own budget of attempts).
                    bad, transient, reached = bad + 1, 0, 0
                    self.log(f"{where}: {exc} (attempt {bad}/{self.policy.bad_content_attempts})")
                    if bad >= self.policy.bad_content_attempts:
                        return f"wrong content {bad} times ({exc})"
                except TransientError as exc:
                    transient = 1 if reached > before and not exc.slow else transient + 1
                    if transient >= self.policy.transient_attempts or \
                            requests_made >= self.policy.max_requests:
                        self.log(f"{where}: {exc}; giving up on this endpoint")
                        if exc.connection:
                            self.unreachable.add(endpoint.base)
                        return f"gave up after {requests_made} attempts (last: {exc})"
                    wait = self.policy.delay(transient, exc.retry_after)
                    self.log(f"{where}: {exc}; retrying in {wait:.1f}s")
                    time.sleep(wait)


def _inside(folder: Path, path: Path) -> bool:
    """Whether ``path``, links resolved, is ``folder`` or inside it."""
    root, target = Path(os.path.realpath(folder)), Path(os.path.realpath(path))
    return target == root or root in target.parents


def _clear_bad(folder: Path, result: FileResult) -> None:
    """Remove a wrong or unsafe final file (or link) so nothing loads it meanwhile; never one
    that a linked folder puts outside the model folder (``fetch_entry`` then refuses it)."""
    path = folder / result.path
    if not _inside(folder, path.parent):
        return
    if path.is_dir() and not path.is_symlink():
        raise DownloadError(f"{path} is a folder where the manifest expects a file; remove it")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def ensure_model(model_dir: str | Path, manifest: Manifest, endpoints: Iterable[str],
                 token: str | None = None, log: Callable[[str], None] = logger.info, *,
                 policy: RetryPolicy | None = None, lock_timeout: float = -1) -> Report:
    """Download what is missing or bad, verify, and return the final (all OK) report.

    Raises ``DownloadError`` listing, per file, what each endpoint did when the folder
    cannot end verified. ``lock_timeout`` < 0 waits for the folder lock forever.
    """
    folder = Path(model_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = _acquire(folder, lock_timeout, log)
    except OSError as exc:
        # A read-only volume cannot hold the lock, but may well hold a verified model.
        report = verify_folder(folder, manifest)
        if report.ok:
            log(f"{folder}: not writable ({exc.strerror}); all {len(report.files)} files verified")
            return report
        raise LocalDiskError(f"{folder}: cannot write there ({exc}) and "
                             f"{len(report.failures)} file(s) do not verify") from None
    session = requests.Session()
    try:
        return _ensure_locked(folder, manifest, [Endpoint(e, session, token if i == 0 else None)
                                       for i, e in enumerate(endpoints)],
                              policy or RetryPolicy(), log)
    except OSError as exc:  # network errors end in _try: this is the local disk
        raise LocalDiskError(f"{folder}: {exc}") from None
    finally:
        session.close()
        lock.release()


def _acquire(folder: Path, timeout: float, log: Callable[[str], None]) -> FileLock:
    lock = FileLock(str(folder / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"{folder}: another process holds the download lock; waiting")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise DownloadError(f"{folder}: download lock still held after {timeout}s") from None
    return lock


def _ensure_locked(folder: Path, manifest: Manifest, endpoints: list[Endpoint],
                   policy: RetryPolicy, log: Callable[[str], None]) -> Report:
    report = verify_folder(folder, manifest)
    if report.ok:
        log(f"{folder}: all {len(report.files)} files verified; nothing to download")
        return report
    unreadable = [r for r in report.failures if r.status == UNREADABLE]
    if unreadable:  # its bytes may be right: a permission or disk error is not a bad copy to delete
        raise LocalDiskError("; ".join(f"{r.describe()} (not deleted: fix its permissions or the disk)"
                                       for r in unreadable))
    check_repo_id(manifest.repo_id)  # before anything is deleted, as every URL is built with it
    results = {r.path: r for r in report.files}
    run = _Run(folder, manifest, endpoints, policy, log)
    problems = []
    for result in report.failures:
        if result.status != MISSING:
            log(f"{result.describe()}; deleting and downloading again")
            _clear_bad(folder, result)
        entry = manifest.entry(result.path)
        failure = run.fetch_entry(entry)
        if failure is None:
            results[entry.path] = FileResult(entry.path, OK, entry.size, entry.size,
                                             entry.sha256, entry.sha256)
        else:
            problems.append(f"  {entry.path}: {failure}")
    if problems:
        raise DownloadError(f"could not fetch {len(problems)} file(s) of {manifest.repo_id}@"
                            f"{manifest.revision} into {folder}:\n" + "\n".join(problems))
    return Report(str(folder), manifest.repo_id, manifest.revision, manifest.digest(),
                  [results[e.path] for e in manifest.files])
