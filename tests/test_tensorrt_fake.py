"""TensorRT backend without a GPU: buffer plan, precision rules, the CUDA layer and the backend's
run loop (on a fake cudart and a fake engine), warm-up in the inference thread, and the GPU check's
own guards. Everything here runs on the CPU; real engines on a GPU are in tests/test_tensorrt_gpu.py."""

from __future__ import annotations

import ctypes
import enum
import importlib.util
import subprocess
import threading
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline.backends import cuda as cudamod
from pipeline.backends.tensorrt import (
    IOTensor,
    _input_profiles,
    io_to_tensor_info,
    plan_buffers,
    resolve_precision,
)
from pipeline.errors import BackendUnavailableError, ConfigError, CudaError, ModelError

# --------------------------------------------------------------------------------------------
# Buffer plan

IO = [
    IOTensor("images", True, np.dtype(np.float32), (-1, 3, 416, 416)),
    IOTensor("output0", False, np.dtype(np.float32), (-1, 84, 3549)),
    IOTensor("aux", False, np.dtype(np.float16), (-1, 10)),
    IOTensor("count", False, np.dtype(np.int32), (1,)),
]


@pytest.mark.parametrize("batch", [1, 4, 8])
def test_plan_buffers_sizes_and_dtypes(batch):
    plan = {b.name: b for b in plan_buffers(IO, batch)}
    assert plan["images"].shape == (batch, 3, 416, 416)
    assert plan["images"].nbytes == batch * 3 * 416 * 416 * 4
    assert plan["images"].is_input and not plan["output0"].is_input
    assert plan["output0"].nbytes == batch * 84 * 3549 * 4
    assert plan["aux"].dtype == np.float16 and plan["aux"].nbytes == batch * 10 * 2
    assert plan["count"].shape == (1,) and plan["count"].nbytes == 4  # fixed shapes stay fixed


def test_plan_buffers_uint8_input_is_a_quarter_of_float():
    u8 = [IOTensor("images", True, np.dtype(np.uint8), (-1, 416, 416, 3))]
    f32 = [IOTensor("images", True, np.dtype(np.float32), (-1, 3, 416, 416))]
    assert plan_buffers(u8, 2)[0].nbytes * 4 == plan_buffers(f32, 2)[0].nbytes


def test_plan_buffers_rejects_dynamic_non_batch_dims_and_bad_batch():
    with pytest.raises(ModelError, match="dynamic dimension 2"):
        plan_buffers([IOTensor("x", True, np.dtype(np.float32), (-1, 3, -1, 416))], 1)
    with pytest.raises(ValueError):
        plan_buffers(IO, 0)


def test_io_to_tensor_info():
    info = io_to_tensor_info(IO[0])
    assert info.shape == ("batch", 3, 416, 416)  # the dynamic batch axis has a name, not a size
    assert plan_buffers(IO[:1], 2)[0].shape == (2, 3, 416, 416)  # the shape the backend runs for 2 items


# --------------------------------------------------------------------------------------------
# Precision rules


@pytest.mark.parametrize(
    "requested,onnx_prec,expected",
    [
        ("auto", "fp32", "fp32"),
        ("auto", "fp16", "fp16"),
        ("auto", "int8", "int8"),
        ("fp16", "fp32", "fp16"),
        ("fp16", "fp16", "fp16"),
        ("int8", "int8", "int8"),
        ("fp32", "fp32", "fp32"),
    ],
)
def test_resolve_precision(requested, onnx_prec, expected):
    assert resolve_precision(requested, onnx_prec) == expected


@pytest.mark.parametrize(
    "requested,onnx_prec,match",
    [
        ("int8", "fp32", "inferpath quantize"),
        ("int8", "fp16", "Q/DQ"),
        ("fp32", "int8", "fp32 requested"),
        ("fp16", "int8", "int8"),
    ],
)
def test_resolve_precision_refusals(requested, onnx_prec, match):
    with pytest.raises(ConfigError, match=match):
        resolve_precision(requested, onnx_prec)


