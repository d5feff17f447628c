"""`inferpath quantize` / `convert` end to end on the bundled model and sample video; bad input, one line each."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from pipeline import precision as P
from pipeline.cli import main
from pipeline.model import bundled_model_path
from tests.test_precision import write_video

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT / "sample_videos/vtest.avi"
FAST = ["--frames", "16", "--gate-frames", "16"]  # few frames: quantization is slow on 2 cores

pytestmark = pytest.mark.skipif(
    not (bundled_model_path().exists() and VIDEO.exists()), reason="bundled model or sample video missing"
)


def one_line(err: str, *needles: str) -> None:
    lines = [x for x in err.strip().splitlines() if x.startswith("inferpath: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """`inferpath quantize` with the default target (backend.name: onnxruntime), gated."""
    out = tmp_path_factory.mktemp("cli") / "q.onnx"
    rc = main(["quantize", "--calib", str(VIDEO), *FAST, "-o", str(out)])
    assert rc == 0 and out.exists()
    return out


def test_quantize_default_target_is_the_backend(quantized, capsys):
    assert P.quant_target(quantized) == "onnxruntime"
    assert P.model_size_mb(quantized) < 5.0  # int8 weights


def test_quantize_for_tensorrt_writes_the_symmetric_form(tmp_path, capsys):
    out = tmp_path / "trt.onnx"
    rc = main(["quantize", "--calib", str(VIDEO), *FAST, "--no-gate", "--set", "backend.name=tensorrt",
               "-o", str(out)])
    assert rc == 0
    q = onnx.load(out)
    assert P.quant_target(q) == "tensorrt" and P.check_tensorrt_qdq(q) == []
    assert "INT8 for tensorrt" in capsys.readouterr().out


def test_recovery_runs_on_a_strict_gate_and_ends_clearly(tmp_path, capsys):
    out = tmp_path / "r.onnx"
    rc = main(["quantize", "--calib", str(VIDEO), *FAST, "-o", str(out), "--set", "precision.gate.min_map=0.995",
               "--set", "precision.max_float_layers=2"])
    cap = capsys.readouterr()
    assert "recovering" in cap.err and "recovery: most sensitive convs" in cap.err
    assert "recovery: 1 conv(s) in float" in cap.err
    if rc == 0:  # passed: the float layers are named and the speed cost is printed
        assert "recovery: kept" in cap.out and "x FP32" in cap.out and out.exists()
        meta = P.get_metadata(onnx.load(out))[P.PREPARED_KEY]
        assert "float_layers" in meta
    else:
        assert rc == 6 and not out.exists()
        one_line(cap.err, "even with 2 conv(s) in float")


def test_no_recover_refuses_at_once(tmp_path, capsys):
    out = tmp_path / "n.onnx"
    rc = main(["quantize", "--calib", str(VIDEO), *FAST, "--no-recover", "-o", str(out),
               "--set", "precision.gate.min_map=1.01"])
    cap = capsys.readouterr()
    assert rc == 6 and not out.exists() and "recovery" not in cap.err + cap.out
    one_line(cap.err, "accuracy gate failed", "pseudo-mAP")
    assert not list(tmp_path.glob(".*.tmp*"))


def test_refused_convert_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out16 = tmp_path / "f16.onnx"
    rc = main(["convert", "--fp16", "--video", str(VIDEO), "--gate-frames", "2", "-o", str(out16),
               "--set", "precision.gate.min_mean_iou=1.01"])
    assert rc == 6 and not out16.exists()  # the refused model is not left behind
    assert not list(tmp_path.glob(".*.tmp*"))
    one_line(capsys.readouterr().err, "accuracy gate failed")
    assert main(["convert", "--no-gate"]) == 2  # nothing to do


def test_bad_calibration_video_one_line_each(tmp_path, capsys):
    cases = [
        (tmp_path / "missing.avi", "video file not found"),
        (tmp_path / "garbage.avi", "cannot open as a video"),
        (write_video(tmp_path / "short.avi", 5), "too short to calibrate on: 5 frame(s)"),
    ]
    (tmp_path / "garbage.avi").write_bytes(b"not a video at all" * 100)
    for video, needle in cases:
        assert main(["quantize", "--calib", str(video), "-o", str(tmp_path / "q.onnx")]) == 4
        one_line(capsys.readouterr().err, str(video), needle)


def test_bad_model_or_target_one_line_each(quantized, tmp_path, capsys):
    u8 = P.save_model(P.wrap_uint8_input(bundled_model_path()), tmp_path / "u8.onnx")
    cases = [
        (["--model", str(quantized)], 3, "already int8"),
        (["--model", str(u8)], 3, "uint8 input"),
        (["--target", "tpu"], 2, "--target: expected one of onnxruntime, tensorrt, got 'tpu'"),
        (["--set", "backend.name=openvino"], 2, "backend.name"),
    ]
    for extra, code, needle in cases:
        assert main(["quantize", "--calib", str(VIDEO), *FAST, *extra, "-o", str(tmp_path / "q.onnx")]) == code
        one_line(capsys.readouterr().err, needle)


def _nhwc_without_spec(path: Path) -> Path:
    """The bundled model behind a Transpose, taking [1,416,416,3] float (CenterNet's layout), with
    no spec anywhere: the run takes its input from the ONNX, and so must quantize and the gate."""
    from onnx import TensorProto, helper

    m = onnx.load(str(bundled_model_path()))
    old = m.graph.input[0].name
    m.graph.node.insert(0, helper.make_node("Transpose", ["image_nhwc"], [old], perm=[0, 3, 1, 2]))
    del m.graph.input[0]
    m.graph.input.insert(0, helper.make_tensor_value_info("image_nhwc", TensorProto.FLOAT, [1, 416, 416, 3]))
    del m.metadata_props[:]
    onnx.save(m, str(path))
    return path


def test_quantize_and_convert_an_nhwc_model_without_a_spec(tmp_path, capsys):
    """Before: the gate and calibration fed NCHW 3x640x640 tensors, and ONNX Runtime's traceback
    ended the command, while `inferpath run` shaped the same model's input right."""
    model = _nhwc_without_spec(tmp_path / "nhwc.onnx")
    q = tmp_path / "nhwc.int8.onnx"
    assert main(["quantize", "--calib", str(VIDEO), *FAST, "--model", str(model), "-o", str(q)]) == 0
    out = capsys.readouterr().out
    assert "gate" in out and "PASS" in out and q.exists()
    f16 = tmp_path / "nhwc.fp16.onnx"
    assert main(["convert", "--fp16", "--video", str(VIDEO), "--gate-frames", "16", "--model", str(model),
                 "-o", str(f16)]) == 0
    assert "PASS" in capsys.readouterr().out and f16.exists()


def test_an_onnx_runtime_error_while_quantizing_is_one_line(tmp_path, capsys):
    """A model ONNX Runtime cannot run on the frames it is given (its spec says 320x320, a
    Reshape inside needs 416x416): one line naming the model, exit 3, no traceback."""
    import json

    from onnx import TensorProto, helper

    m = onnx.load(str(bundled_model_path()))
    old = m.graph.input[0].name
    shape = helper.make_tensor("fixed_shape", TensorProto.INT64, [4], [1, 3, 416, 416])
    m.graph.initializer.append(shape)
    m.graph.node.insert(0, helper.make_node("Reshape", ["any_size", "fixed_shape"], [old]))
    del m.graph.input[0]
    m.graph.input.insert(0, helper.make_tensor_value_info("any_size", TensorProto.FLOAT, [1, 3, "h", "w"]))
    spec = json.loads(P.get_metadata(m)[P.SPEC_KEY])
    P.set_metadata(m, {P.SPEC_KEY: json.dumps({**spec, "input_size": [320, 320]})})
    bad = tmp_path / "reshape.onnx"
    onnx.save(m, str(bad))
    assert main(["quantize", "--calib", str(VIDEO), *FAST, "--model", str(bad), "-o", str(tmp_path / "q.onnx")]) == 3
    one_line(capsys.readouterr().err, str(bad), "ONNX Runtime failed on it")
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("command", [
    ["quantize", "--calib", "{blank}", *FAST],
    ["convert", "--uint8-input", "--video", "{blank}", "--gate-frames", "16"],
])
def test_the_gate_on_footage_without_objects_says_there_is_nothing_to_judge(tmp_path, capsys, command):
    """Before: a warning, then recovery (8 convs kept in float), then 'pseudo-mAP 0.000 < 0.85'.
    Now one line, exit 6, no recovery; --no-gate keeps the model."""
    from tests.test_precision import write_video

    blank = write_video(tmp_path / "blank.avi", 200, step=0)
    out = tmp_path / "m.onnx"
    args = [a.replace("{blank}", str(blank)) for a in command]
    assert main([*args, "-o", str(out)]) == 6
    cap = capsys.readouterr()
    one_line(cap.err, "FP32 found no objects", "nothing to judge", "--no-gate")
    assert "recover" not in cap.err + cap.out and "pseudo-mAP" not in cap.err and not out.exists()
    assert main([*args, "-o", str(out), "--no-gate"]) == 0 and out.exists()


def test_a_uint8_input_model_is_named_for_what_it_is(tmp_path, capsys):
    """Before: 'accuracy gate failed (fp32 vs FP32 ...)' for a model whose weights are FP32's own."""
    rc = main(["convert", "--uint8-input", "--video", str(VIDEO), "--gate-frames", "8",
               "-o", str(tmp_path / "u8.onnx"), "--set", "precision.gate.min_mean_iou=1.01"])
    assert rc == 6
    err = capsys.readouterr().err
    one_line(err, "accuracy gate failed (the prepared FP32 model (same weights, new input) vs FP32", "mean IoU")
    assert "fp32 vs FP32" not in err


def test_judging_against_no_fp32_box_gives_no_pseudo_map():
    import math

    import numpy as np

    from pipeline.config import Config
    from pipeline.frame import Detections

    cand = [Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32), np.zeros(1, np.int64))]
    report = P.judge([Detections.empty()], cand, Config())
    assert math.isnan(report.map50) and report.nothing_to_judge and not report.passed
    assert "nothing to judge" in report.failures[0] and "n/a" in report.table()


