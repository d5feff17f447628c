"""Models, hardened: every output scanned, forced formats checked, the ONNX's own input size,
and an inference error that ends the run in one line, at once, with every frame accounted for."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.config import build_config
from pipeline.errors import ModelError
from pipeline.model import bundled_model_path, class_label
from pipeline.postprocess import choose_output
from pipeline.runtime import Pipeline, make_backend
from tests.conftest import VTEST, run_cli
from tests.rtsp import free_port
from tests.test_bad_input import assert_one_line_error
from tests.test_sources import make_clip

DETS = np.zeros((1, 100, 6), np.float32)
DETS[0, 0] = [8, 8, 40, 40, 0.9, 1]  # one box in 64x64 model-input pixels, class 1


def _save(nodes, outputs, path: Path, inputs=None) -> Path:
    inputs = inputs or [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])]
    model = helper.make_model(helper.make_graph(nodes, "m", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_v"))


def centernet_like(path: Path) -> Path:
    """Outputs like a CenterNet export: three 4-D maps, then ``detections [1,100,6]`` (NMS done).
    ``detections`` also depends on the input (times 0), so the graph really runs on the frame."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        _const("zero", np.zeros(1, np.float32)),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        _const("dets_c", DETS),
        helper.make_node("Add", ["dets_c", "nothing"], ["detections"]),
        _const("heat", np.zeros((1, 16, 16, 4), np.float32)),
        _const("wh", np.zeros((1, 16, 16, 2), np.float32)),
        _const("reg", np.zeros((1, 16, 16, 2), np.float32)),
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
            (("heat", [1, 16, 16, 4]), ("wh", [1, 16, 16, 2]), ("reg", [1, 16, 16, 2]), ("detections", [1, 100, 6]))]
    _save(nodes, outs, path)
    path.with_suffix(".yaml").write_text("input_size: [64, 64]\nnames: [cat, dog, bird]\noutput_format: end2end\n")
    return path


def tf_od_like(path: Path) -> Path:
    """The four outputs of a TF Object Detection API export: no layout we read."""
    shapes = {"detection_boxes": [1, 100, 4], "detection_classes": [1, 100], "detection_scores": [1, 100],
              "num_detections": [1]}
    nodes = [_const(n, np.zeros(s, np.float32)) for n, s in shapes.items()]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    return _save(nodes, outs, path)


def test_end2end_detections_found_among_several_outputs(tmp_path):
    """Before: only output 0 was examined, so this model was refused even with format end2end."""
    model = centernet_like(tmp_path / "centernet.onnx")
    clip = make_clip(tmp_path / "clip.avi", frames=3, size=(160, 120))
    proc = run_cli("run", "--source", str(clip), "-m", str(model), "-o", str(tmp_path / "out"), "--no-video")
    assert proc.returncode == 0, proc.stderr
    assert "from output detections" in proc.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "clip.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        (det,) = r["detections"]
        assert det["class_name"] == "dog"
        # 160x120 letterboxed to 64x48 (scale 0.4), padded 8 px top: (8,8,40,40) -> (20,0,100,80)
        assert det["box"] == pytest.approx([20, 0, 100, 80], abs=0.5)


def test_model_output_by_name(tmp_path):
    outputs = [("heat", [1, 16, 16, 4]), ("boxes", [1, 100, 6]), ("detections", [1, 100, 6])]
    assert choose_output(outputs) == (1, "end2end")
    assert choose_output(outputs, name="detections") == (2, "end2end")
    with pytest.raises(ModelError, match="no output named 'nope'; outputs: heat"):
        choose_output(outputs, name="nope")
    with pytest.raises(ModelError, match="output heat \\[1,16,16,4\\] fits no known format"):
        choose_output(outputs, name="heat")


def test_refusal_names_every_output(tmp_path):
    model = tf_od_like(tmp_path / "tfod.onnx")
    proc = run_cli("run", "--source", str(VTEST), "-m", str(model), "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "detection_boxes [1,100,4]", "detection_classes [1,100]", "detection_scores [1,100]",
                          "num_detections [1]", "model.output", code=ModelError.exit_code)


@pytest.mark.parametrize("fmt", ["yolov5", "end2end"])
def test_forced_format_is_checked_against_the_output(tmp_path, fmt):
    """Before: --set model.format=yolov5 on the YOLOv8-layout model gave class ids like 3524."""
    proc = run_cli("run", "--source", str(VTEST), "-o", str(tmp_path), "--set", f"model.format={fmt}")
    assert_one_line_error(proc, "output0", "[batch,84,3549]", fmt, code=ModelError.exit_code)
    assert not list(tmp_path.glob("*.jsonl"))


def _strip_spec(path: Path) -> Path:
    m = onnx.load(str(bundled_model_path()))
    del m.metadata_props[:]
    onnx.save(m, str(path))
    return path


