"""Manifest validation and ``bge-m3 verify`` on real folders (the tiny model, copied per test)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import pytest

from bge_m3.settings import PACKAGED_MANIFEST
from tests.support import BGE_M3
from verify.commands import (EXIT_BAD_MANIFEST, EXIT_FAILED, EXIT_MISMATCH, EXIT_MISSING, EXIT_OK,
                             download_main, verify_main)
from verify.errors import ManifestError
from verify.hashes import file_sha256
from verify.manifest import check_repo_id, load_manifest, parse_manifest
from verify.verifier import HASH, MISSING, OK, SIZE, UNREADABLE, UNSAFE, verify_folder

GOOD = {"path": "a.bin", "size": 1, "sha256": "0" * 64}


@pytest.fixture
def model(tiny_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model.dir, folder)
    return folder


def run_verify(model, manifest, capsys, *extra):
    code = verify_main(["--model-dir", str(model), "--manifest", str(manifest), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_pinned_manifest_is_the_published_bge_m3():
    manifest = load_manifest(PACKAGED_MANIFEST)
    paths = {f.path for f in manifest.files}
    assert manifest.repo_id == "BAAI/bge-m3"
    assert manifest.revision == "5617a9f61b028005a4858fdac845db406aefb181"
    assert len(manifest.files) == 12
    assert {"pytorch_model.bin", "colbert_linear.pt", "sparse_linear.pt", "tokenizer.json",
            "sentencepiece.bpe.model", "1_Pooling/config.json"} <= paths
    assert "model.safetensors" not in paths
    assert manifest.entry("pytorch_model.bin").size == 2271145830
    assert len(manifest.digest()) == 64


BASE = {"repo_id": "r/m", "revision": "v", "files": [GOOD]}
"""A manifest that parses: each rejection below changes one thing in it."""


def test_the_base_manifest_parses():
    manifest = parse_manifest(BASE)
    assert (manifest.repo_id, manifest.revision) == ("r/m", "v")
    assert [(f.path, f.size, f.sha256) for f in manifest.files] == [("a.bin", 1, "0" * 64)]


@pytest.mark.parametrize("path,reason", [
    ("/etc/passwd", "absolute path not allowed"), ("../x.bin", "path traversal not allowed"),
    ("a/../../x.bin", "path traversal not allowed"), ("a/./b", "path traversal not allowed"),
    ("a//b", "path traversal not allowed"), ("a\\b", "unsafe file path"),
    ("", "file path must be a non-empty string"), (7, "file path must be a non-empty string")])
def test_manifest_rejects_unsafe_paths(path, reason):
    parse_manifest(BASE)  # passes: only the path below makes it fail
    with pytest.raises(ManifestError, match=reason):
        parse_manifest({**BASE, "files": [{**GOOD, "path": path}]})


@pytest.mark.parametrize("change,reason", [
    ({"sha256": "0" * 63}, "sha256 must be 64 lowercase hex digits"),
    ({"sha256": "g" * 64}, "sha256 must be 64 lowercase hex digits"),
    ({"sha256": "0" * 65}, "sha256 must be 64 lowercase hex digits"),
    ({"size": -1}, "size must be a non-negative integer"),
    ({"size": "1"}, "size must be a non-negative integer"),
    ({"size": True}, "size must be a non-negative integer")])
def test_manifest_rejects_bad_hashes_and_sizes(change, reason):
    parse_manifest(BASE)  # passes: only the change below makes it fail
    with pytest.raises(ManifestError, match=reason):
        parse_manifest({**BASE, "files": [{**GOOD, **change}]})


def test_manifest_rejects_repeated_paths():
    with pytest.raises(ManifestError, match="twice"):
        parse_manifest({"repo_id": "r/m", "revision": "v", "files": [GOOD, dict(GOOD)]})


@pytest.mark.parametrize("repo_id", ["local/my model", "a/b/c", "../x", "org--x/m", "", 7])
def test_a_repo_id_the_hub_would_reject_is_refused_before_it_is_asked(repo_id):
    """Only where a hub is asked (download, ``manifest --from-hub``): a manifest only verified
    against may name its model freely, but it must be a name."""
    with pytest.raises(ManifestError, match="repo_id"):
        check_repo_id(repo_id)
    if isinstance(repo_id, str) and repo_id:
        assert parse_manifest({"repo_id": repo_id, "revision": "v", "files": [GOOD]}).repo_id == repo_id
    else:
        with pytest.raises(ManifestError, match="repo_id"):
            parse_manifest({"repo_id": repo_id, "revision": "v", "files": [GOOD]})
    assert check_repo_id("BAAI/bge-m3") == "BAAI/bge-m3"


def test_download_with_a_bad_repo_id_is_a_bad_manifest_not_a_traceback(model, tiny_model,
                                                                       tmp_path, monkeypatch, capsys):
    """The repo id reaches huggingface_hub only when the first file URL is built, mid-download;
    its ValueError escaped `bge-m3 download` as a traceback."""
    data = json.loads(tiny_model.manifest.read_text())
    data["repo_id"] = "local/my model"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    monkeypatch.setenv("BGE_M3_ENDPOINTS", "http://127.0.0.1:9")
    # Nothing to fetch: the folder verifies against it, and no hub is asked.
    assert download_main(["--model-dir", str(model), "--manifest", str(bad)]) == EXIT_OK
    capsys.readouterr()
    (model / "config.json").unlink()  # something to fetch: refused before anything is deleted
    target = model / "model.safetensors"
    target.write_bytes(target.read_bytes()[:-1])
    assert download_main(["--model-dir", str(model), "--manifest", str(bad)]) == EXIT_BAD_MANIFEST
    err = capsys.readouterr().err.strip()
    assert err.startswith("bge-m3 download: bad manifest: bad repo_id:") and "\n" not in err
    assert "'local/my model'" in err
    assert target.exists()  # the damaged copy is still there: nothing was deleted


def test_clean_folder_verifies(model, tiny_model, capsys):
    code, out, _ = run_verify(model, tiny_model.manifest, capsys)
    manifest = load_manifest(tiny_model.manifest)
    assert code == EXIT_OK
    assert out.count("OK ") == len(manifest.files)
    assert manifest.digest()[:12] in out


def test_truncated_file_is_a_size_failure(model, tiny_model, capsys):
    target = model / "model.safetensors"
    data = target.read_bytes()
    target.write_bytes(data[:-100])
    code, out, _ = run_verify(model, tiny_model.manifest, capsys)
    assert code == EXIT_MISMATCH
    assert f"SIZE     model.safetensors: expected {len(data)} bytes, actual {len(data) - 100}" in out


def test_one_flipped_bit_names_file_and_both_hashes(model, tiny_model, capsys):
    target = model / "model.safetensors"
    expected = file_sha256(target)
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x04
    target.write_bytes(bytes(data))
    actual = file_sha256(target)
    code, out, _ = run_verify(model, tiny_model.manifest, capsys)
    assert code == EXIT_MISMATCH
    line = next(l for l in out.splitlines() if l.startswith("HASH"))
    assert "model.safetensors" in line and expected in line and actual in line
    assert out.count("OK ") == len(load_manifest(tiny_model.manifest).files) - 1


def test_missing_file_has_its_own_exit_code(model, tiny_model, capsys):
    (model / "config.json").unlink()
    code, out, _ = run_verify(model, tiny_model.manifest, capsys)
    assert code == EXIT_MISSING
    assert "MISSING  config.json" in out
    code, _, err = run_verify(model.parent / "no-such-folder", tiny_model.manifest, capsys)
    assert code == EXIT_MISSING and "(the folder does not exist); `bge-m3 download` fetches" in err
    (model.parent / "a-file").write_text("")
    code, _, err = run_verify(model.parent / "a-file", tiny_model.manifest, capsys)
    assert code == EXIT_MISSING and "(it is a file, not a folder)" in err


def test_symlink_outside_the_folder_is_refused(model, tiny_model, tmp_path, capsys):
    outside = tmp_path / "elsewhere.json"
    shutil.copy(model / "config.json", outside)  # right bytes, wrong place
    (model / "config.json").unlink()
    os.symlink(outside, model / "config.json")
    report = verify_folder(model, load_manifest(tiny_model.manifest))
    assert [(f.path, f.status) for f in report.failures] == [("config.json", UNSAFE)]
    code, out, _ = run_verify(model, tiny_model.manifest, capsys)
    assert code == EXIT_MISMATCH and "UNSAFE   config.json" in out


def test_symlink_inside_the_folder_is_fine(model, tiny_model):
    (model / "blobs").mkdir()
    os.replace(model / "tokenizer.json", model / "blobs" / "tok")
    os.symlink("blobs/tok", model / "tokenizer.json")
    assert verify_folder(model, load_manifest(tiny_model.manifest)).ok


def test_a_hard_link_from_elsewhere_passes_and_its_hashed_bytes_are_what_is_read(model, tiny_model,
                                                                                 tmp_path):
    """A hard link is a regular file of the folder (README, verify). What the worker reads is what
    was hashed: the descriptor kept open by verification, whatever is renamed over a name later."""
    outside = tmp_path / "elsewhere.json"
    os.replace(model / "config.json", outside)
    os.link(outside, model / "config.json")
    handles: dict[str, int] = {}
    try:
        assert verify_folder(model, load_manifest(tiny_model.manifest), keep=handles).ok
        hashed = (model / "config.json").read_bytes()
        (tmp_path / "other.json").write_bytes(b"{}")
        os.replace(tmp_path / "other.json", outside)
        os.replace(outside, model / "config.json")
        assert (model / "config.json").read_bytes() == b"{}"
        assert os.pread(handles["config.json"], len(hashed) + 1, 0) == hashed
    finally:
        for fd in handles.values():
            os.close(fd)


def test_a_file_removed_while_it_is_checked_is_missing(model, tiny_model, monkeypatch):
    """Another process may delete a bad copy between the checks and the open (a gate replacing
    it): that file is MISSING, to be fetched, not an error that stops the worker."""
    import verify.verifier as verifier

    real_open = os.open

    def open_after_removal(path, flags, *args):
        if os.path.basename(path) == "config.json":
            os.unlink(path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(verifier.os, "open", open_after_removal)
    report = verify_folder(model, load_manifest(tiny_model.manifest))
    assert [(f.path, f.status) for f in report.failures] == [("config.json", MISSING)]


def _deny(monkeypatch, name: str) -> None:
    """Opening ``name`` fails as for a user without read permission (tests run as root, where
    chmod 000 stops nothing)."""
    import verify.verifier as verifier

    real_open = os.open

    def open_denied(path, flags, *args):
        if os.path.basename(path) == name:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(verifier.os, "open", open_denied)


def test_an_unreadable_file_is_a_failed_file_not_a_traceback(model, tiny_model, monkeypatch,
                                                             capsys):
    (model / "config.json").chmod(0)
    _deny(monkeypatch, "config.json")
    code, out, err = run_verify(model, tiny_model.manifest, capsys)
    assert code == EXIT_MISMATCH
    assert "UNREADABLE config.json: cannot be read: Permission denied (EACCES)" in out
    assert out.count("OK ") == len(load_manifest(tiny_model.manifest).files) - 1
    assert "FAILED: 1 of" in err
    code, out, _ = run_verify(model, tiny_model.manifest, capsys, "--json")
    (entry,) = [f for f in json.loads(out)["files"] if f["status"] != OK]
    assert code == EXIT_MISMATCH and entry["status"] == UNREADABLE
    assert entry["path"] == "config.json" and entry["error"] == "Permission denied (EACCES)"


def test_download_leaves_an_unreadable_file_alone_and_says_why(model, tiny_model, monkeypatch,
                                                                capsys):
    """Its bytes may be right: a permission or disk error is no reason to delete a 2 GB file and
    fetch it again. `download` stops before fetching anything (exit 1, the folder's own fault)."""
    _deny(monkeypatch, "config.json")
    (model / "sparse_linear.pt").unlink()  # something to fetch too: nothing is
    monkeypatch.setenv("BGE_M3_ENDPOINTS", "http://127.0.0.1:9")
    manifest = tiny_model.manifest
    assert download_main(["--model-dir", str(model), "--manifest", str(manifest)]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "UNREADABLE config.json: cannot be read: Permission denied (EACCES)" in err
    assert "not deleted: fix its permissions or the disk" in err
    assert (model / "config.json").exists() and not (model / "sparse_linear.pt").exists()


def test_mismatch_outranks_missing(model, tiny_model, capsys):
    (model / "config.json").unlink()
    (model / "sparse_linear.pt").write_bytes(b"x")
    code, _, _ = run_verify(model, tiny_model.manifest, capsys)
    assert code == EXIT_MISMATCH


def test_path_traversal_manifest_is_a_bad_manifest(model, tiny_model, tmp_path, capsys):
    data = json.loads(tiny_model.manifest.read_text())
    data["files"][0]["path"] = "../../etc/passwd"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    code, _, err = run_verify(model, bad, capsys)
    assert code == EXIT_BAD_MANIFEST
    assert "traversal" in err


def test_json_report(model, tiny_model, capsys):
    (model / "tokenizer.json").unlink()
    code, out, _ = run_verify(model, tiny_model.manifest, capsys, "--json")
    report = json.loads(out)
    assert code == EXIT_MISSING and report["exit_code"] == EXIT_MISSING and report["ok"] is False
    statuses = {f["path"]: f["status"] for f in report["files"]}
    assert statuses["tokenizer.json"] == MISSING
    assert {s for p, s in statuses.items() if p != "tokenizer.json"} == {OK}
    assert report["manifest_digest"] == load_manifest(tiny_model.manifest).digest()


def test_verify_report_statuses_in_manifest_order(model, tiny_model):
    (model / "model.safetensors").write_bytes(b"\0" * 10)
    with open(model / "tokenizer.json", "r+b") as fh:
        fh.write(b"X")
    manifest = load_manifest(tiny_model.manifest)
    report = verify_folder(model, manifest, workers=2)
    assert [f.path for f in report.files] == [f.path for f in manifest.files]
    assert {f.path: f.status for f in report.failures} == {"model.safetensors": SIZE,
                                                          "tokenizer.json": HASH}


def test_cli_subprocess_uses_environment(model, tiny_model):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGE_M3_")}
    env.update(BGE_M3_MODEL_DIR=str(model), BGE_M3_MANIFEST=str(tiny_model.manifest))
    ok = subprocess.run([BGE_M3, "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == EXIT_OK, ok.stderr
    (model / "sparse_linear.pt").unlink()
    bad = subprocess.run([BGE_M3, "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == EXIT_MISSING and "MISSING  sparse_linear.pt" in bad.stdout