@pytest.mark.parametrize(
    "steps",
    [
        [["--uint8-input"], ["--fp16"]],  # FP16 of a model already converted with --uint8-input
        [["--fp16"], ["--uint8-input"]],
        [["--fp16", "--uint8-input"]],  # one command (FP16 first, then the wrapper)
    ],
    ids=["uint8-then-fp16", "fp16-then-uint8", "both-at-once"],
)
def test_convert_fp16_and_uint8_input_in_every_order(tmp_path, capsys, monkeypatch, steps):
    """Every order of --fp16 and --uint8-input writes an FP16, uint8-input model that ONNX Runtime
    loads and that passes the accuracy gate against the FP32 model (which it runs, so a broken file
    cannot pass)."""
    import onnxruntime as ort

    monkeypatch.chdir(ROOT)
    model = bundled_model_path()
    for i, flags in enumerate(steps):
        out = tmp_path / f"step{i}.onnx"
        rc = main(["convert", *flags, "--model", str(model), "--video", str(VIDEO), "--gate-frames", "4",
                   "-o", str(out)])
        assert rc == 0, capsys.readouterr().err
        model = out
    onnx.checker.check_model(onnx.load(str(model)), full_check=True)
    assert P.model_precision(model) == "fp16"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [416, 416, 3]
