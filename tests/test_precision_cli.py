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
