"""The start-up gate: nothing is consumed until the model folder matches the manifest.

Order: load the manifest → require both heads in it → verify every file (size,
SHA-256) → when any file fails and auto-download is on, fetch what is missing and
replace what is wrong (the bad copy is deleted), then verify again, even after a failed
download → refuse with one log line per failing file, as it is on disk now.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

from bge_m3.settings import PACKAGED_MANIFEST, Settings
from verify.errors import VerifyError
from verify.manifest import Manifest, load_manifest
from verify.verifier import REPAIR_HINT, UNREADABLE, Report, verify_folder

REQUIRED_FILES = ("config.json", "colbert_linear.pt", "sparse_linear.pt")
"""Files the manifest itself must pin; without the heads FlagEmbedding would use random ones."""

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""At least one of these must be pinned: the transformer's weights."""

COMMIT = re.compile(r"[0-9a-f]{40}")
"""A git commit id: the only revision that names the same files for ever."""

EXIT_REFUSED = 3
"""Exit status of a worker whose model folder failed verification."""

log = logging.getLogger("bge_m3.worker")


class GateRefused(Exception):
    """The model folder cannot be trusted; the worker must exit without consuming."""


@dataclass(frozen=True)
class Verified:
    manifest: Manifest
    report: Report
    handles: dict[str, int] = field(default_factory=dict)
    """Open descriptors of the files as hashed, by manifest path: the model is loaded through
    them (``worker.model.verified_view``), then ``release()`` closes them."""

    def release(self) -> None:
        _close(self.handles)


def _close(handles: dict[str, int]) -> None:
    for fd in handles.values():
        try:
            os.close(fd)
        except OSError:
            pass
    handles.clear()


def _require_pinned(manifest: Manifest) -> None:
    pinned = {f.path for f in manifest.files}
    missing = [name for name in REQUIRED_FILES if name not in pinned]
    if not any(name in pinned for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise GateRefused(f"manifest does not pin {', '.join(missing)}: refusing (without both "
                          "heads FlagEmbedding would silently use random ones)")


def _download(settings: Settings, manifest: Manifest) -> bool:
    """Fetch missing and wrong files with verify.download.ensure_model; False when that is
    unavailable."""
    try:
        from verify.download import ensure_model
    except ImportError:
        log.error("auto-download is on but verify.download.ensure_model is not available")
        return False
    log.info("Downloading missing or damaged model files for %s@%s", manifest.repo_id,
             manifest.revision[:7])
    ensure_model(settings.model_dir, manifest, settings.endpoints, settings.hf_token)
    return True


def _repair(settings: Settings, manifest: Manifest, report: Report,
            handles: dict[str, int]) -> Report:
    """Download, then verify again, even when the download failed: it may have deleted or
    replaced files on the way, and the refusal must name what is on disk now."""
    try:
        if not _download(settings, manifest):
            return report  # nothing was touched
    except VerifyError as exc:
        log.error("download failed: %s", exc)
    _close(handles)  # a file replaced by the download is another file now
    return verify_folder(settings.model_dir, manifest, keep=handles)


def _warn_if_repinned(manifest: Manifest) -> None:
    """A manifest for the packaged repository that is not the packaged pin (other hashes, another
    revision) is allowed, as a deliberate upgrade, but said: edited hashes verify edited files."""
    try:
        packaged = load_manifest(PACKAGED_MANIFEST)
    except VerifyError:
        return
    if manifest.repo_id == packaged.repo_id and manifest.digest() != packaged.digest():
        log.warning("Manifest for %s is not the packaged pin (%s@%s, digest %s): this one says "
                    "%s, digest %s", manifest.repo_id, packaged.repo_id, packaged.revision[:7],
                    packaged.digest()[:12], manifest.revision[:7], manifest.digest()[:12])


def check(settings: Settings) -> Verified:
    """Verify the model folder or raise GateRefused (after logging every failing file)."""
    try:
        manifest = load_manifest(settings.manifest)
    except VerifyError as exc:
        raise GateRefused(f"manifest {settings.manifest}: {exc}") from None
    _require_pinned(manifest)
    _warn_if_repinned(manifest)
    if settings.auto_download and not COMMIT.fullmatch(manifest.revision):
        log.warning("Manifest revision %r is not a commit id: downloads follow a ref that can move "
                    "(the hashes still pin every file, so new content would be refused)",
                    manifest.revision)
    handles: dict[str, int] = {}
    report = verify_folder(settings.model_dir, manifest, keep=handles)
    # Any failure, not only a missing file: a damaged one is what `bge-m3 up` and `download`
    # repair too, and whether it is repaired must not hinge on another file being absent.
    if not report.ok and settings.auto_download:
        report = _repair(settings, manifest, report, handles)
    if not report.ok:
        _close(handles)
        for failure in report.failures:
            log.error("Verification failed: %s", failure.describe())
        names = ", ".join(f.path for f in report.failures)
        if any(f.status == UNREADABLE for f in report.failures):  # no download replaces those
            fix = "make each file its line names readable by this user"
        elif settings.auto_download:
            fix = "the download above failed; see its lines"
        else:
            fix = f"{REPAIR_HINT}, or set BGE_M3_AUTO_DOWNLOAD=1"
        raise GateRefused(f"model folder {settings.model_dir} does not match manifest "
                          f"{manifest.repo_id}@{manifest.revision[:7]} ({names}); {fix}")
    log.info("Verified %d files of %s@%s in %s (manifest %s)", len(report.files), manifest.repo_id,
             manifest.revision[:7], settings.model_dir, report.manifest_digest[:12])
    return Verified(manifest, report, handles)
