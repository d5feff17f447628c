"""Engine cache: keys, manifests, invalidation, atomic writes. No GPU needed."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.backends.engine_cache import EngineCache, EngineKey
from pipeline.fileio import sha256_file

BASE = EngineKey(
    onnx_sha256="a" * 64,
    precision="fp16",
    trt_version="10.9.0",
    gpu_name="NVIDIA H100",
    compute_capability="9.0",
    input_shapes=(("images", (1, 3, 416, 416), (4, 3, 416, 416), (8, 3, 416, 416)),),
    builder=(("workspace_mb", "2048"),),
)

CHANGES = [
    ("onnx_sha256", "b" * 64),
    ("precision", "int8"),
    ("trt_version", "11.0.0"),
    ("gpu_name", "NVIDIA L4"),
    ("compute_capability", "8.9"),
    ("input_shapes", (("images", (1, 3, 416, 416), (8, 3, 416, 416), (8, 3, 416, 416)),)),
    ("input_shapes", (("images", (1, 3, 416, 416), (4, 3, 416, 416), (16, 3, 416, 416)),)),
    ("builder", (("workspace_mb", "4096"),)),
]


def test_digest_is_stable():
    assert BASE.digest() == dataclasses.replace(BASE).digest()
    assert len(BASE.digest()) == 20


@pytest.mark.parametrize("field,value", CHANGES)
def test_changing_any_key_field_changes_the_key(field, value):
    other = dataclasses.replace(BASE, **{field: value})
    assert other != BASE
    assert other.digest() != BASE.digest()


def test_key_dict_round_trip():
    assert EngineKey.from_dict(json.loads(json.dumps(BASE.to_dict()))) == BASE


def test_manifest_round_trip(tmp_path):
    cache = EngineCache(tmp_path)
    entry = cache.entry(BASE, stem="nanodet")
    cache.store(entry, b"engine-bytes", info={"onnx_path": "x.onnx"})
    assert entry.engine_path.name.startswith("nanodet-fp16-")
    manifest = json.loads(entry.manifest_path.read_text())
    assert EngineKey.from_dict(manifest["key"]) == BASE
    assert manifest["engine_bytes"] == len(b"engine-bytes")
    assert manifest["info"]["onnx_path"] == "x.onnx"
    assert cache.load(entry) == b"engine-bytes"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("field,value", CHANGES)
def test_changed_key_rebuilds_and_never_loads_the_old_engine(tmp_path, field, value):
    cache = EngineCache(tmp_path)
    builds = []

    def build(tag: bytes):
        def _b() -> bytes:
            builds.append(tag)
            return tag

        return _b

    old = cache.entry(BASE)
    assert cache.get_or_build(old, build(b"old")) == (b"old", True)
    assert cache.get_or_build(old, build(b"again")) == (b"old", False)  # cached: no rebuild
    new = cache.entry(dataclasses.replace(BASE, **{field: value}))
    assert cache.get_or_build(new, build(b"new")) == (b"new", True)
    assert builds == [b"old", b"new"]


def test_stale_manifest_at_the_same_path_is_not_loaded(tmp_path):
    """A manifest recording a different key (e.g. an engine copied from another GPU) is a miss."""
    cache = EngineCache(tmp_path)
    entry = cache.entry(BASE)
    cache.store(entry, b"engine")
    manifest = json.loads(entry.manifest_path.read_text())
    manifest["key"]["gpu_name"] = "NVIDIA T4"
    entry.manifest_path.write_text(json.dumps(manifest))
    assert "gpu_name" in cache.stale_reason(entry)
    assert cache.load(entry) is None
    engine, built = cache.get_or_build(entry, lambda: b"rebuilt")
    assert (engine, built) == (b"rebuilt", True)
    assert cache.load(entry) == b"rebuilt"


@pytest.mark.parametrize("damage", ["truncate", "replace", "no_manifest", "bad_json", "old_version"])
def test_damaged_entries_are_misses(tmp_path, damage):
    cache = EngineCache(tmp_path)
    entry = cache.entry(BASE)
    cache.store(entry, b"0123456789")
    if damage == "truncate":
        entry.engine_path.write_bytes(b"01234")
    elif damage == "replace":
        entry.engine_path.write_bytes(b"9876543210")  # same size, other bytes
    elif damage == "no_manifest":
        entry.manifest_path.unlink()
    elif damage == "bad_json":
        entry.manifest_path.write_text("{not json")
    elif damage == "old_version":
        m = json.loads(entry.manifest_path.read_text())
        m["manifest_version"] = 0
        entry.manifest_path.write_text(json.dumps(m))
    assert cache.stale_reason(entry) is not None
    assert cache.load(entry) is None


def test_missing_engine_is_a_miss(tmp_path):
    cache = EngineCache(tmp_path / "does-not-exist-yet")
    entry = cache.entry(BASE)
    assert cache.stale_reason(entry) == "no engine file"
    assert cache.load(entry) is None


def test_failed_build_leaves_no_manifest(tmp_path):
    cache = EngineCache(tmp_path)
    entry = cache.entry(BASE)

    def boom() -> bytes:
        raise RuntimeError("builder failed")

    with pytest.raises(RuntimeError):
        cache.get_or_build(entry, boom)
    assert not entry.manifest_path.exists()
    assert not entry.engine_path.exists()


def test_sha256_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
