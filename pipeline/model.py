"""Model files and their specs.

A model is an ONNX file plus a small spec: input size, layout, colour order, scale/mean/std,
class names and output format. The spec comes from, in order: an explicit YAML, a YAML beside
the model (``model.yaml`` next to ``model.onnx``), the ONNX metadata key ``inferpath.spec``
(JSON), or Ultralytics' metadata (``names``, ``imgsz``). The bundled model carries its spec in
its metadata.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pipeline import decoders
from pipeline.errors import ModelError

ONNX_MAGIC_HINT = "expected an ONNX model (.onnx)"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """How to feed a model and read its outputs."""

    input_size: tuple[int, int] = (640, 640)  # (width, height)
    layout: str = "NCHW"  # NCHW (float planes) or NHWC (uint8 frames, normalization in the graph)
    color: str = "RGB"  # channel order the model expects
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # after scaling, in `color` order
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    input_dtype: str = "float32"  # float32, float16 or uint8 (raw frames)
    output_format: str = "auto"
    names: tuple[str, ...] = field(default_factory=tuple)
    letterbox_color: tuple[int, int, int] = (114, 114, 114)

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise ModelError(f"model spec: layout must be NCHW or NHWC, got {self.layout!r}")
        if self.color not in ("RGB", "BGR"):
            raise ModelError(f"model spec: color must be RGB or BGR, got {self.color!r}")
        formats = decoders.formats()
        if self.output_format not in formats:
            raise ModelError(
                f"model spec: output_format must be one of {', '.join(formats)}, got {self.output_format!r}"
            )
        if self.input_dtype not in ("float32", "float16", "uint8"):
            raise ModelError(f"model spec: input_dtype must be float32, float16 or uint8, got {self.input_dtype!r}")

    def normalization(self) -> str:
        """How frames become the model's input, for the start line: ``RGB x1/255``, ``BGR uint8``, ..."""
        if self.input_dtype == "uint8":
            return f"{self.color} uint8 (normalized in the model)"
        scale = "1/255" if abs(self.scale - 1 / 255) < 1e-12 else f"{self.scale:g}"
        text = f"{self.color} x{scale}"
        if any(self.mean):
            text += " - mean [" + ", ".join(f"{m:g}" for m in self.mean) + "]"
        if any(s != 1 for s in self.std):
            text += " / std [" + ", ".join(f"{s:g}" for s in self.std) + "]"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "layout": self.layout,
            "color": self.color,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_dtype": self.input_dtype,
            "output_format": self.output_format,
            "names": list(self.names),
            "letterbox_color": list(self.letterbox_color),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> ModelSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{where}: unknown model spec key(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
        kw: dict[str, Any] = {}
        try:
            for key, value in data.items():
                if key in ("input_size", "mean", "std", "letterbox_color"):
                    value = tuple(value)
                    if key == "input_size":
                        value = tuple(int(v) for v in value)
                        if len(value) != 2:
                            raise ValueError("input_size must be [width, height]")
                    elif len(value) != 3:
                        raise ValueError(f"{key} must have 3 values")
                elif key == "names":
                    if isinstance(value, dict):
                        value = tuple(str(value[k]) for k in sorted(value, key=int))
                    else:
                        value = tuple(str(v) for v in value)
                elif key == "scale":
                    value = float(value)
                kw[key] = value
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{where}: bad model spec: {exc}") from None
        return cls(**kw)


def class_label(names: Sequence[str], class_id: int) -> str:
    """The name of ``class_id`` in ``names``; its number as text when the model names no such class."""
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)


def bundled_model_path() -> Path:
    """The ONNX file shipped inside the package (NanoDet, COCO-80, 416x416)."""
    return Path(str(resources.files("pipeline") / "models" / "nanodet_coco.onnx"))


def load_onnx_metadata(path: Path) -> dict[str, str]:
    """Read only the metadata of an ONNX file (no weights check); ModelError if not ONNX."""
    check_model_file(path)
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelError(f"{path}: cannot parse as ONNX ({type(exc).__name__}); {ONNX_MAGIC_HINT}") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes); {ONNX_MAGIC_HINT}")
    return {p.key: p.value for p in model.metadata_props}


def check_model_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if not path.is_file():
        raise ModelError(f"{path}: model path is not a file; {ONNX_MAGIC_HINT}")


