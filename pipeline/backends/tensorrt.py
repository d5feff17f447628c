"""TensorRT backend: build (or load from cache) an engine from the prepared ONNX, run batches.

Precision is a property of the ONNX (see :mod:`pipeline.precision`): an INT8 model carries Q/DQ
nodes, an FP16 model carries float16 tensors, and both are built as *strongly typed* networks,
the only mode TensorRT 11 has (its FP16/INT8 builder flags and calibrators are gone). TensorRT 10
still has the weak-typing ``BuilderFlag.FP16``; it is used only when FP16 is requested for an FP32
ONNX on TensorRT 10. On TensorRT 11 that request converts the ONNX to FP16 first.

Engines are cached by :class:`~pipeline.backends.engine_cache.EngineCache`. At run time each
inference thread gets its own execution context, CUDA stream and buffers (thread-local), as
TensorRT requires: an execution context must not be used from two threads at once. I/O tensors
are discovered from the engine, and their sizes come from :func:`plan_buffers`, a pure function
tested on CPU.

``tensorrt`` and the CUDA bindings are imported inside functions, so this module imports without
them; a missing one raises :class:`~pipeline.errors.BackendUnavailableError` with a hint.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import onnx_tools
from pipeline.backends.base import BackendOptions, TensorInfo, register_backend
from pipeline.backends.cuda import GPU_HINT, CudaApi, DeviceBuffer, PinnedBuffer, Stream, open_cuda
from pipeline.backends.engine_cache import CacheEntry, EngineCache, EngineKey
from pipeline.backends.tensorrt_rules import require_tensorrt_form
from pipeline.config import TensorRTConfig
from pipeline.errors import BackendUnavailableError, ConfigError, ModelError
from pipeline.fileio import atomic_write_bytes, sha256_file
from pipeline.policy import profile_opt_batch

log = logging.getLogger(__name__)


def import_tensorrt() -> Any:
    """``import tensorrt`` or a one-line install hint."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        # Keep the real cause: a missing libnvinfer or a wheel for the wrong CUDA major would read
        # the same as "not installed" otherwise.
        missing = isinstance(exc, ImportError) and getattr(exc, "name", None) == "tensorrt"
        why = "is not installed" if missing else "cannot be imported"
        raise BackendUnavailableError(f"TensorRT {why} ({type(exc).__name__}: {exc}): {GPU_HINT}") from None
    return trt


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def min_compute_capability(trt_version: str | None) -> tuple[int, int]:
    """The oldest GPU a TensorRT version runs on, as a compute capability.

    TensorRT 10.5 removed Volta (7.0) and TensorRT 11 needs Turing (7.5) or later; 10.0-10.4 still
    ran on Volta. ``None`` (TensorRT not installed yet): what the GPU extras install today, 11.x.
    """
    if trt_version is None:
        return (7, 5)
    parts = [int(x) for x in re.findall(r"\d+", str(trt_version))[:2]] + [0, 0]
    return (7, 0) if tuple(parts[:2]) < (10, 5) else (7, 5)


def gpu_support_problem(trt_version: str | None, gpu_name: str, capability: tuple[int, int]) -> str | None:
    """One line saying why TensorRT ``trt_version`` cannot run on this GPU, or None when it can."""
    need = min_compute_capability(trt_version)
    if tuple(capability) >= need:
        return None
    which = f"TensorRT {trt_version}" if trt_version else "TensorRT 11 (what the GPU extras install)"
    return (
        f"{gpu_name} is compute capability {capability[0]}.{capability[1]}; {which} needs {need[0]}.{need[1]} "
        "(Turing) or newer: use a newer GPU, or backend.name: onnxruntime"
    )


# --------------------------------------------------------------------------------------------
# Buffer plan (pure; unit-tested without a GPU)


