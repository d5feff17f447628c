"""ONNX Runtime backend: the CPU default (and CUDA/TensorRT execution providers where installed)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.backends.base import BackendOptions, TensorInfo, register_backend
from pipeline.errors import BackendUnavailableError, ConfigError, ModelError
from pipeline.model import check_model_file
from pipeline.onnx_tools import TARGET_KEY

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailableError(
            "onnxruntime is not installed; install it with: pip install onnxruntime"
        ) from None
    return ort


class OnnxRuntimeBackend:
    """Runs an ONNX model with ONNX Runtime. Thread counts and providers come from the config."""

    name = "onnxruntime"

    def __init__(self, model_path: str, options: BackendOptions) -> None:
        ort = _import_ort()
        path = Path(model_path)
        check_model_file(path)
        ort_cfg = options.extra.get("onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.log_severity_level = 3
        level = getattr(ort_cfg, "graph_optimization", "all")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[level])
        if not getattr(ort_cfg, "allow_spinning", False):  # idle ORT threads sleep: CPU for decode/encode
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = list(options.providers) or ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in available]
        if missing:
            raise ConfigError(
                f"backend.onnxruntime.providers: {', '.join(missing)} not available in this onnxruntime; "
                f"available: {', '.join(available)}"
            )
        try:
            self._session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path}: ONNX Runtime cannot load it as an ONNX model ({first[:200]})") from None
        # The ONNX's metadata (the model spec is read from it: no second parse of the file with onnx).
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        if self.metadata.get(TARGET_KEY) == "tensorrt":
            log.warning("%s: INT8 in TensorRT's form, which ONNX Runtime runs no faster than FP32 on a CPU; make "
                        "the CPU form (about 2x) with: inferpath quantize --target onnxruntime --calib VIDEO", path.name)
        self.inputs = [self._info(i) for i in self._session.get_inputs()]
        self.outputs = [self._info(o) for o in self._session.get_outputs()]
        if len(self.inputs) != 1:
            raise ModelError(
                f"{path}: expected one image input, found {len(self.inputs)} "
                f"({', '.join(i.name for i in self.inputs)})"
            )
        self._input_name = self.inputs[0].name
        self._requested_batch = max(1, options.max_batch)
        self.path = path
        log.debug("onnxruntime %s on %s: inputs %s outputs %s", ort.__version__, providers, self.inputs, self.outputs)

    @staticmethod
    def _info(arg) -> TensorInfo:
        shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
        return TensorInfo(arg.name, shape, np.dtype(_ORT_TYPES.get(arg.type, np.float32)))

    @property
    def max_batch(self) -> int:
        """The requested batch where the model's batch is dynamic; its fixed batch otherwise."""
        first = self.inputs[0].shape[0] if self.inputs[0].shape else 1
        return self._requested_batch if not isinstance(first, int) else first

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self._input_name: batch})

    def close(self) -> None:
        self._session = None


register_backend("onnxruntime", OnnxRuntimeBackend, order=0)
