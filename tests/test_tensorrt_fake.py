"""TensorRT backend without a GPU: buffer plan, precision rules, the CUDA layer and the backend's
run loop (on a fake cudart and a fake engine), warm-up in the inference thread, and the GPU check's
own guards. Everything here runs on the CPU; real engines on a GPU are in tests/test_tensorrt_gpu.py."""

from __future__ import annotations

import ctypes
import enum
import importlib.util
import json
import subprocess
import threading
from pathlib import Path
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
        return True  # as TensorRT's binding does (False: the address was refused)

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


def test_failed_start_never_closes_the_backend_under_a_running_call(tmp_path, monkeypatch, no_thread_leak):
    """A start that fails (here: Ctrl-C) while the inference thread is still inside a warm-up call
    (a TensorRT build or a first call can take minutes) must not free the backend's GPU buffers
    under that call: the backend is closed once the call returns."""
    from pipeline.runtime import local as pipemod  # the local engine starts the run

    pipe, rec = _recorded_pipeline(tmp_path)
    entered, release = threading.Event(), threading.Event()
    record = rec.infer

    def slow(batch):
        entered.set()
        release.wait(10)
        return record(batch)

    def interrupted(inference, meanwhile=None):
        inference.start()
        assert entered.wait(10)
        raise KeyboardInterrupt

    rec.infer = slow
    monkeypatch.setattr(pipemod, "start_warm_inference", interrupted)
    monkeypatch.setattr(pipemod, "STAGE_JOIN_S", 0.2)
    with pytest.raises(KeyboardInterrupt):
        pipe.run()
    assert not rec.closed  # the call is still running
    closers = [t for t in threading.enumerate() if t.name == "inferpath-close-backend"]
    release.set()
    for t in [*closers, *(st for st in pipe.stages if st.ident is not None)]:
        t.join(10)
        assert not t.is_alive()
    assert len(closers) == 1 and rec.closed  # closed once the call returned


# --------------------------------------------------------------------------------------------
# A GPU check that tested nothing must fail


no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")


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


# --------------------------------------------------------------------------------------------
# Building: build_engine_bytes and prepare_engine on a fake TensorRT builder. The fake parser
# checks what TensorRT needs of the ONNX (valid in full, runnable: ONNX Runtime loads it, a UINT8
# input feeds a Cast only) and the "engine" is a JSON record of what the builder was asked.