def _tiny(batch: int | str = "batch") -> onnx.ModelProto:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 3, 8, 8])
    g = helper.make_graph([helper.make_node("Relu", ["images"], ["out"])], "t", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_input_profiles(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(_tiny(), p)
    shapes, usable = _input_profiles(p, 8, 4)
    assert shapes == (("images", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)),)
    assert usable == 8
    shapes, _ = _input_profiles(p, 8, None)  # opt defaults to max
    assert shapes[0][2][0] == 8
    onnx.save(_tiny(1), p)
    assert _input_profiles(p, 8, None) == ((), 1)  # fixed batch: no profile, max batch 1


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_backend_without_tensorrt_says_how_to_install():
    from pipeline.backends.base import BackendOptions, create_backend

    with pytest.raises(BackendUnavailableError, match=r"inferpath\[gpu-cu13\]"):
        create_backend("tensorrt", "model.onnx", BackendOptions())


# --------------------------------------------------------------------------------------------
# CUDA layer with a fake cuda-python runtime


class cudaError_t(enum.IntEnum):  # noqa: N801 - mirrors cuda-python's type name, which cuda_call checks
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidValue = 1


class FakeHandle:
    """Like cuda-python's cudaStream_t / cudaEvent_t: an opaque object that converts to int."""

    def __int__(self) -> int:
        return id(self)


class FakeCudart:
    """Enough of ``cuda.bindings.runtime`` to exercise CudaPythonApi: host memory stands in for device."""

    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, fail: str | None = None) -> None:
        self.fail, self.live, self.calls = fail, {}, []
        self.streams, self.events = set(), set()

    def _ok(self, name, *values):
        self.calls.append(name)
        if name == self.fail:
            return (cudaError_t.cudaErrorMemoryAllocation, *([None] * len(values)))
        return (cudaError_t.cudaSuccess, *values)

    def cudaGetDeviceCount(self):
        return self._ok("cudaGetDeviceCount", 1)

    def cudaSetDevice(self, d):
        return self._ok("cudaSetDevice")

    def cudaGetDeviceProperties(self, d):
        return self._ok("cudaGetDeviceProperties", SimpleNamespace(name=b"Fake GPU\0\0", major=9, minor=0))

    def _alloc(self, name, n):
        if name == self.fail:  # a failed allocation allocates nothing
            return self._ok(name, None)
        buf = ctypes.create_string_buffer(n)
        ptr = ctypes.addressof(buf)
        self.live[ptr] = buf
        return self._ok(name, ptr)

    def cudaMalloc(self, n):
        return self._alloc("cudaMalloc", n)

    def cudaMallocHost(self, n):
        return self._alloc("cudaMallocHost", n)

    def cudaFree(self, p):
        self.live.pop(p)
        return self._ok("cudaFree")

    def cudaFreeHost(self, p):
        self.live.pop(p)
        return self._ok("cudaFreeHost")

    def cudaStreamCreate(self):
        if self.fail == "cudaStreamCreate":
            return self._ok("cudaStreamCreate", None)
        s = FakeHandle()
        self.streams.add(id(s))
        return self._ok("cudaStreamCreate", s)

    def cudaStreamDestroy(self, s):
        self.streams.discard(id(s))
        return self._ok("cudaStreamDestroy")

    def cudaStreamSynchronize(self, s):
        return self._ok("cudaStreamSynchronize")

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        ctypes.memmove(dst, src, n)
        return self._ok("cudaMemcpyAsync")

    def cudaEventCreate(self):
        e = FakeHandle()
        self.events.add(id(e))
        return self._ok("cudaEventCreate", e)

    def cudaEventRecord(self, e, s):
        return self._ok("cudaEventRecord")

    def cudaEventSynchronize(self, e):
        return self._ok("cudaEventSynchronize")

    def cudaEventDestroy(self, e):
        self.events.discard(id(e))
        return self._ok("cudaEventDestroy")