def spec_from_metadata(meta: dict[str, str], where: str) -> ModelSpec | None:
    """A spec from ``inferpath.spec`` JSON, else from Ultralytics' ``names``/``imgsz``, else None."""
    if "inferpath.spec" in meta:
        try:
            data = json.loads(meta["inferpath.spec"])
        except json.JSONDecodeError as exc:
            raise ModelError(f"{where}: metadata 'inferpath.spec' is not valid JSON ({exc})") from None
        return ModelSpec.from_dict(data, f"{where} (metadata inferpath.spec)")
    if "names" in meta:
        data: dict[str, Any] = {}
        try:
            data["names"] = ast.literal_eval(meta["names"])
            if "imgsz" in meta:
                h, w = ast.literal_eval(meta["imgsz"])
                data["input_size"] = (w, h)
        except (ValueError, SyntaxError, TypeError):
            raise ModelError(f"{where}: metadata 'names'/'imgsz' not understood") from None
        return ModelSpec.from_dict(data, f"{where} (Ultralytics metadata)")
    return None


def spec_file(model_path: Path, spec_path: Path | None = None) -> ModelSpec | None:
    """The spec from a YAML file (explicit > beside the model); None when there is none, and the
    spec is then the ONNX's metadata (:func:`load_spec`)."""
    candidates = [spec_path] if spec_path else [model_path.with_suffix(".yaml"), model_path.with_suffix(".yml")]
    for cand in candidates:
        if cand is not None and cand.exists():
            try:
                data = yaml.safe_load(cand.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ModelError(f"{cand}: malformed YAML ({str(exc).splitlines()[0]})") from None
            if not isinstance(data, dict):
                raise ModelError(f"{cand}: expected a mapping of model spec keys")
            return ModelSpec.from_dict(data, str(cand))
        if spec_path is not None:
            raise ModelError(f"{spec_path}: model spec file not found")
    return None


def load_spec(model_path: Path, spec_path: Path | None = None, metadata: dict[str, str] | None = None) -> ModelSpec:
    """Find the spec for ``model_path`` (explicit YAML > YAML beside > ONNX metadata > defaults).
    ``metadata``: the ONNX's metadata where it is already at hand (an ONNX Runtime session has
    it), so the file is not parsed again; else it is read with ``onnx``."""
    spec = spec_file(model_path, spec_path)
    if spec is not None:
        return spec
    meta = metadata if metadata is not None else load_onnx_metadata(model_path)
    spec = spec_from_metadata(meta, str(model_path))
    return spec if spec is not None else ModelSpec()


def static_input_layout(shape: tuple[object, ...]) -> tuple[str, tuple[int, int]] | None:
    """``(layout, (width, height))`` read from a 4-D image input whose sizes are fixed, else None."""
    if len(shape) != 4:
        return None
    _, d1, d2, d3 = shape
    if d1 == 3 and isinstance(d2, int) and isinstance(d3, int):
        return "NCHW", (d3, d2)
    if d3 == 3 and isinstance(d1, int) and isinstance(d2, int):
        return "NHWC", (d2, d1)
    return None


def fit_spec_to_input(spec: ModelSpec, shape: tuple[object, ...], dtype: str, where: str) -> ModelSpec:
    """Check the spec against the model's (static) input. A model without any spec takes its input
    size, layout and dtype from the ONNX; a spec that contradicts the ONNX is refused in one line."""
    found = static_input_layout(shape)
    if found is None:
        return spec
    layout, size = found
    if spec == ModelSpec():  # no spec anywhere: the ONNX is the only authority
        fitted = replace(spec, layout=layout, input_size=size,
                         input_dtype=dtype if dtype in ("float32", "float16", "uint8") else spec.input_dtype)
        log.info("%s: no model spec found; input %dx%d %s read from the ONNX (see README: model spec)",
                 where, size[0], size[1], layout)
        return fitted
    if (layout, size) != (spec.layout, tuple(spec.input_size)):
        dims = "[" + ",".join(str(d) for d in shape) + "]"
        raise ModelError(f"{where}: the spec says input {spec.input_size[0]}x{spec.input_size[1]} {spec.layout}, "
                         f"but the ONNX input is {dims} ({size[0]}x{size[1]} {layout}); fix input_size/layout "
                         "in the spec")
    return spec


def run_spec(model_path: Path, spec_path: Path | None = None) -> ModelSpec:
    """The spec ``inferpath run`` uses for this model: :func:`load_spec`, fitted to the ONNX's own
    first input (:func:`fit_spec_to_input`), so a model without a spec whose input is NHWC, or of
    another size, is fed the same tensors by calibration and the accuracy gate as by a run."""
    import onnx

    model_path = Path(model_path)
    spec = load_spec(model_path, spec_path)
    try:
        graph = onnx.load(str(model_path), load_external_data=False).graph
    except Exception as exc:  # not ONNX: the backend's own load reports it in one line
        log.debug("%s: input not read for the spec (%s)", model_path, exc)
        return spec
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if not inputs:
        return spec
    t = inputs[0].type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "float32"
    return fit_spec_to_input(spec, shape, dtype, str(model_path))