class FakeBuilderTRT:
    """The build half of the ``tensorrt`` module, as ``__version__`` has it (FP16 flag on 10.x only)."""

    def __init__(self, version: str = "11.4.0", build_ok: bool = True, rejects: bytes = b"") -> None:
        self.__version__, self.build_ok, self.rejects = version, build_ok, rejects
        self.builds: list[dict] = []
        self.deserialized: list[bytes] = []
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=0)
        self.BuilderFlag = SimpleNamespace(FP16="FP16") if version.startswith("10.") else SimpleNamespace()
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})
        self.TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.nptype = _fake_nptype
        fake = self

        class Parser:
            def __init__(self, network, logger):
                self.network, self.errors = network, []

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, i):
                return self.errors[i]

            def parse_from_file(self, path):
                self.errors = fake.parse_problems(path)
                self.network.path = path
                return not self.errors

        class Config:
            def __init__(self):
                self.flags, self.profiles, self.workspace, self.cache = [], [], None, None

            def set_memory_pool_limit(self, pool, size):
                self.workspace = (pool, size)

            def set_flag(self, flag):
                self.flags.append(flag)

            def add_optimization_profile(self, profile):
                self.profiles.append(profile.shapes)

            def create_timing_cache(self, blob):
                return SimpleNamespace(serialize=lambda: b"timing:" + blob)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return SimpleNamespace(flags=flags, path=None)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                profile = SimpleNamespace(shapes=[])
                profile.set_shape = lambda name, lo, opt, hi: profile.shapes.append((name, lo, opt, hi))
                return profile

            def build_serialized_network(self, network, config):
                if not fake.build_ok:
                    return None
                from pipeline import precision as prec

                record = {"strongly_typed": bool(network.flags & 1), "flags": config.flags,
                          "profiles": [[n, list(a), list(b), list(c)] for n, a, b, c in
                                       (s for p in config.profiles for s in p)],
                          "onnx": network.path, "onnx_precision": prec.model_precision(network.path),
                          "workspace_mb": config.workspace[1] >> 20, "n": len(fake.builds)}
                fake.builds.append(record)
                return json.dumps(record).encode()

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, blob):
                fake.deserialized.append(bytes(blob))
                if fake.rejects and bytes(blob) == fake.rejects:
                    return None
                return FakeEngine((-1, 3, 8, 8))

        self.OnnxParser, self.Builder, self.Runtime = Parser, Builder, Runtime

    @staticmethod
    def parse_problems(path: str) -> list[str]:
        import onnxruntime as ort

        model = onnx.load(path)
        try:
            onnx.checker.check_model(model, full_check=True)
            ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:
            return [f"invalid ONNX: {str(exc).splitlines()[0]}"]
        problems = []
        for inp in model.graph.input:
            if inp.type.tensor_type.elem_type == TensorProto.UINT8:
                users = [n.op_type for n in model.graph.node if inp.name in n.input]
                if users != ["Cast"]:
                    problems.append(f"UINT8 input {inp.name} feeds {users}, not a Cast")
        return problems


def _gpu(cc=(8, 9), name="Fake L4"):
    return SimpleNamespace(compute_capability=lambda: cc, device_name=lambda: name)


def _trt_cfg(tmp_path, **kw):
    from pipeline.config import TensorRTConfig

    return TensorRTConfig(cache_dir=str(tmp_path / "engines"), **kw)


def _save(model, path):
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    "version,precision,onnx_prec,strongly_typed,fp16_flag",
    [
        ("10.16.0", "fp32", "fp32", False, False),  # TensorRT 10: weak typing for an FP32 ONNX
        ("10.16.0", "fp16", "fp32", False, True),  # ... and its FP16 flag for FP16 of it
        ("10.16.0", "fp16", "fp16", True, False),  # a typed ONNX is built strongly typed
        ("10.16.0", "int8", "int8", True, False),
        ("11.4.0", "fp32", "fp32", True, False),  # TensorRT 11: always strongly typed, no flags
        ("11.4.0", "fp16", "fp16", True, False),
        ("11.4.0", "int8", "int8", True, False),
    ],
)
def test_build_flags_per_tensorrt_major(tmp_path, version, precision, onnx_prec, strongly_typed, fp16_flag):
    from pipeline.backends.tensorrt import build_engine_bytes

    trt = FakeBuilderTRT(version)
    path = _save(_tiny(), tmp_path / "m.onnx")
    profiles = (("images", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)),)
    timing = tmp_path / "timing.cache"
    blob = build_engine_bytes(trt, path, precision, onnx_prec, profiles, _trt_cfg(tmp_path, workspace_mb=64), timing)
    record = json.loads(blob)
    assert record["strongly_typed"] is strongly_typed
    assert record["flags"] == (["FP16"] if fp16_flag else [])
    assert record["profiles"] == [["images", [1, 3, 8, 8], [2, 3, 8, 8], [4, 3, 8, 8]]]
    assert record["workspace_mb"] == 64 and timing.read_bytes() == b"timing:"  # the timing cache is kept


