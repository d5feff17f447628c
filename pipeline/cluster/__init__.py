"""Streams sharded over a Ray cluster (``cluster.engine: ray``).

The Ray engine (:class:`ClusterRun`, the driver: this process) runs a plan
(:mod:`pipeline.runtime.plan`): it places the streams on ``InferpathWorker`` actors by cost, pulls
their results in small batches, runs the sinks that need no pixels (JSON lines, from the sink
registry), the summary and the metrics as a local run does, and resumes a lost worker's streams on a new one
(:mod:`pipeline.cluster.resume`). Ray is imported only here, and only when a run asks for it.
"""

from __future__ import annotations

from pipeline.errors import ConfigError

INSTALL_HINT = "cluster.engine: ray needs Ray, which is not installed: pip install 'inferpath[cluster]'"


def import_ray():
    """Ray, or a one-line ConfigError saying what to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def __getattr__(name: str):
    if name == "ClusterRun":
        from pipeline.cluster.driver import ClusterRun

        return ClusterRun
    raise AttributeError(name)


__all__ = ["ClusterRun", "import_ray", "INSTALL_HINT"]
