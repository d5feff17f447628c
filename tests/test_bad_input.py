"""Every kind of bad input: one clear line naming the culprit, a non-zero exit, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import TREE, VTEST, run_cli


def _odd_output_model(path: Path) -> Path:
    """A valid ONNX whose output is [B,3,8,8]: no detection format fits."""
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 416, 416])
    out = helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["batch", 3, 8, 8])
    node = helper.make_node("MaxPool", ["images"], ["feat"], kernel_shape=[52, 52], strides=[52, 52])
    model = helper.make_model(helper.make_graph([node], "odd", [inp], [out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def assert_one_line_error(proc, *needles: str, code: int | None = None):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    if code is not None:
        assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("inferpath: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_malformed_yaml(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("sources:\n  - uri: a.avi\n model: {\n")
    assert_one_line_error(run_cli("run", str(cfg)), str(cfg), "malformed YAML", code=2)


def test_unknown_key(tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(f"sources: [{VTEST}]\nmodel:\n  conf_treshold: 0.3\n")
    assert_one_line_error(run_cli("run", str(cfg)), str(cfg), "model: unknown key 'conf_treshold'", code=2)


def test_wrong_type(tmp_path):
    cfg = tmp_path / "type.yaml"
    cfg.write_text(f"sources: [{VTEST}]\nbackend:\n  max_batch: four\n")
    assert_one_line_error(run_cli("run", str(cfg)), "backend.max_batch: expected an integer or one of 'auto', got 'four'", code=2)


def test_missing_model(tmp_path):
    missing = tmp_path / "nope.onnx"
    assert_one_line_error(run_cli("run", "--source", str(VTEST), "--model", str(missing), "-o", str(tmp_path)),
                          str(missing), "model file not found", code=3)


def test_non_onnx_model(tmp_path):
    fake = tmp_path / "weights.onnx"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    assert_one_line_error(run_cli("run", "--source", str(VTEST), "--model", str(fake), "-o", str(tmp_path)),
                          str(fake), "ONNX", code=3)


def test_model_with_unknown_outputs(tmp_path):
    model = _odd_output_model(tmp_path / "odd.onnx")
    assert_one_line_error(run_cli("run", "--source", str(VTEST), "--model", str(model), "-o", str(tmp_path)),
                          str(model), "fits no known format", "[batch,3,8,8]", code=3)


def test_missing_video(tmp_path):
    video = tmp_path / "missing.mp4"
    assert_one_line_error(run_cli("run", "--source", str(video), "-o", str(tmp_path)),
                          str(video), "video file not found", code=4)


def test_not_a_video(tmp_path):
    video = tmp_path / "notes.mp4"
    video.write_text("this is not a video\n" * 100)
    assert_one_line_error(run_cli("run", "--source", str(video), "-o", str(tmp_path)),
                          str(video), "cannot open as a video", code=4)


def test_damaged_video_processes_what_decodes(tmp_path):
    proc = run_cli("run", "--source", str(TREE), "-o", str(tmp_path))
    assert_one_line_error(proc, str(TREE), "68 of 444 frames", "processed those 68", code=4)
    lines = (tmp_path / "tree.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(68))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sources"][0]["frames_out"] == 68 and summary["sources"][0]["claimed_frames"] == 444


@pytest.mark.parametrize("kind", ["file_in_the_way", "read_only_fs"])
def test_unwritable_output(tmp_path, kind):
    if kind == "file_in_the_way":
        blocker = tmp_path / "out"
        blocker.write_text("a file, not a directory")
        out = blocker / "sub"
    else:
        out = Path("/proc/inferpath-out")
    assert_one_line_error(run_cli("run", "--source", str(VTEST), "-o", str(out)), str(out), "output.dir", code=5)


def test_unknown_backend(tmp_path):
    assert_one_line_error(run_cli("run", "--source", str(VTEST), "--backend", "openvino", "-o", str(tmp_path)),
                          "backend.name: unknown backend 'openvino'", "onnxruntime", code=2)


def test_no_source():
    assert_one_line_error(run_cli("run"), "no source given")


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("inferpath ")