def test_build_refuses_fp16_of_fp32_on_tensorrt_11_and_reports_parser_and_build_failures(tmp_path):
    from pipeline.backends.tensorrt import build_engine_bytes

    path = _save(_tiny(), tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="must be converted first"):
        build_engine_bytes(FakeBuilderTRT("11.4.0"), path, "fp16", "fp32", (), _trt_cfg(tmp_path), None)
    with pytest.raises(ModelError, match="failed to build an engine"):
        build_engine_bytes(FakeBuilderTRT(build_ok=False), path, "fp32", "fp32", (), _trt_cfg(tmp_path), None)
    bad = tmp_path / "bad.onnx"
    m = _tiny()
    m.graph.node[0].output[0] = "nowhere"  # the graph output is produced by nothing
    onnx.save(m, bad)
    with pytest.raises(ModelError, match="TensorRT cannot parse the ONNX: invalid ONNX"):
        build_engine_bytes(FakeBuilderTRT(), bad, "fp32", "fp32", (), _trt_cfg(tmp_path), None)


@pytest.fixture
def fake_builder(monkeypatch):
    """install(version, **kw) -> the FakeBuilderTRT that ``import_tensorrt`` now returns."""
    from pipeline.backends import tensorrt as trtmod

    def install(version="11.4.0", **kw):
        trt = FakeBuilderTRT(version, **kw)
        monkeypatch.setattr(trtmod, "import_tensorrt", lambda: trt)
        return trt

    return install


def test_prepare_engine_converts_fp16_on_tensorrt_11_once_keyed_by_the_converter(tmp_path, fake_builder,
                                                                                 monkeypatch):
    from pipeline import onnx_tools
    from pipeline.backends.tensorrt import prepare_engine

    trt = fake_builder("11.4.0")
    conversions = []
    real_convert = onnx_tools.convert_fp16
    monkeypatch.setattr(onnx_tools, "convert_fp16", lambda m: conversions.append(m) or real_convert(m))
    src = _save(_tiny(), tmp_path / "m.onnx")
    cfg = _trt_cfg(tmp_path, precision="fp16")
    plan, blob, built = prepare_engine(src, 4, cfg, _gpu())
    record = json.loads(blob)
    assert built and plan.precision == "fp16" and len(conversions) == 1
    assert plan.onnx_path.parent == Path(cfg.cache_dir) and plan.onnx_path.name.endswith(".fp16.onnx")
    assert record["onnx"] == str(plan.onnx_path) and record["onnx_precision"] == "fp16"
    assert record["strongly_typed"] and record["flags"] == []
    plan2, blob2, built2 = prepare_engine(src, 4, cfg, _gpu())
    assert not built2 and blob2 == blob and len(conversions) == 1 and len(trt.builds) == 1  # all from cache
    monkeypatch.setattr(onnx_tools, "fp16_converter_version", lambda: "onnxconverter-common 9.9; inferpath fp16 rev 9")
    plan3, _, built3 = prepare_engine(src, 4, cfg, _gpu())
    assert len(conversions) == 2 and plan3.onnx_path != plan.onnx_path  # a new converter converts again


def _uint8_forms():
    """The tiny detector as a uint8-input model in each form --fp16 and --uint8-input make."""
    from pipeline import precision as prec
    from tests.test_precision import tiny_detector

    base = tiny_detector()
    return {
        "uint8": prec.wrap_uint8_input(base),
        "fp16-then-uint8": prec.wrap_uint8_input(prec.convert_fp16(base)),
        "uint8-then-fp16": prec.convert_fp16(prec.wrap_uint8_input(base)),
    }


