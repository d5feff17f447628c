"""Inference backends, chosen by name: ``onnxruntime`` (CPU default) and ``tensorrt``."""

from pipeline.backends.base import (
    BACKENDS,
    Backend,
    BackendOptions,
    TensorInfo,
    backend_names,
    create_backend,
    register_backend,
)

__all__ = [
    "Backend",
    "BackendOptions",
    "TensorInfo",
    "backend_names",
    "BACKENDS",
    "create_backend",
    "register_backend",
]
