"""``inferpath inspect``: the bundled model's report, the FLOPs estimate, the timed run, and errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.errors import ModelError
from pipeline.inspect_model import describe_model, estimate_flops, format_report, inspect_model, profile_run
from tests.conftest import VTEST, run_cli


@pytest.fixture(scope="module")
def report(model_path):
    return describe_model(model_path)


def test_bundled_model_report(report):
    assert report["format"] == "yolov8" and report["format_error"] is None
    assert report["inputs"] == [{"name": "images", "shape": ["batch", 3, 416, 416], "dtype": "float32"}]
    assert report["outputs"] == [{"name": "output0", "shape": ["batch", 84, 3549], "dtype": "float32"}]
    assert report["num_classes"] == 80 and report["spec"]["names"][0] == "person"
    assert report["opset"] == {"ai.onnx": 17}
    assert report["ops"]["Conv"] > 10 and report["nodes"] == sum(report["ops"].values())
    assert 3e6 < report["parameters"] < 5e6  # NanoDet-g: about 3.8 M
    assert 4 * report["parameters"] <= report["parameter_bytes"] < 4.01 * report["parameters"]  # float32 (+ int64 shapes)
    flops = report["flops"]
    assert 1e9 < flops["total"] < 2e10  # NanoDet-g at 416: roughly 4 GFLOPs
    assert flops["by_op"]["Conv"] > 0.9 * flops["total"] and flops["unknown_nodes"] == 0
    assert "description" in report["metadata"]


def test_text_report_names_the_essentials(report):
    text = format_report(report)
    for needle in ("images  float32 [batch,3,416,416]", "output0  float32 [batch,84,3549]", "yolov8",
                   "80 class names", "GFLOPs per frame", "Conv 34", "opset ai.onnx 17"):
        assert needle in text, needle


def _tiny_model(batch: int | str) -> onnx.ModelProto:
    """x[B,3,8,8] -> Conv(4 out, 3x3, pad 1, bias) -> Relu -> Flatten -> MatMul[256,10] -> Gemm(10->5, transB, C)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((256, 10)).astype(np.float32), "m"),
        numpy_helper.from_array(rng.standard_normal((5, 10)).astype(np.float32), "g"),
        numpy_helper.from_array(np.zeros(5, np.float32), "c"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("MatMul", ["f", "m"], ["mm"]),
        helper.make_node("Gemm", ["mm", "g", "c"], ["out"], transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("batch", ["N", 1, 4])
def test_flops_of_a_hand_counted_model_are_per_frame(batch):
    conv = 2 * (4 * 8 * 8) * (3 * 3 * 3) + 4 * 8 * 8  # multiply-adds + bias
    relu = 4 * 8 * 8
    matmul = 2 * 10 * 256
    gemm = 2 * 5 * 10 + 5
    flops = estimate_flops(_tiny_model(batch))
    scale = 4 if batch == 4 else 1  # a fixed batch is what the model runs; a symbolic one becomes 1
    expected = {"Conv": conv, "Relu": relu, "MatMul": matmul, "Gemm": gemm}
    assert flops["by_op"] == {k: v * scale for k, v in expected.items()}
    assert flops["total"] == scale * (conv + relu + matmul + gemm)
    assert flops["macs"] == scale * ((4 * 8 * 8) * 27 + 10 * 256 + 5 * 10)


def test_run_breaks_the_time_down_by_stage(model_path):
    run = profile_run(model_path, VTEST, frames=12)
    assert run["frames"] == 12
    stages = run["stages"]
    assert {"capture", "preprocess", "queue", "inference", "postprocess", "sink", "e2e"} <= set(stages)
    assert stages["inference"]["p50_ms"] > 0 and stages["inference"]["p99_ms"] >= stages["inference"]["p50_ms"]
    # e2e = capture + preprocess + queue + inference + postprocess, frame by frame: the shares add up
    shares = [stages[s]["e2e_share"] for s in ("capture", "preprocess", "queue", "inference", "postprocess")]
    assert sum(shares) == pytest.approx(1.0, abs=0.01)
    assert stages["sink"]["e2e_share"] is None
    text = inspect_model(model_path, run=True, video=VTEST, frames=5)
    assert "run: 5 frames of vtest.avi" in text and "inference" in text and "of e2e" in text


def test_cli_json(model_path):
    proc = run_cli("inspect", str(model_path), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["format"] == "yolov8" and data["outputs"][0]["shape"] == ["batch", 84, 3549]


@pytest.mark.parametrize("name, content", [
    ("notes.onnx", b"this is not a protobuf \xff\xfe" * 10),
    ("config.yaml", b"model: {path: x}\n"),
    ("missing.onnx", None),
    ("empty.onnx", b""),
])
def test_not_an_onnx_model_is_one_line_and_nonzero(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=name):
        describe_model(path)
    proc = run_cli("inspect", str(path))
    assert proc.returncode == ModelError.exit_code
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("inferpath: error:") and name in lines[0]