@pytest.mark.parametrize("version", ["10.16.0", "11.4.0"])
@pytest.mark.parametrize("form", ["uint8", "fp16-then-uint8", "uint8-then-fp16"])
def test_prepare_engine_builds_fp16_of_every_uint8_form(tmp_path, fake_builder, version, form):
    """FP16 with a uint8 input, however it was made: the ONNX TensorRT parses is valid and runnable,
    its UINT8 input feeds a Cast only, and the build is what each TensorRT major needs."""
    from pipeline.backends.tensorrt import prepare_engine

    trt = fake_builder(version)
    src = _save(_uint8_forms()[form], tmp_path / f"{form}.onnx")
    plan, blob, built = prepare_engine(src, 4, _trt_cfg(tmp_path, precision="fp16"), _gpu())
    record = json.loads(blob)
    assert built and plan.precision == "fp16" and trt.builds == [record]
    if form == "uint8" and version.startswith("10."):  # FP32 ONNX, TensorRT 10: the FP16 flag, no conversion
        assert record["onnx"] == str(src) and record["flags"] == ["FP16"] and not record["strongly_typed"]
    else:
        assert record["onnx_precision"] == "fp16" and record["strongly_typed"] and record["flags"] == []
        assert (record["onnx"] != str(src)) == (form == "uint8")  # only the FP32 form was converted
    assert record["profiles"][0][1] == [1, 32, 32, 3]  # NHWC uint8 frames


def test_prepare_engine_keys_the_cache_on_the_opt_batch(tmp_path, fake_builder):
    from pipeline.backends.tensorrt import prepare_engine

    trt = fake_builder()
    src = _save(_tiny(), tmp_path / "m.onnx")
    live, _, built_live = prepare_engine(src, 8, _trt_cfg(tmp_path), _gpu(), opt_batch=1)
    files, _, built_files = prepare_engine(src, 8, _trt_cfg(tmp_path), _gpu(), opt_batch=8)
    assert built_live and built_files and live.entry.engine_path != files.entry.engine_path
    assert [b["profiles"][0][2][0] for b in trt.builds] == [1, 8]  # opt batch 1 for live, max for files
    again, _, built = prepare_engine(src, 8, _trt_cfg(tmp_path), _gpu(), opt_batch=1)
    assert not built and again.entry.engine_path == live.entry.engine_path
    pinned, _, built = prepare_engine(src, 8, _trt_cfg(tmp_path, opt_batch=4), _gpu(), opt_batch=1)
    assert built and trt.builds[-1]["profiles"][0][2][0] == 4  # backend.tensorrt.opt_batch wins


def test_prepare_engine_refuses_a_gpu_tensorrt_does_not_run_on(tmp_path, fake_builder):
    from pipeline.backends.tensorrt import prepare_engine

    src = _save(_tiny(), tmp_path / "m.onnx")
    trt = fake_builder("11.4.0")
    with pytest.raises(BackendUnavailableError) as err:
        prepare_engine(src, 4, _trt_cfg(tmp_path), _gpu((7, 0), "Tesla V100"))
    assert str(err.value).count("\n") == 0 and "Tesla V100 is compute capability 7.0" in str(err.value)
    assert "TensorRT 11.4.0 needs 7.5" in str(err.value) and trt.builds == []
    fake_builder("10.3.0")  # 10.0-10.4 still ran on Volta
    assert prepare_engine(src, 4, _trt_cfg(tmp_path), _gpu((7, 0), "Tesla V100"))[2]


def test_stale_engine_that_fails_to_deserialize_is_rebuilt_once(tmp_path, fake_builder, monkeypatch, caplog):
    """A cached engine whose manifest matches but which this TensorRT rejects (e.g. written by another
    build of the same version) is rebuilt, once, and the rebuilt engine is the one loaded."""
    from pipeline.backends import tensorrt as trtmod
    from pipeline.backends.base import BackendOptions
    from pipeline.backends.engine_cache import EngineCache

    src = _save(_tiny(), tmp_path / "m.onnx")
    cfg = _trt_cfg(tmp_path)
    trt = fake_builder("11.4.0", rejects=b"stale engine")
    rt = FakeCudart()
    monkeypatch.setattr(trtmod, "open_cuda", lambda binding, device: cudamod.CudaPythonApi(device, cudart=rt))
    cuda = cudamod.CudaPythonApi(0, cudart=rt)
    plan, _, _ = trtmod.prepare_engine(src, 4, cfg, cuda, 4)
    EngineCache(cfg.cache_dir).store(plan.entry, b"stale engine")  # a valid manifest for bytes TensorRT rejects
    with caplog.at_level("WARNING", logger="pipeline.backends.tensorrt"):
        be = trtmod.TensorRTBackend(str(src), BackendOptions(max_batch=4, extra={"tensorrt": cfg, "opt_batch": 4}))
    try:
        assert trt.deserialized[0] == b"stale engine" and len(trt.deserialized) == 2
        assert len(trt.builds) == 2 and plan.entry.engine_path.read_bytes() == trt.deserialized[1]
        assert "cannot deserialize the cached engine" in caplog.text and be.built
        assert be.infer(_items(1)[:, :, :1, :1].repeat(8, 2).repeat(8, 3))[0].shape == (1, 2)
    finally:
        be.close()


