"""The small CUDA memory layer the TensorRT backend needs, with two bindings behind one interface.

* ``cuda-python`` (default): NVIDIA's own bindings, installed from wheels, the ones TensorRT's
  samples use. cuda-python >= 12.x exposes ``cuda.bindings.runtime``; the old ``from cuda import
  cudart`` path (gone in cuda-python 13) is tried as a fallback.
* ``pycuda``: for installs that already have it. PyCUDA binds a CUDA context to a thread, so every
  thread that touches memory first calls :meth:`CudaApi.thread_enter` (pushes the context) and
  :meth:`CudaApi.thread_exit` (pops it) when done.

Every call goes through :func:`cuda_call`, which turns a failed status or a binding exception into
:class:`~pipeline.errors.CudaError` naming the call. Memory, streams and events are owned objects
with ``close()`` and context-manager support; ``__del__`` is only a fallback.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from pipeline.errors import BackendUnavailableError, CudaError

# TensorRT's library wheels (tensorrt-cu12-libs, tensorrt-cu13-libs) are published on NVIDIA's package
# index; PyPI has only a small source package that fetches them from there in a nested pip, which
# fails wherever that index cannot be reached the nested way (mirrors, proxies, offline caches).
NVIDIA_INDEX = "https://pypi.nvidia.com"


def pip_gpu_extra(extra: str) -> str:
    """The install line for one GPU extra, with NVIDIA's index (where TensorRT's libraries come from)."""
    return f"pip install --extra-index-url {NVIDIA_INDEX} 'inferpath[{extra}]'"


GPU_HINT = (
    f"{pip_gpu_extra('gpu-cu13')} (NVIDIA driver r580+) or 'inferpath[gpu-cu12]' (driver r535+), on a Turing "
    "or newer GPU; `inferpath doctor` says which fits this machine"
)


def cuda_call(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one CUDA call and check it; raise :class:`CudaError` naming ``name`` on any failure.

    cuda-python calls return ``(status, *values)``: a non-zero status is an error, and the values
    come back unwrapped (None, one value, or a tuple). PyCUDA calls raise on failure; their
    exceptions are re-raised as CudaError with the same message.
    """
    try:
        result = fn(*args)
    except CudaError:
        raise
    except Exception as exc:  # pycuda.driver.Error and friends; the binding's own message is kept
        raise CudaError(f"CUDA call {name} failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(result, tuple) and result and _is_status(result[0]):
        status, values = result[0], result[1:]
        if int(status) != 0:
            raise CudaError(f"CUDA call {name} failed: {_status_name(status)} ({int(status)})")
        if not values:
            return None
        return values[0] if len(values) == 1 else values
    return result


def _is_status(value: Any) -> bool:
    """True for cuda-python status enums (cudaError_t / CUresult)."""
    return type(value).__name__ in ("cudaError_t", "CUresult")


def _status_name(status: Any) -> str:
    name = getattr(status, "name", None)
    return str(name) if name else str(status)


def import_cudart() -> Any:
    """The cuda-python runtime module (``cuda.bindings.runtime``, or old ``cuda.cudart``)."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 (only path in 13.x)

        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[attr-defined]  # cuda-python < 12.6

        return cudart
    except ImportError:
        raise BackendUnavailableError(f"cuda-python is not installed: {GPU_HINT}") from None


_O = TypeVar("_O", bound="_Owned")


class _Owned:
    """A CUDA resource with ``close()``: a context manager, with ``__del__`` only as a fallback."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _O) -> _O:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # fallback only: close() explicitly
        try:
            self.close()
        except Exception:
            pass


class DeviceBuffer(_Owned):
    """``nbytes`` of device memory at ``ptr``; freed by :meth:`close`."""

    def __init__(self, api: CudaApi, ptr: int, nbytes: int) -> None:
        self._api, self.ptr, self.nbytes = api, ptr, nbytes
        self._handle: Any = None  # pycuda keeps its DeviceAllocation here

    def close(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self._api._free(ptr, self._handle)



class PinnedBuffer(_Owned):
    """Page-locked host memory as a flat numpy array (``array``), for async copies."""

    def __init__(self, api: CudaApi, array: np.ndarray, ptr: int, handle: Any = None) -> None:
        self._api, self.array, self.ptr, self._handle = api, array, ptr, handle
        self.nbytes = array.nbytes

    def view(self, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.ndarray:
        """The first ``prod(shape)`` elements as an array of ``dtype`` and ``shape`` (no copy)."""
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dt.itemsize > self.nbytes:
            raise ValueError(f"pinned buffer of {self.nbytes} bytes cannot hold {shape} {dt}")
        return self.array[: count * dt.itemsize].view(dt).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self.array = np.empty(0, np.uint8)
            self._api._free_host(ptr, self._handle)



class Stream(_Owned):
    """A CUDA stream; ``handle`` is the integer TensorRT's ``execute_async_v3`` takes."""

    def __init__(self, api: CudaApi, obj: Any, handle: int) -> None:
        self._api, self.obj, self.handle = api, obj, handle
        self._open = True

    def synchronize(self) -> None:
        self._api._stream_sync(self)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._api._stream_destroy(self)



class Event(_Owned):
    """A CUDA event: a point in a stream's work that the host can wait for."""

    def __init__(self, api: CudaApi, obj: Any) -> None:
        self._api, self.obj = api, obj
        self._open = True

    def record(self, stream: Stream) -> None:
        self._api._event_record(self, stream)

    def synchronize(self) -> None:
        self._api._event_sync(self)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._api._event_destroy(self)



class CudaApi:
    """What the TensorRT backend needs from CUDA; see :class:`CudaPythonApi` and :class:`PyCudaApi`."""

    binding = "none"

    def __init__(self, device: int = 0) -> None:
        self.device = device

    # Public, binding-independent operations -------------------------------------------------
    def thread_enter(self) -> None:
        """Make this thread ready to use the device (set device / push context)."""

    def thread_exit(self) -> None:
        """Undo :meth:`thread_enter` on this thread."""

    def device_name(self) -> str:
        raise NotImplementedError

    def compute_capability(self) -> tuple[int, int]:
        raise NotImplementedError

    def alloc(self, nbytes: int) -> DeviceBuffer:
        raise NotImplementedError

    def alloc_pinned(self, nbytes: int) -> PinnedBuffer:
        raise NotImplementedError

    def stream(self) -> Stream:
        raise NotImplementedError

    def event(self) -> Event:
        raise NotImplementedError

    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
        """Copy the contiguous host array ``src`` (pinned for real overlap) to the start of ``dst``."""
        raise NotImplementedError

    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
        """Copy ``dst.nbytes`` from the start of ``src`` into the contiguous host array ``dst``."""
        raise NotImplementedError

    # Binding hooks used by the owned objects ------------------------------------------------
    def _free(self, ptr: int, handle: Any) -> None:
        raise NotImplementedError

    def _free_host(self, ptr: int, handle: Any) -> None:
        raise NotImplementedError

    def _stream_sync(self, stream: Stream) -> None:
        raise NotImplementedError

    def _stream_destroy(self, stream: Stream) -> None:
        raise NotImplementedError

    def _event_record(self, event: Event, stream: Stream) -> None:
        raise NotImplementedError

    def _event_sync(self, event: Event) -> None:
        raise NotImplementedError

    def _event_destroy(self, event: Event) -> None:
        raise NotImplementedError


def _check_copy(host: np.ndarray, dev: DeviceBuffer) -> None:
    if not host.flags.c_contiguous:
        raise ValueError("host array for a CUDA copy must be C-contiguous")
    if host.nbytes > dev.nbytes:
        raise ValueError(f"copy of {host.nbytes} bytes exceeds device buffer of {dev.nbytes}")


class CudaPythonApi(CudaApi):
    """cuda-python runtime API. ``cudart`` may be injected (tests use a fake)."""

    binding = "cuda-python"

    def __init__(self, device: int = 0, cudart: Any = None) -> None:
        super().__init__(device)
        self.rt = cudart if cudart is not None else import_cudart()
        count = cuda_call("cudaGetDeviceCount", self.rt.cudaGetDeviceCount)
        if device >= count:
            raise CudaError(f"CUDA device {device} requested but {count} device(s) visible")
        cuda_call("cudaSetDevice", self.rt.cudaSetDevice, device)

    def thread_enter(self) -> None:
        # The runtime's current device is per thread; every inference thread sets it once.
        cuda_call("cudaSetDevice", self.rt.cudaSetDevice, self.device)

    def _props(self) -> Any:
        return cuda_call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties, self.device)

    def device_name(self) -> str:
        name = self._props().name
        return name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)

    def compute_capability(self) -> tuple[int, int]:
        p = self._props()
        return int(p.major), int(p.minor)

    def alloc(self, nbytes: int) -> DeviceBuffer:
        ptr = cuda_call("cudaMalloc", self.rt.cudaMalloc, nbytes)
        return DeviceBuffer(self, int(ptr), nbytes)

    def _free(self, ptr: int, handle: Any) -> None:
        cuda_call("cudaFree", self.rt.cudaFree, ptr)

    def alloc_pinned(self, nbytes: int) -> PinnedBuffer:
        ptr = int(cuda_call("cudaMallocHost", self.rt.cudaMallocHost, nbytes))
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
        return PinnedBuffer(self, np.frombuffer(raw, dtype=np.uint8), ptr)

    def _free_host(self, ptr: int, handle: Any) -> None:
        cuda_call("cudaFreeHost", self.rt.cudaFreeHost, ptr)

    def stream(self) -> Stream:
        s = cuda_call("cudaStreamCreate", self.rt.cudaStreamCreate)
        return Stream(self, s, int(s))

    def _stream_sync(self, stream: Stream) -> None:
        cuda_call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize, stream.obj)

    def _stream_destroy(self, stream: Stream) -> None:
        cuda_call("cudaStreamDestroy", self.rt.cudaStreamDestroy, stream.obj)

    def event(self) -> Event:
        return Event(self, cuda_call("cudaEventCreate", self.rt.cudaEventCreate))

    def _event_record(self, event: Event, stream: Stream) -> None:
        cuda_call("cudaEventRecord", self.rt.cudaEventRecord, event.obj, stream.obj)

    def _event_sync(self, event: Event) -> None:
        cuda_call("cudaEventSynchronize", self.rt.cudaEventSynchronize, event.obj)

    def _event_destroy(self, event: Event) -> None:
        cuda_call("cudaEventDestroy", self.rt.cudaEventDestroy, event.obj)

    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
        _check_copy(src, dst)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_call(
            "cudaMemcpyAsync(HtoD)", self.rt.cudaMemcpyAsync, dst.ptr, src.ctypes.data, src.nbytes, kind, stream.obj
        )

    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
        _check_copy(dst, src)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(
            "cudaMemcpyAsync(DtoH)", self.rt.cudaMemcpyAsync, dst.ctypes.data, src.ptr, dst.nbytes, kind, stream.obj
        )


