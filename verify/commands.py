"""``bge-m3 manifest``, ``bge-m3 verify`` and ``bge-m3 download``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bge_m3.settings import Settings
from verify.errors import DownloadError, LocalDiskError, ManifestError, VerifyError
from verify.manifest import build_manifest, dump_manifest, load_manifest
from verify.verifier import MISSING, REPAIR_HINT, UNREADABLE, Report, verify_folder

EXIT_OK = 0
"""Every manifest file is present, regular, inside the folder, and has the pinned size and SHA-256."""
EXIT_FAILED = 1
"""Anything else that went wrong (an unreadable folder, a disk error)."""
EXIT_BAD_MANIFEST = 2
"""The manifest is missing, unreadable or unsafe (also argparse's usage-error code)."""
EXIT_MISSING = 3
"""Some files are missing and none is wrong."""
EXIT_MISMATCH = 4
"""Some file has the wrong size or SHA-256, is not a regular file inside the folder, or cannot
be read."""
EXIT_DOWNLOAD = 5
"""``download`` could not bring the folder to a verified state from any endpoint."""


def report_exit_code(report: Report) -> int:
    if report.ok:
        return EXIT_OK
    if all(f.status == MISSING for f in report.failures):
        return EXIT_MISSING
    return EXIT_MISMATCH


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "model_dir", None):
        overrides["model_dir"] = args.model_dir
    if getattr(args, "manifest", None):
        overrides["manifest"] = args.manifest
    return Settings.from_env(**overrides)


def _folder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, help="model folder (default: BGE_M3_MODEL_DIR)")
    parser.add_argument("--manifest", type=Path,
                        help="manifest JSON (default: BGE_M3_MANIFEST, else the pinned one)")


def verify_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bge-m3 verify", description=(
        "Check every manifest file: present, a regular file inside the folder, exact size, "
        "exact SHA-256. Exit 0 all OK, 2 bad manifest, 3 missing files, 4 wrong files."))
    _folder_args(parser)
    parser.add_argument("--json", action="store_true", help="print a machine-readable report")
    args = parser.parse_args(argv)
    settings = _settings(args)
    try:
        manifest = load_manifest(settings.manifest)
    except ManifestError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "exit_code": EXIT_BAD_MANIFEST}))
        print(f"bge-m3 verify: bad manifest: {exc}", file=sys.stderr)
        return EXIT_BAD_MANIFEST
    report = verify_folder(settings.model_dir, manifest)
    code = report_exit_code(report)
    if args.json:
        print(json.dumps({**report.to_dict(), "exit_code": code}, indent=2))
        return code
    for result in report.files:
        print(result.describe())
    where = f"{manifest.repo_id}@{manifest.revision} in {settings.model_dir}"
    if code == EXIT_OK:
        print(f"verified {len(report.files)} files of {where} "
              f"(manifest {report.manifest_digest[:12]})")
    else:
        absent = ("" if settings.model_dir.is_dir() else " (it is a file, not a folder)"
                  if settings.model_dir.exists() else " (the folder does not exist)")
        fix = ("" if any(r.status == UNREADABLE for r in report.failures)  # its line says what to fix
               else f"; {REPAIR_HINT}")
        print(f"FAILED: {len(report.failures)} of {len(report.files)} files of {where}{absent}{fix}",
              file=sys.stderr)
    return code


def download_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bge-m3 download", description=(
        "Fetch missing or bad model files from BGE_M3_ENDPOINTS (in order, resumable, "
        "retried), then verify. Exit 0 verified, 1 the model folder itself failed, 2 bad manifest, "
        "5 download failed."))
    _folder_args(parser)
    args = parser.parse_args(argv)
    settings = _settings(args)
    try:
        manifest = load_manifest(settings.manifest)
    except ManifestError as exc:
        print(f"bge-m3 download: bad manifest: {exc}", file=sys.stderr)
        return EXIT_BAD_MANIFEST
    from verify.download import ensure_model

    def log(line: str) -> None:
        print(f"bge-m3 download: {line}", file=sys.stderr, flush=True)

    try:
        report = ensure_model(settings.model_dir, manifest, settings.endpoints,
                              token=settings.hf_token, log=log)
    except ManifestError as exc:  # found only once something must be fetched: its repo_id
        print(f"bge-m3 download: bad manifest: {exc}", file=sys.stderr)
        return EXIT_BAD_MANIFEST
    except (DownloadError, OSError) as exc:
        remote = isinstance(exc, DownloadError) and not isinstance(exc, LocalDiskError)
        return _failed("download", exc, EXIT_DOWNLOAD if remote else EXIT_FAILED)
    print(f"verified {len(report.files)} files of {manifest.repo_id}@{manifest.revision} "
          f"in {settings.model_dir} (manifest {report.manifest_digest[:12]})")
    return EXIT_OK


def _failed(command: str, exc: Exception, code: int) -> int:
    print(f"bge-m3 {command}: {exc}", file=sys.stderr)
    return code


def manifest_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bge-m3 manifest", description=(
        "Write a SHA-256 manifest (repo_id, revision, files[{path,size,sha256}]) for a model "
        "folder, or from the hub's metadata with --from-hub REPO@REV."))
    parser.add_argument("dir", type=Path, nargs="?", help="model folder to hash")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument("--repo-id", default="local/model")
    parser.add_argument("--revision", default="local")
    parser.add_argument("--from-hub", metavar="REPO@REV",
                        help="build from HfApi.model_info(files_metadata=True) instead of a folder")
    parser.add_argument("--endpoint", help="hub endpoint for --from-hub "
                                           "(default: the first of BGE_M3_ENDPOINTS)")
    parser.add_argument("--include", action="append", default=[], metavar="GLOB",
                        help="with --from-hub: only files matching (repeatable)")
    args = parser.parse_args(argv)
    if (args.dir is None) == (not args.from_hub):
        parser.error("give DIR or --from-hub, not both" if args.dir else "DIR or --from-hub is required")
    try:
        if args.from_hub:
            from verify.endpoint import same_origin
            from verify.hub import manifest_from_hub, split_ref

            settings = Settings.from_env()
            repo, rev = split_ref(args.from_hub)
            endpoint = args.endpoint or settings.endpoints[0]
            # As for downloads: HF_TOKEN is for the first endpoint's origin, never a mirror's.
            token = settings.hf_token if same_origin(endpoint, settings.endpoints[0]) else None
            manifest = manifest_from_hub(repo, rev, endpoint, token, tuple(args.include))
        else:
            manifest = build_manifest(args.dir, repo_id=args.repo_id, revision=args.revision)
        text = dump_manifest(manifest)
    except VerifyError as exc:
        return _failed("manifest", exc, EXIT_BAD_MANIFEST if isinstance(exc, ManifestError) else EXIT_FAILED)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK
