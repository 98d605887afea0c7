"""``bge-m3 tiny-model``."""
from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path


def tiny_model_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bge-m3 tiny-model", description=(
        "Write a deterministic, randomly initialised BGE-M3-shaped model to DIR and its "
        "manifest to DIR.manifest.json. Offline; byte-identical for the same arguments."))
    parser.add_argument("dir", type=Path)
    parser.add_argument("--full", action="store_true",
                        help="real architecture (24x1024, vocab 250002, ~2.3 GB) for benchmarks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from bge_m3.tinymodel import build

    # Absolute and normalised: DIR.manifest.json of "." or "m/" would land inside the folder.
    folder = Path(os.path.abspath(args.dir.expanduser()))
    manifest = build(folder, full=args.full, seed=args.seed)
    print(f"model written to {folder}")
    print(f"manifest written to {manifest}")
    print(f"use: BGE_M3_MODEL_DIR={shlex.quote(str(folder))} BGE_M3_MANIFEST={shlex.quote(str(manifest))} "
          "BGE_M3_AUTO_DOWNLOAD=0 bge-m3 up")
    return 0
