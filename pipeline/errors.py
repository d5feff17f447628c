"""The error tree.

Every error a user can cause (bad config, bad model, bad video, unreachable camera, unwritable
output) is an :class:`InferpathError`. The CLI prints its message as one line and exits non-zero;
anything else is a bug and keeps its traceback. Errors inherit builtins where it fits, so callers
can catch what they mean (``except TimeoutError``).
"""

from __future__ import annotations


class InferpathError(Exception):
    """Base of every error Inferpath raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(InferpathError, ValueError):
    """A deployment YAML, a ``--set`` override or a CLI flag is wrong. The message names the file and key."""

    exit_code = 2


class ModelError(InferpathError, ValueError):
    """A model file is missing, is not ONNX, or has inputs/outputs we do not understand."""

    exit_code = 3


class BackendUnavailableError(InferpathError, ImportError):
    """An inference backend's libraries are not installed or cannot run here. Carries an install hint."""

    exit_code = 3


class SourceError(InferpathError, OSError):
    """A video source cannot be opened or read."""

    exit_code = 4


class SourceTimeoutError(SourceError, TimeoutError):
    """A live source did not deliver a frame (or did not open) in time, after all retries."""


class SinkError(InferpathError, OSError):
    """An output cannot be written (unwritable directory, encoder that will not open)."""

    exit_code = 5


class AccuracyGateError(InferpathError):
    """A prepared (FP16/INT8) model disagrees with FP32 more than the configured thresholds allow."""

    exit_code = 6


class CudaError(InferpathError, RuntimeError):
    """A CUDA driver/runtime call failed. The message names the call and the CUDA error."""

    exit_code = 7


class ClusterError(InferpathError, ConnectionError):
    """The Ray cluster cannot be reached, lacks the resources asked for, or lost a worker for good."""

    exit_code = 8


class StreamExistsError(ConfigError):
    """A stream added at runtime with an id already in use (HTTP 409)."""


class UnknownStreamError(InferpathError, KeyError):
    """No stream with that id (HTTP 404)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RestartRequiredError(ConfigError):
    """A live edit touched keys that only a restart can change (HTTP 409); ``keys`` names them."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = list(keys)
        super().__init__(f"these keys need a restart: {', '.join(self.keys)} (live keys: tracking.lines, "
                         "tracking.zones, model.conf_threshold, model.classes, latency budgets, "
                         "metrics.drift.threshold)")