def test_model_without_spec_takes_its_input_from_the_onnx(tmp_path):
    """Before: a 640 NCHW guess, an ORT traceback, a 30 s stall, NaN in summary.json."""
    model = _strip_spec(tmp_path / "nometa.onnx")
    out = tmp_path / "out"
    proc = run_cli("run", "--source", str(VTEST), "-m", str(model), "-o", str(out), "--no-video",
                   "--set", "sources.0.max_frames=5")
    assert proc.returncode == 0, proc.stderr
    assert "input 416x416 NCHW read from the ONNX" in proc.stderr
    assert len((out / "vtest.jsonl").read_text().splitlines()) == 5


def test_spec_contradicting_the_onnx_is_refused(tmp_path):
    model = _strip_spec(tmp_path / "m.onnx")
    (tmp_path / "m.yaml").write_text("input_size: [320, 320]\n")
    proc = run_cli("run", "--source", str(VTEST), "-m", str(model), "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "m.onnx", "320x320", "[batch,3,416,416]", code=ModelError.exit_code)


class _FailsAfter:
    """The real ONNX Runtime backend, made to fail from its Nth call on (test fault injection:
    the error a bad model or a lost device raises mid-run)."""

    def __init__(self, backend, calls: int) -> None:
        self._backend, self._left = backend, calls
        self.name, self.inputs, self.outputs = backend.name, backend.inputs, backend.outputs
        self.max_batch = backend.max_batch

    def infer(self, batch):
        self._left -= 1
        if self._left < 0:
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions\n index: 2")
        return self._backend.infer(batch)

    def close(self) -> None:
        self._backend.close()


def test_inference_error_ends_the_run_at_once_with_every_frame_counted(tmp_path, no_thread_leak):
    cfg = build_config({"sources": [str(VTEST)], "output": {"dir": str(tmp_path)}, "backend": {"max_batch": 1},
                        "pipeline": {"progress": False}})
    backend = _FailsAfter(make_backend(cfg, bundled_model_path()), calls=2 + 6)  # warm-up, then 6 frames
    summary = Pipeline(cfg, backend=backend).run()
    src = summary.sources[0]
    assert summary.wall_s < 20  # before: a 30 s wait for threads that could never finish
    assert src.error and "nanodet_coco.onnx: inference failed on an input of shape [1, 3, 416, 416]" in src.error
    assert "\n" not in src.error
    assert src.frames_in == src.frames_out + sum(src.drops.values())
    assert src.drops.get("error@inference") == 1


def test_summary_json_is_strict_json(tmp_path):
    """NaN (no latency samples) is written as null: strict parsers reject NaN."""
    proc = run_cli("run", "--source", f"rtsp://127.0.0.1:{free_port()}/none", "-o", str(tmp_path), "--duration", "1",
                   timeout=120)
    text = (tmp_path / "summary.json").read_text()
    assert proc.returncode != 0 and "NaN" not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert data["sources"][0]["e2e_ms"]["p50"] is None
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in data["sources"][0]["e2e_ms"].values())


@pytest.mark.parametrize("class_id, label", [(0, "cat"), (2, "bird"), (3, "3"), (-1, "-1")])
def test_class_label_names_or_numbers(class_id, label):
    assert class_label(("cat", "dog", "bird"), class_id) == label


def _raw_255_model(path: Path) -> Path:
    """The bundled model behind a x1/255 of its own, with no spec: it wants 0-255 floats (as
    CenterNet does), while a model without a spec is fed 0-1 by assumption."""
    m = onnx.load(str(bundled_model_path()))
    old = m.graph.input[0].name
    m.graph.initializer.append(numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255"))
    m.graph.node.insert(0, helper.make_node("Mul", ["raw_0_255", "inv255"], [old]))
    del m.graph.input[0]
    m.graph.input.insert(0, helper.make_tensor_value_info("raw_0_255", TensorProto.FLOAT, [1, 3, 416, 416]))
    del m.metadata_props[:]
    onnx.save(m, str(path))
    return path


def test_an_assumed_normalization_is_logged_and_finding_nothing_is_warned_once(tmp_path):
    """Before: 0 detections and not a word. Now the start line says the normalization is assumed,
    and 100 frames without a detection say to check the spec; with the right spec (scale 1.0) the
    same model finds people and says nothing of the kind."""
    model = _raw_255_model(tmp_path / "raw.onnx")
    args = ["run", "--source", str(VTEST), "--model", str(model), "--no-video", "--set", "sources.0.max_frames=110"]
    proc = run_cli(*args, "-o", str(tmp_path / "a"), timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "input RGB x1/255 assumed: no model spec) on onnxruntime" in proc.stderr
    warning = "vtest: raw.onnx found nothing in the first 100 frames; check the model's spec: scale/mean/std/colour"
    assert proc.stderr.count(warning) == 1, proc.stderr
    (tmp_path / "raw.yaml").write_text("input_size: [416, 416]\nscale: 1.0\n")  # the spec beside the model
    proc = run_cli(*args, "-o", str(tmp_path / "b"), timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "input RGB x1)" in proc.stderr and "assumed" not in proc.stderr and "found nothing" not in proc.stderr
    records = [json.loads(line) for line in (tmp_path / "b" / "vtest.jsonl").read_text().splitlines()]
    assert sum(len(r["detections"]) for r in records) > 100