@dataclass(frozen=True)
class IOTensor:
    """One engine I/O tensor as the engine describes it (-1 marks a dynamic dimension)."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class BufferSpec:
    """One planned buffer: the tensor, its concrete shape at a batch size, and its byte size."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def plan_buffers(io: Sequence[IOTensor], batch: int) -> list[BufferSpec]:
    """Concrete shapes and sizes for every I/O tensor at ``batch`` items.

    Only the leading (batch) dimension may be dynamic: a detector's outputs are sized by its input
    resolution, which is fixed in the engine. Another dynamic dimension is a ModelError, because no
    buffer size could be planned for it ahead of time.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    plan = []
    for t in io:
        dims = []
        for i, d in enumerate(t.shape):
            if d >= 0:
                dims.append(int(d))
            elif i == 0:
                dims.append(batch)
            else:
                raise ModelError(
                    f"TensorRT engine tensor {t.name!r} has a dynamic dimension {i} (shape {t.shape}); "
                    "only the batch dimension may be dynamic"
                )
        plan.append(BufferSpec(t.name, t.is_input, np.dtype(t.dtype), tuple(dims)))
    return plan


def io_to_tensor_info(t: IOTensor) -> TensorInfo:
    shape = tuple("batch" if (d < 0 and i == 0) else (None if d < 0 else int(d)) for i, d in enumerate(t.shape))
    return TensorInfo(t.name, shape, np.dtype(t.dtype))


# --------------------------------------------------------------------------------------------
# Engine building


def _trt_config(options: BackendOptions) -> Any:
    cfg = options.extra.get("tensorrt") if options.extra else None
    if cfg is None:
        return TensorRTConfig()
    if not isinstance(cfg, TensorRTConfig):
        raise ConfigError(f"backend.tensorrt: expected TensorRTConfig, got {type(cfg).__name__}")
    return cfg


def resolve_precision(requested: str, onnx_precision: str) -> str:
    """The precision the engine is built for, given the config and what the ONNX carries.

    ``auto`` follows the ONNX. INT8 needs a Q/DQ ONNX (``inferpath quantize``): TensorRT 11 has no
    calibrator, and calibrating implicitly would hide the accuracy gate. Asking for FP32 of an
    FP16/INT8 ONNX cannot be honoured by a strongly typed build and is refused too.
    """
    if requested == "auto" or requested == onnx_precision:
        return onnx_precision
    if requested == "int8":
        raise ConfigError(
            "backend.tensorrt.precision: int8 needs a Q/DQ model; run `inferpath quantize --calib VIDEO` "
            "and point model.path at its output"
        )
    if requested == "fp32":
        raise ConfigError(
            f"backend.tensorrt.precision: fp32 requested but the model is {onnx_precision}; "
            "use the FP32 ONNX or precision: auto"
        )
    if requested == "fp16" and onnx_precision == "int8":
        raise ConfigError("backend.tensorrt.precision: fp16 requested but the model is int8 (Q/DQ)")
    return requested  # fp16 of an fp32 ONNX


def _input_profiles(onnx_path: Path, max_batch: int, opt_batch: int | None) -> tuple[tuple, int]:
    """(name, min, opt, max) for each ONNX input, and the usable max batch (1 for a fixed batch)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    shapes = []
    usable = max_batch
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        fixed = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        if any(d < 0 for d in fixed[1:]):
            raise ModelError(f"{onnx_path}: input {inp.name!r} has a dynamic non-batch dimension {fixed}")
        if fixed and fixed[0] > 0:
            usable = min(usable, fixed[0])
            continue  # static batch: no profile needed
        rest = tuple(fixed[1:])
        opt = max(1, min(opt_batch or max_batch, max_batch))
        shapes.append((inp.name, (1, *rest), (opt, *rest), (max_batch, *rest)))
    return tuple(shapes), usable


def _trt_logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def build_engine_bytes(
    trt: Any,
    onnx_path: Path,
    precision: str,
    onnx_precision: str,
    profiles: tuple,
    cfg: Any,
    timing_cache_path: Path | None,
) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine (no caching here)."""
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    major = trt_major(trt)
    flags = 0
    strongly_typed = major >= 11 or onnx_precision in ("int8", "fp16")
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        # Required on 10.x for a typed ONNX; accepted and ignored on 11.x (always strongly typed).
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"{onnx_path}: TensorRT cannot parse the ONNX: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_mb) << 20)
    if precision == "fp16" and onnx_precision == "fp32":
        if major >= 11 or not hasattr(trt.BuilderFlag, "FP16"):
            raise ConfigError("internal: fp16 of an fp32 ONNX on TensorRT 11 must be converted first")
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10 weak typing
    if profiles:
        profile = builder.create_optimization_profile()
        for name, lo, opt, hi in profiles:
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache_obj = None
    if timing_cache_path is not None:
        blob = timing_cache_path.read_bytes() if timing_cache_path.exists() else b""
        cache_obj = config.create_timing_cache(blob)
        config.set_timing_cache(cache_obj, ignore_mismatch=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    if cache_obj is not None and timing_cache_path is not None:
        atomic_write_bytes(timing_cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def _fp16_key(onnx_path: Path, converter: str) -> str:
    """The name key of a cached FP16 conversion: the source ONNX's hash and the converter version."""
    import hashlib

    return hashlib.sha256(f"{sha256_file(onnx_path)}\n{converter}".encode()).hexdigest()[:16]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")[:40] or "gpu"


