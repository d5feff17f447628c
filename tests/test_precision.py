"""Model preparation on ONNX Runtime (CPU): INT8 per target, TensorRT rules, FP16, uint8 input, frame sets.

The gate's numbers are in test_precision_gate.py, the CLI and bad input in test_precision_cli.py."""

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
from pipeline.config import Config
from pipeline.errors import AccuracyGateError, ModelError, SourceError
from pipeline.model import ModelSpec, bundled_model_path
from pipeline.precision_cli import run_backends
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


needs_real_model = pytest.mark.skipif(not bundled_model_path().exists(), reason="bundled model missing")


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


def _zero_points(q: onnx.ModelProto) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    return [inits[n.input[2]] for n in q.graph.node if n.op_type in P.QDQ_OPS and len(n.input) > 2]


@pytest.fixture(scope="module")
def tiny_forms(tmp_path_factory):
    """The tiny detector calibrated once, quantized to both targets."""
    tmp = tmp_path_factory.mktemp("tiny")
    src = tmp / "tiny.onnx"
    onnx.save(tiny_detector(), src)
    with P.Calibration(src, random_frames(8), ModelSpec(input_size=(32, 32))) as cal:
        forms = {t: cal.quantize(tmp / f"{t}.onnx", t) for t in P.TARGETS}
    return src, forms


def test_tensorrt_form_is_symmetric_and_meets_tensorrt_rules(tiny_forms):
    src, forms = tiny_forms
    res = forms["tensorrt"]
    q = onnx.load(res.output)
    assert P.check_tensorrt_qdq(q) == []
    zps = _zero_points(q)
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # every zero point 0, int8
    assert P.model_precision(q) == "int8" and P.quant_target(q) == "tensorrt"
    assert res.excluded_nodes == ["head"]
    # the head conv's weight is not quantized (stays a float initializer feeding Conv directly)
    head = next(n for n in q.graph.node if n.op_type == "Conv" and n.name.startswith("head"))
    assert head.input[1] in {i.name for i in q.graph.initializer}
    assert json.loads(P.get_metadata(q)[P.SPEC_KEY])["input_size"] == [32, 32]  # spec survives
    P.require_tensorrt_form(res.output)  # an engine build would accept it


def test_onnxruntime_form_stores_int8_weights_and_uint8_activations(tiny_forms):
    src, forms = tiny_forms
    q = onnx.load(forms["onnxruntime"].output)
    assert P.quant_target(q) == "onnxruntime" and P.model_precision(q) == "int8"
    inits = {i.name: i for i in q.graph.initializer}
    convs = [n for n in q.graph.node if n.op_type == "Conv" and not n.name.startswith("head")]
    producers = {o: n for n in q.graph.node for o in n.output}
    for conv in convs:  # weight: an int8 initializer behind a DequantizeLinear (no float copy)
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[0]].data_type == TensorProto.INT8
    zps = _zero_points(q)
    assert any(z.dtype == np.uint8 for z in zps)  # asymmetric uint8 activations (U8S8)
    float_w = sum(numpy_helper.to_array(i).size for i in q.graph.initializer if i.data_type == TensorProto.FLOAT)
    int8_w = sum(numpy_helper.to_array(i).size for i in q.graph.initializer if i.data_type == TensorProto.INT8)
    assert int8_w > float_w  # only the head and the scales stay float
    with pytest.raises(ModelError, match="--target tensorrt"):
        P.require_tensorrt_form(forms["onnxruntime"].output)


@pytest.mark.parametrize("target", P.TARGETS)
def test_both_forms_run_close_to_fp32(tiny_forms, target):
    src, forms = tiny_forms
    spec = ModelSpec(input_size=(32, 32))
    x = np.stack([preprocess(f, spec)[0] for f in random_frames(2, seed=5)])
    ref, out = _run(P.load_model(src), x), _run(onnx.load(forms[target].output), x)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 0.1  # sigmoid outputs: INT8 close to FP32


def test_onnxruntime_backend_says_once_that_tensorrt_form_is_slow_there(tiny_forms, caplog):
    from pipeline.backends import BackendOptions
    from pipeline.backends.onnxruntime import OnnxRuntimeBackend

    _, forms = tiny_forms
    with caplog.at_level("WARNING", logger="pipeline.backends.onnxruntime"):
        OnnxRuntimeBackend(str(forms["onnxruntime"].output), BackendOptions()).close()
        assert not caplog.records
        OnnxRuntimeBackend(str(forms["tensorrt"].output), BackendOptions()).close()
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "no faster than FP32" in msg and "--target onnxruntime" in msg and "\n" not in msg


