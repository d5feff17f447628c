"""Model preparation on ONNX Runtime (CPU): INT8 Q/DQ + TensorRT rule check, FP16, uint8 input, the gate."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline import precision as P
from pipeline.config import GateConfig
from pipeline.errors import AccuracyGateError, ModelError
from pipeline.model import ModelSpec, bundled_model_path
from pipeline.preprocess import preprocess

VIDEO = Path("sample_videos/vtest.avi")
ROOT = Path(__file__).resolve().parents[1]


def _run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def tiny_detector(spec: ModelSpec | None = None, seed: int = 0) -> onnx.ModelProto:
    """A small conv net shaped like a detector: backbone convs, a head conv, non-conv decoding."""
    rng = np.random.default_rng(seed)
    spec = spec or ModelSpec(input_size=(32, 32))

    def w(*shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32))

    inits = []
    for name, shape in [("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)), ("wh", (6, 8, 1, 1))]:
        t = w(*shape)
        t.name = name
        inits.append(t)
    for name, n in [("b1", 8), ("b2", 8), ("bh", 6)]:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32) * 0.1, name))
    inits.append(numpy_helper.from_array(np.asarray([0, 6, -1], np.int64), "shape"))
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv1"),
        helper.make_node("LeakyRelu", ["c1"], ["a1"], alpha=0.1, name="act1"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("LeakyRelu", ["c2"], ["a2"], alpha=0.1, name="act2"),
        helper.make_node("Conv", ["a2", "wh", "bh"], ["ch"], name="head"),
        helper.make_node("Reshape", ["ch", "shape"], ["r"], name="reshape"),
        helper.make_node("Sigmoid", ["r"], ["output0"], name="sigmoid"),
    ]
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 6, 256])
    m = helper.make_model(
        helper.make_graph(nodes, "tiny", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    P.set_metadata(m, {P.SPEC_KEY: json.dumps(spec.to_dict())})
    onnx.checker.check_model(m)
    return m


def random_frames(n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def tiny_path(tmp_path) -> Path:
    p = tmp_path / "tiny.onnx"
    onnx.save(tiny_detector(), p)
    return p


# --------------------------------------------------------------------------------------------
# Small-model tests (always run)


def test_spread_indices_calibration_and_gate_are_disjoint():
    calib = P.spread_indices(795, 8, P.CALIB_PHASE)
    gate = P.spread_indices(795, 8, P.GATE_PHASE)
    assert len(calib) == len(gate) == 8
    assert not set(calib) & set(gate)
    assert calib == sorted(calib) and calib[-1] > 600  # spread over the whole video
    assert P.spread_indices(3, 10, 0.25) == [0, 1, 2]
    assert P.spread_indices(0, 4, 0.5) == []


def test_find_head_convs_finds_the_last_conv(tiny_path):
    assert P.find_head_convs(P.load_model(tiny_path)) == ["head"]


def test_quantized_model_meets_tensorrt_rules_and_runs(tiny_path, tmp_path):
    spec = ModelSpec(input_size=(32, 32))
    res = P.quantize_int8(tiny_path, random_frames(8), tmp_path / "q.onnx", spec=spec)
    q = onnx.load(res.output)
    assert P.check_tensorrt_qdq(q) == []
    assert P.model_precision(q) == "int8"
    assert res.excluded_nodes == ["head"]
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # the head conv's weight is not quantized (stays a float initializer feeding Conv directly)
    head = next(n for n in q.graph.node if n.op_type == "Conv" and n.name.startswith("head"))
    assert head.input[1] in {i.name for i in q.graph.initializer}
    assert json.loads(P.get_metadata(q)[P.SPEC_KEY])["input_size"] == [32, 32]  # spec survives
    x = np.stack([preprocess(f, spec)[0] for f in random_frames(2, seed=5)])
    ref, out = _run(P.load_model(tiny_path), x), _run(q, x)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 0.1  # sigmoid outputs: INT8 close to FP32


class _Reader:
    def __init__(self, n):
        self.items = [{"images": np.random.default_rng(i).random((1, 3, 32, 32), np.float32)} for i in range(n)]

    def get_next(self):
        return self.items.pop() if self.items else None


def _ort_default_quant(src: Path, dst: Path, activation_type) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class R(_Reader, CalibrationDataReader):
        pass

    quantize_static(str(src), str(dst), R(4), quant_format=QuantFormat.QDQ, activation_type=activation_type)
    return onnx.load(dst)


@pytest.mark.parametrize("act", ["QUInt8", "QInt8"])
def test_check_fails_on_ort_default_asymmetric_quantization(tiny_path, tmp_path, act):
    from onnxruntime.quantization import QuantType

    q = _ort_default_quant(tiny_path, tmp_path / "default.onnx", getattr(QuantType, act))
    violations = P.check_tensorrt_qdq(q)
    assert any("non-zero zero point" in v for v in violations)
    if act == "QUInt8":
        assert any("uint8" in v for v in violations)


def test_check_flags_wrong_axis_and_dangling_q():
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    s = numpy_helper.from_array(np.full(4, 0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.zeros(4, np.int8), "zp")
    s1 = numpy_helper.from_array(np.float32(0.1), "s1")
    zp1 = numpy_helper.from_array(np.int8(0), "zp1")
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["wq"], axis=1, name="qw"),
        helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"], axis=1, name="dqw"),
        helper.make_node("Conv", ["x", "wd"], ["y"], name="conv"),
        helper.make_node("QuantizeLinear", ["y", "s1", "zp1"], ["yq"], name="dangling"),
        helper.make_node("Cast", ["yq"], ["out"], to=TensorProto.FLOAT, name="cast"),
    ]
    g = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 4])],
        [w, s, zp, s1, zp1],
    )
    v = P.check_tensorrt_qdq(helper.make_model(g))
    assert any("per-channel axis 1" in x for x in v)
    assert any("dangling" in x and "instead of a DequantizeLinear" in x for x in v)


def test_fp16_conversion_keeps_float32_io_and_is_close(tiny_path):
    m16 = P.convert_fp16(tiny_path)
    assert P.model_precision(m16) == "fp16"
    assert m16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = np.random.default_rng(0).random((2, 3, 32, 32), np.float32)
    np.testing.assert_allclose(_run(m16, x), _run(P.load_model(tiny_path), x), atol=5e-3)
    assert P.SPEC_KEY in P.get_metadata(m16)


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(input_size=(32, 32)),  # RGB, 1/255
        ModelSpec(input_size=(32, 32), color="RGB", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        ModelSpec(input_size=(32, 32), color="BGR", scale=1.0, mean=(104.0, 117.0, 123.0)),
    ],
)
def test_uint8_input_wrapper_equals_cpu_normalization(spec):
    base = tiny_detector(spec)
    wrapped = P.wrap_uint8_input(base)
    new_spec = ModelSpec.from_dict(json.loads(P.get_metadata(wrapped)[P.SPEC_KEY]), "test")
    assert (new_spec.layout, new_spec.input_dtype, new_spec.color) == ("NHWC", "uint8", "BGR")
    assert wrapped.graph.input[0].name == "images"
    assert wrapped.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    for frame in random_frames(2, seed=3):
        raw, _ = preprocess(frame, new_spec)  # the pipeline hands over the padded frame as is
        assert raw.dtype == np.uint8 and raw.shape == (32, 32, 3)
        ref_in, _ = preprocess(frame, spec)
        np.testing.assert_allclose(_run(wrapped, raw[None]), _run(base, ref_in[None]), atol=1e-4)
    with pytest.raises(ModelError, match="already"):
        P.wrap_uint8_input(wrapped)


def test_fp16_model_cannot_be_quantized(tmp_path, tiny_path):
    p = P.save_model(P.convert_fp16(tiny_path), tmp_path / "f16.onnx")
    with pytest.raises(ModelError, match="FP32"):
        P.quantize_int8(p, random_frames(2), tmp_path / "q.onnx", spec=ModelSpec(input_size=(32, 32)))


# --------------------------------------------------------------------------------------------
# The bundled model on real video (skipped until both exist)

needs_real = pytest.mark.skipif(
    not (bundled_model_path().exists() and (ROOT / VIDEO).exists()), reason="bundled model or sample video missing"
)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    video = ROOT / VIDEO
    calib, idx = P.read_frames(video, 8, P.CALIB_PHASE)
    gate, gidx = P.read_frames(video, 4, P.GATE_PHASE, exclude=idx)
    assert not set(idx) & set(gidx)
    return bundled_model_path(), calib, gate, tmp_path_factory.mktemp("real")


@needs_real
def test_int8_end_to_end_on_onnxruntime(real):
    model, calib, gate, tmp = real
    res = P.quantize_int8(model, calib, tmp / "int8.onnx")
    assert P.check_tensorrt_qdq(onnx.load(res.output)) == []
    report = P.run_gate(model, res.output, gate, GateConfig())
    assert report.reference_boxes > 0
    assert report.passed, report.table()
    assert report.candidate_precision == "int8"


@needs_real
def test_fp16_passes_the_gate(real):
    model, _, gate, tmp = real
    p = P.save_model(P.convert_fp16(model), tmp / "fp16.onnx")
    report = P.run_gate(model, p, gate, GateConfig())
    assert report.passed, report.table()
    assert report.recall > 0.95 and report.mean_iou > 0.95
    assert report.candidate_mb < report.reference_mb * 0.6
    report.raise_if_failed()


@needs_real
def test_uint8_input_bundled_model_matches(real):
    model, _, gate, tmp = real
    p = P.save_model(P.wrap_uint8_input(model), tmp / "u8.onnx")
    report = P.run_gate(model, p, gate, GateConfig())
    assert report.recall == 1.0 and report.precision == 1.0 and report.mean_iou > 0.999


@needs_real
def test_broken_model_is_refused(real):
    model, _, gate, tmp = real
    m = P.load_model(model)
    head = set(P.find_head_convs(m))
    weights = {n.input[1] for n in m.graph.node if n.op_type == "Conv" and n.name not in head}
    rng = np.random.default_rng(0)
    for init in m.graph.initializer:  # perturb every backbone weight by 30% noise
        if init.name in weights:
            a = numpy_helper.to_array(init)
            init.CopyFrom(
                numpy_helper.from_array(a * (1 + 0.3 * rng.standard_normal(a.shape)).astype(a.dtype), init.name)
            )
    p = P.save_model(m, tmp / "broken.onnx")
    report = P.run_gate(model, p, gate, GateConfig())
    assert not report.passed
    with pytest.raises(AccuracyGateError, match="recall|precision|IoU") as exc:
        report.raise_if_failed()
    assert "held-out frames" in str(exc.value)
    assert "FAIL" in report.table()


@needs_real
def test_cli_quantize_and_refused_convert(real, tmp_path, capsys, monkeypatch):
    from pipeline.cli import main

    monkeypatch.chdir(ROOT)
    out = tmp_path / "q.onnx"
    rc = main(["quantize", "--calib", str(VIDEO), "--frames", "4", "--gate-frames", "4", "-o", str(out)])
    assert rc == 0 and out.exists()
    assert "recall" in capsys.readouterr().out
    out16 = tmp_path / "f16.onnx"
    rc = main(
        [
            "convert",
            "--fp16",
            "--video",
            str(VIDEO),
            "--gate-frames",
            "2",
            "-o",
            str(out16),
            "--set",
            "precision.gate.min_mean_iou=1.01",
        ]
    )
    assert rc == 6 and not out16.exists()  # the refused model is not left behind
    assert not list(tmp_path.glob(".*.tmp*"))
    assert "accuracy gate failed" in capsys.readouterr().err
    assert main(["convert", "--no-gate"]) == 2  # nothing to do


def test_read_frames_errors(tmp_path):
    from pipeline.errors import SourceError

    with pytest.raises(SourceError, match="not found"):
        P.read_frames(tmp_path / "none.avi", 4)
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video")
    with pytest.raises(SourceError):
        P.read_frames(bad, 4)


def test_read_frames_from_a_generated_video(tmp_path):
    path = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(20):
        w.write(np.full((48, 64, 3), i * 10, np.uint8))
    w.release()
    frames, idx = P.read_frames(path, 4, P.CALIB_PHASE)
    assert idx == P.spread_indices(20, 4, P.CALIB_PHASE)
    assert [int(f.mean() // 10) for f in frames] == pytest.approx(idx, abs=1)  # the right frames, in order