def test_backend_passes_the_stream_policy_opt_batch(monkeypatch, tmp_path):
    from pipeline.backends import tensorrt as trtmod
    from pipeline.backends.base import BackendOptions
    from pipeline.config import TensorRTConfig
    from pipeline.policy import profile_opt_batch

    assert (profile_opt_batch(True, 8), profile_opt_batch(False, 8)) == (1, 8)
    seen = []
    engine = FakeEngine((-1, 3, 2, 2))
    monkeypatch.setattr(trtmod, "import_tensorrt", lambda: _fake_trt(engine))
    monkeypatch.setattr(trtmod, "open_cuda", lambda binding, device: cudamod.CudaPythonApi(device, cudart=FakeCudart()))
    entry = SimpleNamespace(engine_path=tmp_path / "m.engine", manifest_path=tmp_path / "m.json")
    plan = trtmod.EnginePlan(tmp_path / "m.onnx", "fp32", entry, 8)
    monkeypatch.setattr(trtmod, "prepare_engine", lambda *a: seen.append(a) or (plan, b"engine", False))
    be = trtmod.TensorRTBackend("m.onnx", BackendOptions(max_batch=8, extra={"tensorrt": TensorRTConfig(),
                                                                           "opt_batch": 1}))
    be.close()
    assert seen[0][1] == 8 and seen[0][4] == 1


def test_refused_tensor_address_is_an_error_and_frees_everything(fake_trt, monkeypatch):
    monkeypatch.setattr(cudamod._Owned, "__del__", lambda self: None)
    monkeypatch.setattr(FakeContext, "set_tensor_address", lambda self, name, ptr: False)
    be, rt = fake_trt(FakeEngine((-1, 3, 2, 2)))
    with pytest.raises(ModelError, match="refused the device address of tensor 'images'"):
        be.infer(_items(1))
    assert rt.live == {} and rt.streams == set()


@pytest.mark.parametrize("uri,opt", [("sample_videos/vtest.avi", 8), ("rtsp://127.0.0.1:8554/cam", 1)])
def test_build_engine_builds_the_engine_run_would_load(tmp_path, fake_builder, monkeypatch, uri, opt):
    """`inferpath build-engine` tunes the profile as `inferpath run` of the same config will: opt
    batch 1 when a source is live, the max batch for files, so run finds the prebuilt engine."""
    from pipeline.backends import tensorrt as trtmod
    from pipeline.config import build_config
    from tests.conftest import REPO

    trt = fake_builder()
    monkeypatch.setattr(trtmod, "open_cuda", lambda binding, device: cudamod.CudaPythonApi(device, cudart=FakeCudart()))
    monkeypatch.chdir(REPO)
    cfg = build_config({"sources": [{"uri": uri}],
                        "backend": {"name": "tensorrt", "max_batch": 8, "tensorrt": {"cache_dir": str(tmp_path)}}})
    path, built, precision = trtmod.build_engine_for_config(cfg, _save(_tiny(), tmp_path / "m.onnx"))
    assert built and precision == "fp32" and path.exists()
    assert trt.builds[0]["profiles"][0][2][0] == opt