class PyCudaApi(CudaApi):
    """PyCUDA driver API on the device's primary context, pushed/popped per thread."""

    binding = "pycuda"

    def __init__(self, device: int = 0) -> None:
        super().__init__(device)
        try:
            import pycuda.driver as drv
        except ImportError:
            raise BackendUnavailableError(
                "pycuda is not installed: pip install pycuda (or set backend.tensorrt.cuda_binding: cuda-python)"
            ) from None
        self.drv = drv
        cuda_call("cuInit", drv.init)
        count = cuda_call("cuDeviceGetCount", drv.Device.count)
        if device >= count:
            raise CudaError(f"CUDA device {device} requested but {count} device(s) visible")
        self._dev = cuda_call("cuDeviceGet", drv.Device, device)
        self._ctx = cuda_call("cuDevicePrimaryCtxRetain", self._dev.retain_primary_context)
        self._depth = threading.local()

    def thread_enter(self) -> None:
        cuda_call("cuCtxPushCurrent", self._ctx.push)
        self._depth.n = getattr(self._depth, "n", 0) + 1

    def thread_exit(self) -> None:
        if getattr(self._depth, "n", 0) > 0:
            cuda_call("cuCtxPopCurrent", self.drv.Context.pop)
            self._depth.n -= 1

    def device_name(self) -> str:
        return str(cuda_call("cuDeviceGetName", self._dev.name))

    def compute_capability(self) -> tuple[int, int]:
        major, minor = cuda_call("cuDeviceComputeCapability", self._dev.compute_capability)
        return int(major), int(minor)

    def alloc(self, nbytes: int) -> DeviceBuffer:
        alloc = cuda_call("cuMemAlloc", self.drv.mem_alloc, nbytes)
        buf = DeviceBuffer(self, int(alloc), nbytes)
        buf._handle = alloc
        return buf

    def _free(self, ptr: int, handle: Any) -> None:
        cuda_call("cuMemFree", handle.free)

    def alloc_pinned(self, nbytes: int) -> PinnedBuffer:
        arr = cuda_call("cuMemHostAlloc", self.drv.pagelocked_empty, (nbytes,), np.uint8)
        return PinnedBuffer(self, arr, int(arr.ctypes.data), handle=arr.base)

    def _free_host(self, ptr: int, handle: Any) -> None:
        if handle is not None and hasattr(handle, "free"):
            cuda_call("cuMemFreeHost", handle.free)

    def stream(self) -> Stream:
        s = cuda_call("cuStreamCreate", self.drv.Stream)
        return Stream(self, s, int(s.handle))

    def _stream_sync(self, stream: Stream) -> None:
        cuda_call("cuStreamSynchronize", stream.obj.synchronize)

    def _stream_destroy(self, stream: Stream) -> None:
        stream.obj = None  # pycuda destroys the stream when its object is collected

    def event(self) -> Event:
        return Event(self, cuda_call("cuEventCreate", self.drv.Event))

    def _event_record(self, event: Event, stream: Stream) -> None:
        cuda_call("cuEventRecord", event.obj.record, stream.obj)

    def _event_sync(self, event: Event) -> None:
        cuda_call("cuEventSynchronize", event.obj.synchronize)

    def _event_destroy(self, event: Event) -> None:
        event.obj = None

    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
        _check_copy(src, dst)
        cuda_call("cuMemcpyHtoDAsync", self.drv.memcpy_htod_async, dst.ptr, src, stream.obj)

    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
        _check_copy(dst, src)
        cuda_call("cuMemcpyDtoHAsync", self.drv.memcpy_dtoh_async, dst, src.ptr, stream.obj)


def open_cuda(binding: str = "cuda-python", device: int = 0) -> CudaApi:
    """The CUDA layer for ``binding`` ("cuda-python" or "pycuda") on ``device``."""
    if binding == "cuda-python":
        return CudaPythonApi(device)
    if binding == "pycuda":
        return PyCudaApi(device)
    raise BackendUnavailableError(f"unknown CUDA binding {binding!r}; expected cuda-python or pycuda")
