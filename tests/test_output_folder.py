"""Output folders that cannot be created or written are refused before any work (one line,
status 2), and what distforget writes gets the process umask's modes, not tempfile's 0600/0700."""

import os
import stat
import subprocess
import sys

import pytest

from distforget import storage
from distforget.errors import ConfigError


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_path_under_a_file_is_refused_naming_the_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError) as err:
        storage.check_writable_folder(tmp_path / "afile" / "runs" / "r1", "output folder")
    message = str(err.value)
    assert f"'{tmp_path / 'afile'}' is a file, expected a folder" in message
    assert message.startswith(f"output folder '{tmp_path / 'afile' / 'runs' / 'r1'}'")


def test_an_existing_file_as_the_folder_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ConfigError, match="is a file, expected a folder"):
        storage.check_writable_folder(tmp_path / "out", "--out")


def test_a_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    def refuse(folder, prefix, suffix=".tmp"):  # what a folder without write permission does
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(storage, "temp_file", refuse)
    with pytest.raises(ConfigError) as err:
        storage.check_writable_folder(tmp_path / "ro", "--out")
    assert "cannot be created or written (Permission denied)" in str(err.value)
    assert not (tmp_path / "ro").exists()  # the check leaves nothing behind


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        with pytest.raises(ConfigError, match="Permission denied"):
            storage.check_writable_folder(ro / "run", "--out")
    finally:
        ro.chmod(0o755)


def test_a_usable_folder_passes_and_the_check_leaves_nothing(tmp_path):
    storage.check_writable_folder(tmp_path / "a" / "b", "--out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    storage.check_writable_folder(tmp_path / "kept", "--out")
    assert list((tmp_path / "kept").iterdir()) == []
    storage.check_writable_folder("s3://bucket/runs", "--out")  # remote: left to the write


def test_search_refuses_an_output_folder_under_a_file_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "distforget.search", f"output.storage={tmp_path / 'afile'}"],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "DISTFORGET_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a file, expected a folder" in lines[0], proc.stderr
    assert "output folder (output.storage, output.name)" in lines[0]
    assert not (tmp_path / "cache").exists()  # no data, no pretraining, no Ray session


def test_unlearn_refuses_an_unwritable_out_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "distforget.unlearn", "--method", "base",
         "--out", str(tmp_path / "afile" / "ckpts")],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "DISTFORGET_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m distforget.unlearn: error: --out")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "unlearn.json").exists()


def test_export_refuses_an_unwritable_out_before_reading_the_run(tmp_path, capsys):
    from distforget.export import main

    (tmp_path / "afile").write_text("x")
    assert main(["--run", str(tmp_path / "no-such-run"),
                 "--out", str(tmp_path / "afile" / "x")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file" in err and "no-such-run" not in err


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with storage.atomic_path(tmp_path / "sub" / "a.bin") as tmp:
            tmp.write_bytes(b"1")
        assert mode(tmp_path / "sub" / "a.bin") == 0o644
        assert mode(tmp_path / "sub") == 0o755
        os.umask(0o077)
        with storage.atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"1")
        assert mode(tmp_path / "b.bin") == 0o600
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "sub"]  # no temp files


def test_cached_arrays_get_normal_modes(tmp_path, umask_022):
    import numpy as np

    from distforget.data.sources import save_atomic_npy

    save_atomic_npy(tmp_path / "decoded" / "k.npy", np.zeros((2, 4, 4, 3), np.uint8))
    assert mode(tmp_path / "decoded" / "k.npy") == 0o644
    assert mode(tmp_path / "decoded") == 0o755


def test_temp_dir_follows_the_umask(tmp_path, umask_022):
    folder = storage.temp_dir(tmp_path, ".x.tmp-")
    assert mode(folder) == 0o755 and folder.name.startswith(".x.tmp-")


def test_weights_written_by_safetensors_through_atomic_path_get_normal_modes(tmp_path,
                                                                           umask_022):
    import torch
    from safetensors.torch import save_file

    with storage.atomic_path(tmp_path / "models" / "w.safetensors") as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp))  # safetensors itself makes 0600 files
    assert mode(tmp_path / "models" / "w.safetensors") == 0o644


def test_the_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert storage.current_umask() == 0o027
        assert storage.current_umask() == 0o027
    finally:
        os.umask(old)
