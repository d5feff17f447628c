"""Atomic writes: the target holds the old file or the whole new one, and no temp file is left behind."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from pipeline import fileio
from pipeline.fileio import atomic_write_bytes, staged_path, temp_path_beside


def leftovers(d) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "engine.bin"
    assert atomic_write_bytes(target, b"one") == target
    assert target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two, longer")
    assert target.read_bytes() == b"two, longer"
    assert leftovers(target.parent) == []


def test_new_file_gets_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_temp_is_hidden_beside_the_target_with_the_suffix(tmp_path):
    t = temp_path_beside(tmp_path / "model.onnx", ".onnx")
    assert t.parent == tmp_path and t.name.startswith(".model.onnx.") and t.suffix == ".onnx"
    assert temp_path_beside(tmp_path / "model.onnx") != temp_path_beside(tmp_path / "model.onnx")


def test_failure_while_writing_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "cache.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):  # the temp file exists when the write raises
        atomic_write_bytes(target, "not bytes")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_block_failing_after_a_partial_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), staged_path(target, ".onnx") as tmp:
        tmp.write_bytes(b"part")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_disk_full_at_flush_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "engine.bin"
    target.write_bytes(b"old engine")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new engine" * 1000)
    assert target.read_bytes() == b"old engine"
    assert leftovers(tmp_path) == []


def test_failed_replace_leaves_no_temp(tmp_path):
    target = tmp_path / "out"
    target.mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(target, b"data")
    assert target.is_dir() and leftovers(tmp_path) == []


def test_staged_path_moves_what_a_library_wrote(tmp_path):
    target = tmp_path / "m.onnx"
    with staged_path(target, ".onnx") as tmp:
        assert not target.exists() and tmp.suffix == ".onnx"
        tmp.write_text("written by a tool")
    assert target.read_text() == "written by a tool"
    assert leftovers(tmp_path) == []
