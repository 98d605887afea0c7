"""Supply-chain throughput against the usual tools, measured in the same run on the same files.

1. Hashing: ``verify_folder`` (chunked, parallel across files) against ``sha256sum`` over
   every file of a model folder (~2.3 GB with the ``--full`` tiny model), page cache warm
   for both.
2. Download: ``ensure_model`` (HEAD, 302 to the fake CDN, streaming SHA-256, fsync, rename)
   against ``curl -L -o`` for the folder's largest file, both from the same local fake hub
   (``tests/fakehub.py``, in its own process, serving with ``sendfile``).

Prints throughputs and ratios (ours / baseline; > 1 means faster than the baseline).

    python bench/verify_bench.py [--model-dir DIR --manifest FILE] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from verify.download import ensure_model  # noqa: E402
from verify.manifest import Manifest, load_manifest  # noqa: E402
from verify.retry import RetryPolicy  # noqa: E402
from verify.verifier import verify_folder  # noqa: E402

BIN = Path(sys.executable).parent


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best(rounds: int, fn) -> float:
    return min(timed(fn) for _ in range(rounds))


def gbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:6.2f} GB/s"


def bench_hash(folder: Path, manifest: Manifest, rounds: int) -> float:
    files = [str(folder / f.path) for f in manifest.files]
    total = sum(f.size for f in manifest.files)

    def sha256sum() -> None:
        subprocess.run(["sha256sum", *files], check=True, stdout=subprocess.DEVNULL)

    def ours() -> None:
        assert verify_folder(folder, manifest).ok

    sha256sum()  # warm the page cache for both
    t_base = t_ours = float("inf")
    for _ in range(rounds):  # interleaved, so drift on a shared VM hits both alike
        t_base = min(t_base, timed(sha256sum))
        t_ours = min(t_ours, timed(ours))
    print(f"hash   {len(files)} files, {total / 1e9:.2f} GB (best of {rounds})")
    print(f"       sha256sum     {t_base:6.2f} s  {gbps(total, t_base)}")
    print(f"       verify_folder {t_ours:6.2f} s  {gbps(total, t_ours)}")
    ratio = t_base / t_ours
    print(f"       ratio {ratio:.2f} (target >= 0.95)")
    return ratio


def start_hub(folder: Path, manifest: Manifest, work: Path) -> tuple[subprocess.Popen, str]:
    port_file = work / "hub.url"
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakehub", str(folder), manifest.repo_id,
                             manifest.revision, str(port_file)], cwd=ROOT)
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("fake hub did not start")
        time.sleep(0.05)
    return proc, port_file.read_text()


def bench_download(folder: Path, manifest: Manifest, work: Path, rounds: int) -> float:
    entry = max(manifest.files, key=lambda f: f.size)
    one = Manifest(manifest.repo_id, manifest.revision, (entry,))
    proc, url = start_hub(folder, manifest, work)
    target = work / "dl"
    resolve = f"{url}/{manifest.repo_id}/resolve/{manifest.revision}/{entry.path}"

    def fresh() -> None:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()

    def curl() -> None:
        subprocess.run(["curl", "-sS", "-L", "-o", str(target / entry.path), resolve], check=True)

    def ours() -> None:
        ensure_model(target, one, [url], log=lambda _: None, policy=RetryPolicy(base_delay=0.1))

    try:
        t_base = t_ours = float("inf")
        for _ in range(rounds):
            fresh()
            t_base = min(t_base, timed(curl))
            fresh()
            t_ours = min(t_ours, timed(ours))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(target, ignore_errors=True)
    print(f"get    {entry.path}, {entry.size / 1e9:.2f} GB from a local fake hub "
          f"(best of {rounds})")
    print(f"       curl -L -o    {t_base:6.2f} s  {gbps(entry.size, t_base)}  (no hash, no fsync)")
    print(f"       ensure_model  {t_ours:6.2f} s  {gbps(entry.size, t_ours)}  "
          f"(HEAD + streaming sha256 + fsync + rename)")
    ratio = t_base / t_ours
    print(f"       ratio {ratio:.2f}")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, help="model folder (default: build --full)")
    parser.add_argument("--manifest", type=Path, help="its manifest (default: DIR.manifest.json)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="verify-bench-") as tmp:
        work = Path(tmp)
        folder = args.model_dir
        if folder is None:
            folder = work / "full"
            print("building the --full tiny model (~2.3 GB, ~25 s) ...", flush=True)
            subprocess.run([str(BIN / "bge-m3"), "tiny-model", str(folder), "--full"], check=True,
                           stdout=subprocess.DEVNULL)
        manifest = load_manifest(args.manifest or folder.parent / f"{folder.name}.manifest.json")
        print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
        bench_hash(folder, manifest, args.rounds)
        bench_download(folder, manifest, work, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
