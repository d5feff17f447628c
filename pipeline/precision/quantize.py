"""INT8 quantization per target backend, calibrated on frames of the user's own video.

The target decides the form, because the two backends want opposite things:

* ``onnxruntime`` (the CPU): ONNX Runtime's integer kernels are fastest with asymmetric uint8
  activations and symmetric per-channel int8 weights (U8S8), weights stored as int8 (a ~4 MB
  file). Which of its two encodings is used (Q/DQ or QOperator) was chosen by measurement: see
  ``docs/bench/quantization.md`` and :data:`ORT_FORMAT`.
* ``tensorrt``: TensorRT accepts only symmetric quantization (every zero point 0, int8 types),
  with Q/DQ pairs on Conv inputs and float biases; :func:`check_tensorrt_qdq` verifies it. On the
  CPU this form is slower than FP32 (ONNX Runtime has no fast S8S8 convolution on most CPUs).

Both forms come from one calibration (ranges cached in a JSON file), so re-quantizing with more
layers kept in float (accuracy recovery) costs seconds, not a new calibration. The detection
head's last convolutions stay in float: their outputs are box distributions and scores, where
INT8 costs the most accuracy.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.backends.tensorrt_rules import check_tensorrt_qdq
from pipeline.errors import ConfigError, ModelError
from pipeline.model import ModelSpec, run_spec
from pipeline.onnx_tools import (
    PRECISION_KEY,
    PREPARED_KEY,
    SOURCE_KEY,
    SPEC_KEY,
    TARGET_KEY,
    TARGETS,
    get_metadata,
    graph_input_name,
    load_model,
    model_precision,
    save_model,
    set_metadata,
    source_record,
)
from pipeline.precision.frames import calibration_reader

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

ORT_FORMAT = "QDQ"  # the onnxruntime target's encoding, chosen by measurement (docs/bench/quantization.md)
CALIB_METHODS = ("minmax", "entropy", "percentile")


def check_target(target: str, where: str = "--target") -> str:
    """``target`` if it is a known quantization target; ConfigError (one line) otherwise."""
    if target not in TARGETS:
        raise ConfigError(f"{where}: expected one of {', '.join(TARGETS)}, got {target!r}")
    return target


def find_head_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes that feed a graph output through non-Conv ops only.

    These are the detector head's last convolutions (class scores, box distributions); everything
    after them is decoding arithmetic. Walking back from each output, the search stops at the
    first Conv on every path. A 1-output-channel Conv (a DFL projection) is treated as decoding
    and walked through.
    """
    producers = {out: n for n in model.graph.node for out in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    found: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        tensor = stack.pop()
        node = producers.get(tensor)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "Conv":
            w = inits.get(node.input[1]) if len(node.input) > 1 else None
            if w is not None and len(w.dims) > 0 and w.dims[0] == 1:
                stack.extend(node.input[:1])
                continue
            found.append(node.name)
            continue
        stack.extend(i for i in node.input if i and i not in inits)
    unnamed = [n for n in model.graph.node if n.op_type == "Conv" and not n.name]
    if unnamed:
        log.warning("%d Conv node(s) have no name; they cannot be excluded by name", len(unnamed))
    return sorted(set(found) - {""})


def _calib_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    methods = dict(zip(CALIB_METHODS, (CalibrationMethod.MinMax, CalibrationMethod.Entropy,
                                       CalibrationMethod.Percentile)))
    try:
        return methods[name]
    except KeyError:
        raise ConfigError(f"precision.calib_method: expected one of {', '.join(methods)}, got {name!r}") from None


def _form_options(target: str) -> dict[str, Any]:
    """``quantize_static`` arguments for ``target``'s form."""
    from onnxruntime.quantization import QuantFormat, QuantType

    if target == "tensorrt":
        return dict(
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           "AddQDQPairToWeight": True},
        )
    return dict(
        quant_format=getattr(QuantFormat, "QOperator" if ORT_FORMAT == "QOperator" else "QDQ"),
        activation_type=QuantType.QUInt8,
        extra_options={"WeightSymmetric": True},
    )


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_int8` (or :meth:`Calibration.quantize`) wrote and how."""

    output: Path
    target: str
    calib_frames: list[int]
    excluded_nodes: list[str]  # every Conv kept in float: the head convs, then any recovered layers
    float_layers: list[str] = field(default_factory=list)  # the recovered layers alone
    seconds: float = 0.0


class Calibration:
    """One model calibrated once on one set of frames; quantized to any target, any float layers.

    ``with Calibration(...) as cal: cal.quantize(out, "onnxruntime")``. The pre-processed graph
    (shape inference + ORT's optimizations, as ORT recommends before static quantization) and the
    calibration ranges live in a temporary directory until the context closes.
    """

    def __init__(
        self,
        model_path: str | Path,
        frames: Sequence[np.ndarray],
        spec: ModelSpec | None = None,
        calib_method: str = "minmax",
        calib_indices: Sequence[int] = (),
        preprocess_graph: bool = True,
    ) -> None:
        self.source = Path(model_path)
        self.original = load_model(self.source)
        self.spec = spec or run_spec(self.source)
        precision = model_precision(self.original)
        if precision != "fp32":
            raise ModelError(f"{self.source}: already {precision}; quantize the FP32 model it came from")
        if self.spec.input_dtype == "uint8":
            raise ModelError(
                f"{self.source}: takes uint8 input; quantize the float-input model, then add --uint8-input "
                "with `inferpath convert`"
            )
        if not frames:
            raise ConfigError("quantize: no calibration frames")
        self.frames = list(frames)
        self.method = calib_method
        self._method = _calib_method(calib_method)
        self.calib_indices = list(calib_indices)
        self._tmp = tempfile.TemporaryDirectory(prefix="inferpath-quant-")
        self.dir = Path(self._tmp.name)
        self.graph = self.dir / "model.onnx"
        self._prepare_graph(preprocess_graph)
        self.prepared = load_model(self.graph)
        self.input_name = graph_input_name(self.prepared)
        self.head = find_head_convs(self.prepared)
        self.cache = self.dir / f"ranges-{calib_method}.json"
        if calib_method == "entropy":
            self._calibrate_entropy()

    def _calibrate_entropy(self) -> None:
        """Entropy (KL) ranges from a 2048-bin histogram, written to the calibration cache.

        ``quantize_static`` builds its entropy calibrator with 128 histogram bins and 128 quantized
        bins, which leaves one candidate threshold, the full range: exactly MinMax (ORT 1.32). The
        method needs a histogram much finer than the 128 int8 levels (TensorRT's uses 2048 bins),
        so calibrate here and let ``quantize_static`` read the cached ranges.
        """
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

        calibrator = create_calibrator(
            self.graph, ["Conv"], augmented_model_path=str(self.dir / "augmented.onnx"),
            calibrate_method=self._method, extra_options={"num_bins": 2048, "num_quantized_bins": 128},
        )
        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress lines
            calibrator.collect_data(calibration_reader(self.frames, self.spec, self.input_name))
            save_tensors_data(calibrator.compute_data(), self.cache)

    def _prepare_graph(self, preprocess_graph: bool) -> None:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if preprocess_graph:
            try:  # ONNX shape inference suffices for a conv detector; symbolic inference would need sympy
                quant_pre_process(str(self.source), str(self.graph), skip_symbolic_shape=True)
                return
            except Exception as exc:  # an optimization only: quantize the raw graph instead
                log.warning("quant_pre_process failed (%s); quantizing the model as is", exc)
        save_model(self.original, self.graph)

    def __enter__(self) -> Calibration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tmp.cleanup()

    def quantizable_convs(self) -> list[str]:
        """The Conv nodes quantization touches (every named Conv but the head's)."""
        head = set(self.head)
        return [n.name for n in self.prepared.graph.node if n.op_type == "Conv" and n.name and n.name not in head]

    def quantize(self, output: str | Path, target: str = "onnxruntime", keep_float: Sequence[str] = ()) -> QuantizeResult:
        """Write ``target``'s INT8 form to ``output``, with ``keep_float`` convs left in float too."""
        import onnx
        from onnxruntime.quantization import QuantType, quantize_static

        check_target(target)
        t0 = time.perf_counter()
        extra = list(dict.fromkeys(n for n in keep_float if n not in self.head))
        exclude = [*self.head, *extra]
        out = self.dir / f"{target}-{len(extra)}.onnx"
        with warnings.catch_warnings():  # a constant tensor's range is 0: ORT divides by it and says so
            warnings.simplefilter("ignore", RuntimeWarning)
            quantize_static(
                str(self.graph),
                str(out),
                calibration_data_reader=calibration_reader(self.frames, self.spec, self.input_name),
                op_types_to_quantize=["Conv"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=self._method,
                calibration_cache_path=str(self.cache),
                **_form_options(target),
            )
        qmodel = onnx.load(str(out))
        if target == "tensorrt":
            violations = check_tensorrt_qdq(qmodel)
            if violations:
                raise ModelError("INT8 model breaks TensorRT's Q/DQ rules: " + "; ".join(violations[:5]))
        meta = get_metadata(self.original)
        meta.setdefault(SPEC_KEY, json.dumps(self.spec.to_dict()))  # the spec it was calibrated with goes along
        meta[PRECISION_KEY] = "int8"
        meta[TARGET_KEY] = target
        meta[SOURCE_KEY] = source_record(self.source)  # the FP32 model the canary compares it with
        meta[PREPARED_KEY] = json.dumps({
            "from": self.source.name, "target": target, "calib_frames": len(self.frames),
            "calib_method": self.method, "excluded": exclude, "float_layers": extra,
        })
        set_metadata(qmodel, meta)
        path = save_model(qmodel, output)
        return QuantizeResult(path, target, self.calib_indices, exclude, extra, time.perf_counter() - t0)


def quantize_int8(
    model_path: str | Path,
    frames: Sequence[np.ndarray],
    output: str | Path,
    spec: ModelSpec | None = None,
    calib_method: str = "minmax",
    calib_indices: Sequence[int] = (),
    target: str = "onnxruntime",
    keep_float: Sequence[str] = (),
    preprocess_graph: bool = True,
) -> QuantizeResult:
    """Write ``target``'s INT8 ONNX of ``model_path`` calibrated on ``frames`` (BGR images).

    See the module docstring for the two forms. Raises ModelError for a model that is not FP32 or
    takes uint8 input, and for a ``tensorrt`` result that breaks a TensorRT rule.
    """
    check_target(target)
    t0 = time.perf_counter()
    with Calibration(model_path, frames, spec, calib_method, calib_indices, preprocess_graph) as cal:
        res = cal.quantize(output, target, keep_float)
    return QuantizeResult(res.output, target, res.calib_frames, res.excluded_nodes, res.float_layers,
                          time.perf_counter() - t0)