def test_unknown_target_is_refused(tiny_path, tmp_path):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="onnxruntime, tensorrt.*'tpu'"):
        P.quantize_int8(tiny_path, random_frames(2), tmp_path / "q.onnx", target="tpu")


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
    # TensorRT takes a UINT8 input only when it feeds a Cast (or Identity) directly
    users = [n for n in wrapped.graph.node if "images" in n.input]
    assert [n.op_type for n in users] == ["Cast"]
    for frame in random_frames(2, seed=3):
        raw, _ = preprocess(frame, new_spec)  # the pipeline hands over the padded frame as is
        assert raw.dtype == np.uint8 and raw.shape == (32, 32, 3)
        ref_in, _ = preprocess(frame, spec)
        np.testing.assert_allclose(_run(wrapped, raw[None]), _run(base, ref_in[None]), atol=1e-4)
    with pytest.raises(ModelError, match="already"):
        P.wrap_uint8_input(wrapped)


def _fp16_then_uint8(m):
    return P.wrap_uint8_input(P.convert_fp16(m))


def _uint8_then_fp16(m):
    return P.convert_fp16(P.wrap_uint8_input(m))


@pytest.mark.parametrize("prepare", [_fp16_then_uint8, _uint8_then_fp16], ids=["fp16-then-uint8", "uint8-then-fp16"])
def test_fp16_and_uint8_input_in_either_order_is_a_valid_model(prepare):
    """FP16 of a uint8-input model used to keep the wrapper's Cast(to=FLOAT) while turning what it
    feeds to float16: ONNX Runtime refused the file and onnx.checker's full check failed."""
    spec = ModelSpec(input_size=(32, 32))
    base = tiny_detector(spec)
    m = prepare(base)
    onnx.checker.check_model(m, full_check=True)
    assert P.model_precision(m) == "fp16"
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert [n.op_type for n in m.graph.node if "images" in n.input] == ["Cast"]  # TensorRT's UINT8 rule
    new_spec = ModelSpec.from_dict(json.loads(P.get_metadata(m)[P.SPEC_KEY]), "test")
    for frame in random_frames(2, seed=5):
        raw, _ = preprocess(frame, new_spec)
        ref_in, _ = preprocess(frame, spec)
        np.testing.assert_allclose(_run(m, raw[None]), _run(base, ref_in[None]), atol=5e-3)


@needs_real_model
@pytest.mark.parametrize("prepare", [_fp16_then_uint8, _uint8_then_fp16], ids=["fp16-then-uint8", "uint8-then-fp16"])
def test_fp16_of_the_bundled_uint8_model_runs_on_onnxruntime(prepare):
    m = prepare(bundled_model_path())
    onnx.checker.check_model(m, full_check=True)
    raw = np.random.default_rng(0).integers(0, 256, (1, 416, 416, 3), dtype=np.uint8)
    spec = ModelSpec.from_dict(json.loads(P.get_metadata(m)[P.SPEC_KEY]), "test")
    ref = _run(P.wrap_uint8_input(bundled_model_path()), raw)
    out = _run(m, raw)
    assert spec.input_dtype == "uint8" and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=0.5)  # pixel-unit boxes and scores; FP16 rounding only


def test_fp16_model_cannot_be_quantized(tmp_path, tiny_path):
    p = P.save_model(P.convert_fp16(tiny_path), tmp_path / "f16.onnx")
    with pytest.raises(ModelError, match="already fp16"):
        P.quantize_int8(p, random_frames(2), tmp_path / "q.onnx", spec=ModelSpec(input_size=(32, 32)))


def test_quantized_or_uint8_input_model_cannot_be_quantized(tmp_path, tiny_forms):
    _, forms = tiny_forms
    spec = ModelSpec(input_size=(32, 32))
    with pytest.raises(ModelError, match="already int8"):
        P.quantize_int8(forms["onnxruntime"].output, random_frames(2), tmp_path / "q.onnx", spec=spec)
    u8 = P.save_model(P.wrap_uint8_input(tiny_detector()), tmp_path / "u8.onnx")
    with pytest.raises(ModelError, match="uint8 input"):
        P.quantize_int8(u8, random_frames(2), tmp_path / "q.onnx")


# --------------------------------------------------------------------------------------------
# The bundled model on real video (skipped until both exist)