def test_cuda_call_unwraps_and_raises_with_the_call_name():
    assert cudamod.cuda_call("x", lambda: (cudaError_t.cudaSuccess,)) is None
    assert cudamod.cuda_call("x", lambda: (cudaError_t.cudaSuccess, 7)) == 7
    assert cudamod.cuda_call("x", lambda: (cudaError_t.cudaSuccess, 7, 8)) == (7, 8)
    with pytest.raises(CudaError, match=r"cudaMalloc failed: cudaErrorMemoryAllocation \(2\)"):
        cudamod.cuda_call("cudaMalloc", lambda: (cudaError_t.cudaErrorMemoryAllocation, None))

    def pycuda_style():
        raise RuntimeError("cuMemAlloc failed: out of memory")

    with pytest.raises(CudaError, match="cuMemAlloc.*out of memory"):
        cudamod.cuda_call("cuMemAlloc", pycuda_style)


def test_round_trip_through_fake_device_and_cleanup():
    rt = FakeCudart()
    api = cudamod.CudaPythonApi(0, cudart=rt)
    assert api.device_name() == "Fake GPU"
    assert api.compute_capability() == (9, 0)
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    with api.alloc(data.nbytes) as dev, api.alloc_pinned(data.nbytes) as pin, api.stream() as s:
        host_in = pin.view(np.float32, (3, 4))
        np.copyto(host_in, data)
        api.copy_htod_async(dev, host_in, s)
        out = np.zeros_like(data)
        api.copy_dtoh_async(out, dev, s)
        s.synchronize()
        np.testing.assert_array_equal(out, data)
        with api.event() as a, api.event() as b:
            a.record(s)
            b.record(s)
            b.synchronize()
            assert rt.calls[-3:] == ["cudaEventRecord", "cudaEventRecord", "cudaEventSynchronize"]
        with pytest.raises(ValueError):
            pin.view(np.float32, (4, 4))  # larger than the buffer
        with pytest.raises(ValueError):
            api.copy_htod_async(dev, np.zeros(100, np.float32), s)
    assert rt.live == {} and rt.streams == set() and rt.events == set()


def test_close_is_idempotent():
    rt = FakeCudart()
    api = cudamod.CudaPythonApi(0, cudart=rt)
    buf = api.alloc(16)
    buf.close()
    buf.close()
    assert rt.calls.count("cudaFree") == 1


def test_failed_allocation_raises_cuda_error():
    api = cudamod.CudaPythonApi(0, cudart=FakeCudart(fail="cudaMalloc"))
    with pytest.raises(CudaError, match="cudaMalloc"):
        api.alloc(1 << 40)


def test_unknown_binding_and_missing_cuda_python():
    with pytest.raises(BackendUnavailableError, match="unknown CUDA binding"):
        cudamod.open_cuda("opencl")
    if importlib.util.find_spec("cuda") is None:
        with pytest.raises(BackendUnavailableError, match="cuda-python"):
            cudamod.import_cudart()




# --------------------------------------------------------------------------------------------
# The TensorRT backend's run path, on a fake TensorRT engine over the fake CUDA runtime. The fake
# engine reads its input from "device" memory and writes, per item, the item's sum and its first
# value, so every row that comes back can be traced to the row that went in.


class FakeDataType(enum.Enum):
    FLOAT = "float32"
    UINT8 = "uint8"
    BF16 = "bfloat16"
    FP8 = "fp8"


def _fake_nptype(dt):
    if dt in (FakeDataType.BF16, FakeDataType.FP8):  # as tensorrt.nptype does for types numpy lacks
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return np.dtype(dt.value).type


def _device_array(ptr: int, dtype, shape) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_uint8 * n).from_address(ptr)
    return np.frombuffer(raw, np.uint8).view(dtype).reshape(shape)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.addresses, self.input_shape = engine, {}, None
        self.seen: list[np.ndarray] = []  # the input rows the engine ran on, per call
        self.thread = threading.current_thread().name

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def set_input_shape(self, name, shape):
        ok = shape[0] <= self.engine.profile_max
        if ok:
            self.input_shape = tuple(shape)
        return ok

    def _in_shape(self):
        shape = self.engine.shapes[self.engine.input]
        return shape if shape[0] >= 0 else self.input_shape

    def get_tensor_shape(self, name):
        return (self._in_shape()[0], 2) if name == "out" else self._in_shape()

    def execute_async_v3(self, handle):
        if not self.engine.execute_ok:
            return False
        shape = self._in_shape()
        x = _device_array(self.addresses[self.engine.input], self.engine.np_in, shape).astype(np.float64)
        self.seen.append(x.copy())
        y = _device_array(self.addresses["out"], np.float32, (shape[0], 2))
        y[:, 0] = x.reshape(shape[0], -1).sum(1)
        y[:, 1] = x.reshape(shape[0], -1)[:, 0]
        return True