@dataclass(frozen=True)
class EnginePlan:
    """What :func:`prepare_engine` decided and where the engine lives."""

    onnx_path: Path  # the ONNX actually built (may be an FP16 conversion in the cache dir)
    precision: str
    entry: CacheEntry
    max_batch: int


def prepare_engine(
    model_path: str | Path, max_batch: int, cfg: Any, cuda: CudaApi, opt_batch: int | None = None
) -> tuple[EnginePlan, bytes, bool]:
    """Resolve precision, convert if TensorRT 11 needs it, then load or build the cached engine.

    ``opt_batch``: the batch the optimization profile is tuned for, from the stream policy (1 for a
    live run, whose calls are mostly single frames; the max batch for files); ``cfg.opt_batch``
    overrides it. It is part of the engine's key. Returns (plan, engine bytes, built) where
    ``built`` says whether a build happened.
    """
    trt = import_tensorrt()
    onnx_path = Path(model_path)
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: model file not found")
    major, minor = cuda.compute_capability()
    gpu = cuda.device_name()
    problem = gpu_support_problem(str(trt.__version__), gpu, (major, minor))
    if problem:
        raise BackendUnavailableError(problem)
    onnx_precision = onnx_tools.model_precision(onnx_path)
    if onnx_precision == "int8":
        require_tensorrt_form(onnx_path)  # ONNX Runtime's CPU form cannot be built: say how to make ours
    precision = resolve_precision(cfg.precision, onnx_precision)
    cache = EngineCache(cfg.cache_dir)
    if precision == "fp16" and onnx_precision == "fp32" and trt_major(trt) >= 11:
        # TensorRT 11: no FP16 flag; precision must be in the ONNX. Convert once, cached by the source's
        # content hash and the converter's version (a fixed converter never reuses an older file).
        converted = cache.dir / f"{onnx_path.stem}-{_fp16_key(onnx_path, onnx_tools.fp16_converter_version())}.fp16.onnx"
        if not converted.exists():
            onnx_tools.save_model(onnx_tools.convert_fp16(onnx_path), converted)  # atomic
        onnx_path, onnx_precision = converted, "fp16"
    profiles, usable_batch = _input_profiles(onnx_path, max_batch, cfg.opt_batch or opt_batch)
    key = EngineKey(
        onnx_sha256=sha256_file(onnx_path),
        precision=precision,
        trt_version=str(trt.__version__),
        gpu_name=gpu,
        compute_capability=f"{major}.{minor}",
        input_shapes=profiles,
        builder=(("workspace_mb", str(cfg.workspace_mb)), ("onnx_precision", onnx_precision)),
    )
    entry = cache.entry(key, stem=Path(model_path).stem)
    timing = cache.dir / f"timing-{_slug(str(trt.__version__))}-{_slug(gpu)}-sm{major}{minor}.cache"

    def build() -> bytes:
        log.info("building TensorRT %s engine for %s (%s); this can take minutes", precision, onnx_path, gpu)
        return build_engine_bytes(
            trt, onnx_path, precision, onnx_precision, profiles, cfg, timing if cfg.timing_cache else None
        )

    engine, built = cache.get_or_build(entry, build, info={"onnx_path": str(onnx_path), "source": str(model_path)})
    return EnginePlan(onnx_path, precision, entry, usable_batch), engine, built


# --------------------------------------------------------------------------------------------
# Runtime