needs_real = pytest.mark.skipif(
    not (bundled_model_path().exists() and (ROOT / VIDEO).exists()), reason="bundled model or sample video missing"
)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The bundled model, calibrated on 16 frames of vtest; 16 held-out frames for the gate."""
    video = ROOT / VIDEO
    calib_idx, gate_idx = P.split_video(video, 16, 16)
    assert not set(calib_idx) & set(gate_idx)
    calib, _ = P.read_frames_at(video, calib_idx)
    gate, _ = P.read_frames_at(video, gate_idx)
    return bundled_model_path(), calib, gate, tmp_path_factory.mktemp("real")


@pytest.fixture(scope="module")
def real_gate(real):
    model, _, gate, _ = real
    return P.Gate(Config(), model, gate, backends=run_backends())


@needs_real
def test_int8_onnxruntime_form_passes_the_gate(real, real_gate):
    model, calib, _, tmp = real
    res = P.quantize_int8(model, calib, tmp / "int8.onnx")
    report = real_gate.judge(res.output)
    assert report.reference_boxes > 50
    assert report.passed, report.table()
    assert report.candidate_precision == "int8" and report.candidate_mb < 5.0  # int8 weights: ~4 MB


@needs_real
def test_fp16_passes_the_gate(real, real_gate):
    model, _, _, tmp = real
    p = P.save_model(P.convert_fp16(model), tmp / "fp16.onnx")
    report = real_gate.judge(p)
    assert report.passed, report.table()
    assert report.found > 0.95 and report.mean_iou > 0.95
    assert report.candidate_mb < report.reference_mb * 0.6
    report.raise_if_failed()


@needs_real
def test_uint8_input_bundled_model_gives_the_same_detections(real, real_gate):
    model, _, gate, tmp = real
    wrapped = P.wrap_uint8_input(model)
    users = [n for n in wrapped.graph.node if wrapped.graph.input[0].name in n.input]
    assert [n.op_type for n in users] == ["Cast"]
    p = P.save_model(wrapped, tmp / "u8.onnx")
    report = real_gate.judge(p)
    assert report.map50 == pytest.approx(1.0) and report.found == 1.0 and report.kept == 1.0
    assert report.mean_iou > 0.999 and report.candidate_boxes == report.reference_boxes


@needs_real
def test_broken_model_is_refused(real, real_gate):
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
    report = real_gate.judge(p)
    assert not report.passed
    with pytest.raises(AccuracyGateError, match="pseudo-mAP|found|IoU") as exc:
        report.raise_if_failed()
    assert "held-out frames" in str(exc.value)
    assert "FAIL" in report.table()


def test_read_frames_errors(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        P.read_frames(tmp_path / "none.avi", 4)
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video")
    with pytest.raises(SourceError):
        P.read_frames(bad, 4)


def write_video(path: Path, n: int, step: int = 10) -> Path:
    """An MJPG clip of ``n`` flat frames whose brightness is ``i * step`` (which frame is which)."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(n):
        w.write(np.full((48, 64, 3), i * step, np.uint8))
    w.release()
    return path


def test_read_frames_from_a_generated_video(tmp_path):
    path = write_video(tmp_path / "v.avi", 20)
    frames, idx = P.read_frames(path, 4, P.CALIB_PHASE)
    assert idx == P.spread_indices(20, 4, P.CALIB_PHASE)
    assert [int(f.mean() // 10) for f in frames] == pytest.approx(idx, abs=1)  # the right frames, in order


def test_split_video_holds_frames_out_and_refuses_a_too_short_clip(tmp_path):
    path = write_video(tmp_path / "v.avi", 40, step=5)
    calib, gate = P.split_video(path, 128, 64)
    assert len(calib) == 20 and len(gate) == 20  # calibration takes at most half; the gate all the rest
    assert not set(calib) & set(gate) and sorted(set(calib) | set(gate)) == list(range(40))
    calib, gate = P.split_video(path, 8, 8)
    assert not set(calib) & set(gate) and len(gate) == 8
    assert gate[0] < 8 and gate[-1] > 30  # spread over the whole clip
    short = write_video(tmp_path / "short.avi", 5)
    with pytest.raises(SourceError, match="too short.*5 frame"):
        P.split_video(short, 128, 64)


def test_entropy_calibration_is_really_applied(tiny_path):
    """ORT's quantize_static builds its entropy calibrator with 128 bins: exactly the minmax ranges.
    The calibrated ranges show in the quantized model's scales, which must differ."""
    frames = random_frames(8)
    scales = {}
    for method in ("minmax", "entropy"):
        with P.Calibration(tiny_path, frames, ModelSpec(input_size=(32, 32)), method) as cal:
            result = cal.quantize(cal.dir / "q.onnx")
            model = onnx.load(str(result.output))
            scales[method] = {t.name: numpy_helper.to_array(t).tolist() for t in model.graph.initializer
                              if t.name.endswith("_scale")}
    assert scales["minmax"] and scales["minmax"].keys() == scales["entropy"].keys()
    assert any(scales["minmax"][k] != scales["entropy"][k] for k in scales["minmax"])


def test_frame_count_is_what_decodes_not_what_the_header_claims():
    tree = ROOT / "sample_videos/tree.avi"  # truncated upstream: the header says 444 frames, 68 decode
    if not tree.exists():
        pytest.skip("sample video missing")
    assert P.count_frames(tree) == 68
    calib, gate = P.split_video(tree, 128, 64)
    assert len(calib) == 34 and len(gate) == 34 and max(calib + gate) == 67