class FakeEngine:
    def __init__(self, in_shape, in_dtype=FakeDataType.FLOAT, out_dtype=FakeDataType.FLOAT, profile_max=8):
        self.input = "images"
        self.shapes = {"images": in_shape, "out": (in_shape[0], 2)}
        self.dtypes = {"images": in_dtype, "out": out_dtype}
        self.np_in = np.dtype(in_dtype.value) if in_dtype in (FakeDataType.FLOAT, FakeDataType.UINT8) else None
        self.profile_max, self.execute_ok, self.contexts = profile_max, True, []
        self.num_io_tensors = 2

    def get_tensor_name(self, i):
        return ("images", "out")[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "images" else "OUTPUT"

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_shape(self, name):
        return self.shapes[name]

    def create_execution_context(self):
        ctx = FakeContext(self)
        self.contexts.append(ctx)
        return ctx


def _fake_trt(engine):
    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return engine

    return SimpleNamespace(
        __version__="10.16.0",
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Runtime=Runtime,
        TensorIOMode=SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        nptype=_fake_nptype,
    )


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """make(engine, rt=None, max_batch=8) -> (backend, cudart) with TensorRT and CUDA faked."""
    from pipeline.backends import tensorrt as trtmod
    from pipeline.backends.base import BackendOptions
    from pipeline.config import TensorRTConfig

    made = []

    def make(engine, rt=None, max_batch=8):
        rt = rt or FakeCudart()
        monkeypatch.setattr(trtmod, "import_tensorrt", lambda: _fake_trt(engine))
        monkeypatch.setattr(trtmod, "open_cuda", lambda binding, device: cudamod.CudaPythonApi(device, cudart=rt))
        entry = SimpleNamespace(engine_path=tmp_path / "m.engine", manifest_path=tmp_path / "m.json")
        plan = trtmod.EnginePlan(tmp_path / "m.onnx", "fp32", entry, max_batch)
        monkeypatch.setattr(trtmod, "prepare_engine", lambda *a: (plan, b"engine", False))
        be = trtmod.TensorRTBackend("m.onnx", BackendOptions(max_batch=max_batch, extra={"tensorrt": TensorRTConfig()}))
        made.append(be)
        return be, rt

    yield make
    for be in made:
        be.close()


def _items(n, start=0):
    return np.stack([np.full((3, 2, 2), start + i + 1, np.float32) for i in range(n)])


def test_static_batch_plan_keeps_n():
    io = [IOTensor("images", True, np.dtype(np.float32), (4, 3, 2, 2)), IOTensor("out", False, np.dtype(np.float32), (4, 2))]
    for batch in (1, 3, 4):
        assert [b.shape for b in plan_buffers(io, batch)] == [(4, 3, 2, 2), (4, 2)]


@pytest.mark.parametrize("n", [1, 3, 4])
def test_static_batch_runs_n_and_returns_only_the_given_rows(fake_trt, n):
    engine = FakeEngine((4, 3, 2, 2))
    be, _ = fake_trt(engine)
    assert be.max_batch == 4 and be.inputs[0].shape == (4, 3, 2, 2)  # a static batch axis
    be.infer(_items(4, start=100))  # a full batch first: its rows must not leak into the next call
    out = be.infer(_items(n))[0]
    assert out.shape == (n, 2)
    np.testing.assert_array_equal(out[:, 1], np.arange(1, n + 1))  # row i came from item i
    np.testing.assert_array_equal(out[:, 0], 12 * np.arange(1, n + 1))
    seen = engine.contexts[0].seen[-1]
    assert seen.shape == (4, 3, 2, 2)  # the engine ran its static N
    assert not seen[n:].any()  # the padding rows are zeros
    with pytest.raises(ValueError, match="outside 1..4"):
        be.infer(_items(5))


def test_dynamic_batch_sets_the_shape_and_checks_the_answer(fake_trt):
    engine = FakeEngine((-1, 3, 2, 2), profile_max=2)
    be, _ = fake_trt(engine, max_batch=4)
    out = be.infer(_items(2))[0]
    assert engine.contexts[0].input_shape == (2, 3, 2, 2) and out.shape == (2, 2)
    with pytest.raises(ModelError, match=r"rejected input shape \(3, 3, 2, 2\)"):
        be.infer(_items(3))  # beyond the (fake) optimization profile
    with pytest.raises(ValueError, match="items of shape"):
        be.infer(np.zeros((1, 3, 4, 4), np.float32))


def test_failed_execute_raises_and_still_synchronizes(fake_trt):
    engine = FakeEngine((-1, 3, 2, 2))
    be, rt = fake_trt(engine)
    be.infer(_items(1))
    engine.execute_ok = False
    rt.calls.clear()
    with pytest.raises(ModelError, match="execute_async_v3 failed"):
        be.infer(_items(1))
    assert rt.calls[-1] == "cudaStreamSynchronize"  # the HtoD copy is finished before the buffers are reused


def test_infer_after_close_is_a_clear_error_and_frees_everything(fake_trt):
    be, rt = fake_trt(FakeEngine((-1, 3, 2, 2)))
    worker = threading.Thread(target=be.infer, args=(_items(2),))
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    be.infer(_items(1))
    assert len(be._states) == 2 and rt.live and rt.streams  # one context, stream, buffer set per thread
    be.close()
    assert rt.live == {} and rt.streams == set()
    with pytest.raises(BackendUnavailableError, match="closed"):
        be.infer(_items(1))
    be.close()  # idempotent


@pytest.mark.parametrize("fail", ["cudaStreamCreate", "cudaMalloc", "cudaMallocHost"])
def test_failed_allocation_frees_what_was_allocated(fake_trt, fail, monkeypatch):
    monkeypatch.setattr(cudamod._Owned, "__del__", lambda self: None)  # freed explicitly, not by the GC fallback
    rt = FakeCudart()
    be, _ = fake_trt(FakeEngine((-1, 3, 2, 2)), rt=rt)
    rt.fail = fail
    with pytest.raises(CudaError, match=fail):
        be.infer(_items(1))
    assert rt.live == {} and rt.streams == set()
    rt.fail = None
    assert be.infer(_items(1))[0].shape == (1, 2)  # the next call builds a complete state


@pytest.mark.parametrize("where", ["in", "out"])
@pytest.mark.parametrize("dtype", [FakeDataType.BF16, FakeDataType.FP8])
def test_bf16_and_fp8_io_is_a_model_error(fake_trt, where, dtype):
    kw = {"in_dtype": dtype} if where == "in" else {"out_dtype": dtype}
    with pytest.raises(ModelError, match=f"tensor '{'images' if where == 'in' else 'out'}' is .*{dtype.name}"):
        fake_trt(FakeEngine((-1, 3, 2, 2), **kw))


def test_uint8_input_refuses_float_frames(fake_trt):
    engine = FakeEngine((-1, 2, 2, 3), in_dtype=FakeDataType.UINT8)
    be, _ = fake_trt(engine)
    frames = np.full((1, 2, 2, 3), 200, np.uint8)
    assert be.infer(frames)[0][0, 0] == 200 * 12
    with pytest.raises(ModelError, match="takes uint8 but got float32"):
        be.infer(frames.astype(np.float32) / 255)  # would be silently zeroed by a cast


def test_import_tensorrt_keeps_the_real_error(monkeypatch, tmp_path):
    import sys

    from pipeline.backends.tensorrt import import_tensorrt

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.py").write_text(
        'raise ImportError("libnvinfer.so.10: cannot open shared object file: No such file or directory")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendUnavailableError, match=r"cannot be imported \(ImportError: libnvinfer\.so\.10"):
        import_tensorrt()


# --------------------------------------------------------------------------------------------
# Warm-up runs in the inference thread, so a backend's per-thread GPU state (TensorRT's context,
# stream, buffers) is built once, where it is used. The real model on ONNX Runtime, recorded.


class RecordingBackend:
    """Wraps a real backend; records (thread name, batch size, all zeros) per call."""

    def __init__(self, inner, fail: bool = False) -> None:
        self.inner, self.fail, self.calls, self.closed = inner, fail, [], False
        self.name, self.inputs, self.outputs = inner.name, inner.inputs, inner.outputs

    @property
    def max_batch(self):
        return self.inner.max_batch

    def infer(self, batch):
        self.calls.append((threading.current_thread().name, len(batch), not batch.any()))
        if self.fail:
            raise CudaError("CUDA call cudaMalloc failed: cudaErrorMemoryAllocation (2)")
        return self.inner.infer(batch)

    def close(self):
        self.closed = True
        self.inner.close()


def _recorded_pipeline(tmp_path, fail=False, live=False):
    from pipeline.config import build_config
    from pipeline.runtime import Pipeline
    from tests.conftest import VTEST

    cfg = build_config({
        "sources": [{"uri": str(VTEST), "id": "cam", "max_frames": 6, "realtime": live}],
        # one inference thread, as a TensorRT backend always gets (workers only applies to ONNX Runtime)
        "backend": {"max_batch": 2, "batch_timeout_ms": 5, "onnxruntime": {"workers": 1}},
        "output": {"dir": str(tmp_path), "video": False}, "pipeline": {"progress": False},
    })
    pipe = Pipeline(cfg)
    recorder = RecordingBackend(pipe.backend, fail=fail)
    pipe.backend = recorder
    return pipe, recorder


@pytest.mark.parametrize("live, warm_sizes", [(True, [1, 1, 2]), (False, [1])])
def test_warm_up_runs_in_the_inference_thread(tmp_path, no_thread_leak, live, warm_sizes):
    """A live run warms each batch size it uses (and times a second call at batch 1); a batch job,
    where no frame can be late, makes one call, which only shows the model runs."""
    pipe, rec = _recorded_pipeline(tmp_path, live=live)
    summary = pipe.run()
    assert summary.sources[0].frames_out == 6
    assert {name for name, _, _ in rec.calls} == {"inferpath-inference"}  # no call from the main thread
    warm = [(n, zero) for _, n, zero in rec.calls if zero]
    assert rec.calls[: len(warm)] == [("inferpath-inference", n, True) for n, _ in warm]  # warm-up first
    assert [n for n, _ in warm] == warm_sizes
    assert not any(zero for _, _, zero in rec.calls[len(warm):])  # then the real frames


def test_warm_up_failure_is_raised_before_anything_else_starts(tmp_path, no_thread_leak):
    from pipeline.stages import InferenceStage

    pipe, rec = _recorded_pipeline(tmp_path, fail=True)
    with pytest.raises(CudaError, match="cudaMalloc"):
        pipe.run()
    assert rec.calls == [("inferpath-inference", 1, True)] and rec.closed
    assert [st.ident is not None for st in pipe.stages] == [isinstance(st, InferenceStage) for st in pipe.stages]


# --------------------------------------------------------------------------------------------
# A GPU check that tested nothing must fail


no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")


@no_tensorrt
def test_gpu_check_fails_loudly_without_tensorrt(tmp_path):
    import os
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(INSTALL="0", PYTHON=sys.executable, OUT=str(tmp_path), VENV=str(tmp_path / "no-venv"))
    proc = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "FATAL: TensorRT cannot be imported" in proc.stderr
    assert "No module named 'tensorrt'" in proc.stderr  # the real import error
    summary = (tmp_path / "summary.md").read_text()
    assert "FAILED" in summary and "tensorrt-import" in summary
    assert not (tmp_path / "pytest-gpu.log").exists()  # it stopped before the suite


@no_tensorrt
def test_require_gpu_turns_gpu_skips_into_failures():
    import sys

    from tests.conftest import REPO

    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_tensorrt_gpu.py"]
    skipped = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0 and "skipped" in skipped.stdout
    required = subprocess.run([*args, "--require-gpu"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert required.returncode == 1, required.stdout
    assert "GPU test skipped under --require-gpu" in required.stdout and "skipped" not in required.stdout.splitlines()[-1]
