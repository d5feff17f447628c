"""The inference backend interface and its registry.

A backend loads one model, describes its inputs and outputs, and runs a batch. It is chosen by
name in YAML (``backend.name``). Each backend lives in its own module and does its heavy imports
lazily, so ``import pipeline`` works without onnxruntime-gpu or TensorRT; a missing library
raises :class:`~pipeline.errors.BackendUnavailableError` with a one-line install hint.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipeline.errors import ConfigError

Dim = int | str | None  # a fixed size, a symbolic name ("batch"), or unknown


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output: name, shape (symbolic dims as str/None), numpy dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.shape) and not isinstance(self.shape[0], int)

    def fixed_shape(self, batch: int) -> tuple[int, ...]:
        """The concrete shape for ``batch`` items; fails if a non-batch dim is dynamic."""
        dims = []
        for i, d in enumerate(self.shape):
            if i == 0:
                dims.append(batch)
            elif isinstance(d, int):
                dims.append(d)
            else:
                raise ValueError(f"tensor {self.name!r} has a dynamic dimension {i} ({d!r})")
        return tuple(dims)


@dataclass(frozen=True)
class BackendOptions:
    """What every backend may be told; backend-specific settings go in ``extra``."""

    intra_op_threads: int = 0
    inter_op_threads: int = 1
    providers: tuple[str, ...] = ()
    max_batch: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """Runs one model. One instance is used from one inference thread at a time."""

    name: str
    inputs: Sequence[TensorInfo]
    outputs: Sequence[TensorInfo]

    @property
    def max_batch(self) -> int:
        """Largest batch one ``infer`` call accepts (1 for a model with a fixed batch of 1)."""
        ...

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the model on ``batch`` (shape ``[B, ...]`` of the first input); outputs in order."""
        ...

    def close(self) -> None: ...


# name -> "module:attribute", imported on first use so heavy imports stay lazy.
_REGISTRY: dict[str, str] = {
    "onnxruntime": "pipeline.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "pipeline.backends.tensorrt:TensorRTBackend",
}


def register_backend(name: str, target: str) -> None:
    """Register a backend class by ``"module:attribute"`` path (called with ``(model_path, options)``)."""
    _REGISTRY[name] = target


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def create_backend(name: str, model_path: str, options: BackendOptions) -> Backend:
    """Instantiate the backend registered as ``name``; an unknown name lists the valid ones."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"backend.name: unknown backend {name!r}; expected one of {', '.join(backend_names())}"
        ) from None
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(model_path, options)
