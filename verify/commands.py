"""``bge-m3 manifest``, ``bge-m3 verify`` and ``bge-m3 download``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from verify.errors import VerifyError
from verify.manifest import build_manifest, dump_manifest


def manifest_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bge-m3 manifest", description=(
        "Write a SHA-256 manifest (repo_id, revision, files[{path,size,sha256}]) for a model folder."))
    parser.add_argument("dir", type=Path, nargs="?", help="model folder to hash")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument("--repo-id", default="local/model")
    parser.add_argument("--revision", default="local")
    args = parser.parse_args(argv)
    if args.dir is None:
        parser.error("DIR is required")
    try:
        text = dump_manifest(build_manifest(args.dir, repo_id=args.repo_id, revision=args.revision))
    except VerifyError as exc:
        print(f"bge-m3 manifest: {exc}", file=sys.stderr)
        return 2
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