class _ThreadState:
    """One inference thread's execution context, stream and buffers (sized for max batch).

    If any allocation fails, whatever was already allocated is freed before the error propagates.
    """

    def __init__(self, engine: Any, cuda: CudaApi, plan: list[BufferSpec]) -> None:
        self.cuda = cuda
        self.context: Any = None
        self.stream: Stream | None = None
        self.device: dict[str, DeviceBuffer] = {}
        self.host: dict[str, PinnedBuffer] = {}
        cuda.thread_enter()
        try:
            self.context = engine.create_execution_context()
            if self.context is None:
                raise BackendUnavailableError("TensorRT could not create an execution context (out of GPU memory?)")
            self.stream = cuda.stream()
            for b in plan:
                self.device[b.name] = cuda.alloc(b.nbytes)
                self.host[b.name] = cuda.alloc_pinned(b.nbytes)
                if not self.context.set_tensor_address(b.name, self.device[b.name].ptr):
                    raise ModelError(f"TensorRT refused the device address of tensor {b.name!r} (set_tensor_address)")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop the context, then free the buffers and the stream. Idempotent."""
        self.context = None
        buffers = [*self.device.values(), *self.host.values()]
        self.device, self.host = {}, {}
        for buf in buffers:
            buf.close()
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.close()


def _numpy_dtype(trt: Any, name: str, trt_dtype: Any) -> np.dtype:
    """The numpy dtype of an engine I/O tensor; BF16/FP8/FP4 I/O (no numpy type) is a ModelError."""
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except (TypeError, KeyError):  # tensorrt.nptype raises TypeError for types numpy lacks
        raise ModelError(
            f"TensorRT engine tensor {name!r} is {trt_dtype}, which numpy cannot hold; the tensorrt backend "
            "takes float32/float16/int8/uint8/int32/int64/bool I/O (cast BF16/FP8 at the model's inputs and outputs)"
        ) from None


class TensorRTBackend:
    """The ``tensorrt`` backend (see the module docstring)."""

    name = "tensorrt"

    def __init__(self, model_path: str, options: BackendOptions) -> None:
        trt = import_tensorrt()
        cfg = _trt_config(options)
        self._closed = False
        self._cuda = open_cuda(cfg.cuda_binding, cfg.device)
        self._cuda.thread_enter()
        max_batch, opt_batch = max(1, options.max_batch), (options.extra or {}).get("opt_batch")
        try:
            self.plan, engine_bytes, built = prepare_engine(model_path, max_batch, cfg, self._cuda, opt_batch)
            self.engine_path = self.plan.entry.engine_path
            self._runtime = trt.Runtime(_trt_logger(trt))
            self._engine = self._runtime.deserialize_cuda_engine(engine_bytes)
            if self._engine is None and not built:
                # A valid manifest but an engine this TensorRT rejects: rebuild once, never loop.
                log.warning("TensorRT cannot deserialize the cached engine %s; rebuilding it", self.engine_path)
                self.plan.entry.manifest_path.unlink(missing_ok=True)
                self.plan, engine_bytes, built = prepare_engine(model_path, max_batch, cfg, self._cuda, opt_batch)
                self.engine_path = self.plan.entry.engine_path
                self._engine = self._runtime.deserialize_cuda_engine(engine_bytes)
            if self._engine is None:
                raise ModelError(f"{self.engine_path}: TensorRT cannot deserialize the engine")
            self.built = built  # False: loaded from the cache, no build
            self._io = self._discover_io(trt)
        finally:
            self._cuda.thread_exit()
        ins = [t for t in self._io if t.is_input]
        if len(ins) != 1:
            raise ModelError(f"{model_path}: the TensorRT backend supports one input, the engine has {len(ins)}")
        self._input = ins[0]
        self.inputs = [io_to_tensor_info(t) for t in ins]
        self.outputs = [io_to_tensor_info(t) for t in self._io if not t.is_input]
        self._static_batch = ins[0].shape[0] >= 0
        self._max_batch = max(1, ins[0].shape[0]) if self._static_batch else self.plan.max_batch
        self._buffer_plan = plan_buffers(self._io, self._max_batch)
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()
        log.info(
            "TensorRT engine %s (%s, %s)", self.engine_path, self.plan.precision, "built" if built else "from cache"
        )

    def _discover_io(self, trt: Any) -> list[IOTensor]:
        eng = self._engine
        io = []
        for i in range(eng.num_io_tensors):
            name = eng.get_tensor_name(i)
            is_input = eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = _numpy_dtype(trt, name, eng.get_tensor_dtype(name))
            io.append(IOTensor(name, is_input, dtype, tuple(int(d) for d in eng.get_tensor_shape(name))))
        return io

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def _state(self) -> _ThreadState:
        st = getattr(self._local, "state", None)
        if st is None:
            st = _ThreadState(self._engine, self._cuda, self._buffer_plan)
            self._local.state = st
            with self._lock:
                self._states.append(st)
        return st

    def _check_batch(self, batch: np.ndarray) -> int:
        """The batch's item count, after refusing what the engine cannot take as given."""
        if self._closed:
            raise BackendUnavailableError("TensorRT backend is closed: infer() called after close()")
        inp = self._input
        item_shape = next(b.shape[1:] for b in self._buffer_plan if b.name == inp.name)
        n = int(batch.shape[0]) if batch.ndim else 0
        if not 1 <= n <= self._max_batch:
            raise ValueError(f"batch of {n} outside 1..{self._max_batch}")
        if tuple(batch.shape[1:]) != item_shape:
            raise ValueError(f"TensorRT input {inp.name!r}: expected items of shape {item_shape}, got {batch.shape[1:]}")
        if not np.can_cast(batch.dtype, inp.dtype, casting="same_kind"):
            raise ModelError(
                f"TensorRT input {inp.name!r} takes {inp.dtype} but got {batch.dtype}: casting would destroy the "
                "frame (a uint8-input engine needs raw uint8 frames, not normalized floats)"
            )
        return n

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Copy ``batch`` in, run the engine on this thread's stream, copy the outputs out.

        An engine with a static batch N always runs N items: a partial batch of n < N is copied
        into the first n rows, the rest are zeroed, and only the first n rows of each output come
        back. The stream is synchronized before returning or raising, so a failed call never leaves
        a copy into the pinned buffers in flight for the next call to race.
        """
        inp = self._input
        n = self._check_batch(batch)
        run_n = self._max_batch if self._static_batch else n
        plan = {b.name: b for b in plan_buffers(self._io, run_n)}
        st = self._state()
        ctx, stream = st.context, st.stream
        if not self._static_batch and not ctx.set_input_shape(inp.name, plan[inp.name].shape):
            raise ModelError(
                f"TensorRT rejected input shape {plan[inp.name].shape} for {inp.name!r} "
                "(outside the engine's optimization profile?)"
            )
        host_in = st.host[inp.name].view(inp.dtype, plan[inp.name].shape)
        np.copyto(host_in[:n], batch, casting="same_kind")
        if n < run_n:
            host_in[n:] = 0  # padding rows of a static batch: zeros, never the previous call's frames
        outs = []
        try:
            st.cuda.copy_htod_async(st.device[inp.name], host_in, stream)
            if not ctx.execute_async_v3(stream.handle):
                raise ModelError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            for t in self._io:
                if t.is_input:
                    continue
                shape = tuple(int(d) for d in ctx.get_tensor_shape(t.name))
                host = st.host[t.name].view(t.dtype, shape)
                st.cuda.copy_dtoh_async(host, st.device[t.name], stream)
                outs.append(host)
        finally:
            stream.synchronize()  # also on failure: the next call reuses these pinned buffers
        # Copies: the pinned buffers are reused by the next call.
        return [o[:n].copy() if n < run_n and o.ndim and o.shape[0] == run_n else o.copy() for o in outs]

    def close(self) -> None:
        """Free every thread's context, stream and buffers, then the engine. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            states, self._states = self._states, []
        for st in states:
            st.cuda.thread_enter()
            try:
                st.close()
            finally:
                st.cuda.thread_exit()
        self._engine = None
        self._runtime = None


def build_engine_for_config(cfg: Any, model_path: str | Path) -> tuple[Path, bool, str]:
    """Prebuild (or find) the engine for a deployment: ``inferpath build-engine``.

    The engine is the one ``inferpath run`` of the same config loads: its opt batch follows the
    config's sources (1 when any is live: a stream, a camera or a file played ``realtime``).
    Returns (engine path, built now, precision).
    """
    import_tensorrt()  # the first missing piece a user should hear about
    trt_cfg = cfg.backend.tensorrt
    live = any(s.realtime or not Path(s.uri).is_file() for s in cfg.sources)
    max_batch = max(1, cfg.backend.max_batch)
    cuda = open_cuda(trt_cfg.cuda_binding, trt_cfg.device)
    cuda.thread_enter()
    try:
        plan, _, built = prepare_engine(model_path, max_batch, trt_cfg, cuda, profile_opt_batch(live, max_batch))
    finally:
        cuda.thread_exit()
    return plan.entry.engine_path, built, plan.precision


register_backend("tensorrt", TensorRTBackend, order=1)
