"""TensorRT backend: buffer plan, precision rules, CUDA layer (with a fake cudart) on CPU; engines on GPU."""

from __future__ import annotations

import ctypes
import enum
import importlib.util
import shutil
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
    assert info.shape == ("batch", 3, 416, 416) and info.dynamic_batch
    assert info.fixed_shape(2) == (2, 3, 416, 416)


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

    with pytest.raises(BackendUnavailableError, match=r"inferpath\[gpu\]"):
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

    def cudaEventElapsedTime(self, a, b):
        return self._ok("cudaEventElapsedTime", 1.5)

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
            assert b.elapsed_ms(a) == 1.5
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
# GPU: real engines (scripts/gpu_check.sh runs these with `pytest -m gpu`)


def _gpu_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt not installed (pip install 'inferpath[gpu]')"
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA driver (nvidia-smi not found)"
    try:
        ok = subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return None if ok else "nvidia-smi lists no usable GPU"


GPU_REASON = _gpu_reason()
gpu = pytest.mark.skipif(GPU_REASON is not None, reason=GPU_REASON or "")


@pytest.fixture(scope="module")
def gpu_setup(tmp_path_factory):
    import cv2

    from pipeline.model import bundled_model_path

    model = bundled_model_path()
    if not model.exists():
        pytest.skip("bundled model not built")
    cap = cv2.VideoCapture("sample_videos/vtest.avi")
    ok, frame = cap.read()
    cap.release()
    if not ok:
        pytest.skip("sample_videos/vtest.avi missing")
    return model, frame, tmp_path_factory.mktemp("engines")


def _backend(model, cache, precision="auto", max_batch=4):
    from pipeline.backends.base import BackendOptions
    from pipeline.backends.tensorrt import TensorRTBackend
    from pipeline.config import TensorRTConfig

    cfg = TensorRTConfig(precision=precision, cache_dir=str(cache))
    return TensorRTBackend(str(model), BackendOptions(max_batch=max_batch, extra={"tensorrt": cfg}))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-2), ("fp16", 0.1)])
def test_engine_matches_onnxruntime(gpu_setup, precision, tol):
    from pipeline.config import Config
    from pipeline.precision import Detector
    from pipeline.preprocess import preprocess

    model, frame, cache = gpu_setup
    with Detector(Config(), model) as ref:  # the onnxruntime backend, as the pipeline runs it
        x, _ = preprocess(frame, ref.spec)
        batch = np.stack([x, x])
        expected = ref.backend.infer(batch)[0]
    be = _backend(model, cache, precision)
    try:
        assert be.max_batch == 4 and be.inputs[0].dynamic_batch
        out = be.infer(batch)[0]
        assert out.shape == expected.shape
        # compare where it matters: the class scores (rows 4:) and boxes of confident candidates
        assert np.abs(out[:, 4:] - expected[:, 4:]).max() < tol
    finally:
        be.close()
    be2 = _backend(model, cache, precision)  # second construction loads from cache
    try:
        assert be2.engine_path == be.engine_path
    finally:
        be2.close()


@pytest.mark.gpu
@gpu
def test_int8_engine_and_thread_local_contexts(gpu_setup, tmp_path):
    from pipeline.model import load_spec
    from pipeline.precision import quantize_int8, read_frames
    from pipeline.preprocess import preprocess

    model, frame, cache = gpu_setup
    frames, _ = read_frames("sample_videos/vtest.avi", 8)
    out = quantize_int8(model, frames, tmp_path / "int8.onnx", target="tensorrt")
    be = _backend(out.output, cache)
    try:
        assert be.plan.precision == "int8"
        x, _ = preprocess(frame, load_spec(out.output))
        results, errors = {}, []

        def worker(i):
            try:
                results[i] = be.infer(np.stack([x] * (i + 1)))[0]
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
            assert not t.is_alive()
        assert not errors
        assert len(be._states) == 3  # one context + stream per thread
        np.testing.assert_allclose(results[0][0], results[2][0], atol=1e-3)
    finally:
        be.close()


def _cuda_reason() -> str | None:
    if importlib.util.find_spec("cuda") is None:
        return "cuda-python not installed (pip install 'inferpath[gpu]')"
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA driver (nvidia-smi not found)"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_reason() is not None, reason=_cuda_reason() or "")
def test_cuda_module_round_trip_on_the_gpu():
    """The CUDA memory module on a real device, without TensorRT: pinned and device buffers,
    async copies on a stream in both directions, and event timing."""
    from pipeline.backends.cuda import open_cuda

    api = open_cuda("cuda-python", 0)
    api.thread_enter()
    try:
        assert api.device_name() and api.compute_capability()[0] >= 5
        data = np.random.default_rng(0).standard_normal((4, 3, 416, 416)).astype(np.float32)
        with api.stream() as stream, api.event() as start, api.event() as end:
            dev = api.alloc(data.nbytes)
            host_in = api.alloc_pinned(data.nbytes)
            host_out = api.alloc_pinned(data.nbytes)
            src = host_in.view(np.float32, data.shape)
            np.copyto(src, data)
            dst = host_out.view(np.float32, data.shape)
            dst[...] = 0
            start.record(stream)
            api.copy_htod_async(dev, src, stream)
            api.copy_dtoh_async(dst, dev, stream)
            end.record(stream)
            stream.synchronize()
            np.testing.assert_array_equal(dst, data)
            assert end.elapsed_ms(start) > 0
            for buf in (dev, host_in, host_out):
                buf.close()
    finally:
        api.thread_exit()
