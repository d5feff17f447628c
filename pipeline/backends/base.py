"""The inference backend interface and its registry.

A backend loads one model, describes its inputs and outputs, and runs a batch. It is chosen by
name in YAML (``backend.name``). Each backend lives in its own module and does its heavy imports
lazily, so ``import pipeline`` works without onnxruntime-gpu or TensorRT; a missing library
raises :class:`~pipeline.errors.BackendUnavailableError` with a one-line install hint. A new
backend is one module in this package that calls :func:`register_backend`, plus its settings
section in ``BackendConfig`` (every section reaches the backend in ``BackendOptions.extra``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipeline.errors import ConfigError
from pipeline.registry import LAST, Registry

Dim = int | str | None  # a fixed size, a symbolic name ("batch"), or unknown


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output: name, shape (symbolic dims as str/None), numpy dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype


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
    """Runs one model. One instance is used from one inference thread at a time.

    A backend may also carry ``metadata`` (the ONNX's metadata as a dict, as ONNX Runtime's does):
    the run then reads the model spec from it rather than parsing the file again with ``onnx``."""

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


BackendFactory = Callable[[str, BackendOptions], Backend]
"""``factory(model_path, options) -> Backend``: a backend class, or a function that builds one."""

# Each backend module registers itself (onnxruntime.py, tensorrt.py); heavy libraries are imported
# when a backend is built, never at a module's top.
BACKENDS: Registry[BackendFactory | str] = Registry("backend", "pipeline.backends", error=ConfigError)


def register_backend(name: str, target: BackendFactory | str, order: int = LAST) -> None:
    """Register a backend: a class (or factory) called with ``(model_path, options)``, or its
    ``"module:attribute"`` path, imported when the backend is first built."""
    BACKENDS.register(name, target, order)


def backend_names() -> list[str]:
    return BACKENDS.names()


def create_backend(name: str, model_path: str, options: BackendOptions) -> Backend:
    """Instantiate the backend registered as ``name``; an unknown name lists the valid ones."""
    if name not in BACKENDS:
        raise ConfigError(f"backend.name: {BACKENDS.unknown(name)}")
    target = BACKENDS[name]
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module_name), attr)
    return target(model_path, options)
