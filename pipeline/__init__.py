"""Inferpath: a real-time video object-detection pipeline.

Public API::

    from pipeline import Pipeline, load_config
    summary = Pipeline(load_config("configs/sample.yaml")).run()
"""

from __future__ import annotations

__version__ = "0.1.0"

from pipeline.config import Config, load_config  # noqa: E402
from pipeline.frame import Detections, Frame  # noqa: E402


def __getattr__(name: str):
    if name == "Pipeline":  # the runtime pulls in the backends; import it on first use
        from pipeline.runtime import Pipeline

        return Pipeline
    raise AttributeError(name)


__all__ = ["Config", "Detections", "Frame", "Pipeline", "__version__", "load_config"]
