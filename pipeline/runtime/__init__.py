"""The runtime, split by job: :mod:`.build` (model, backend, sinks, stages and queues),
:mod:`.supervise` (the two-step stop, the watch loop, the orderly end), :mod:`.summary` (the
run's public summary), and :mod:`.pipeline` (the :class:`Pipeline` that ties them together).

Stopping has two steps. The first (Ctrl-C, SIGTERM, ``duration_s``, end of input) ends the
streams at their readers: what is already in flight is finished and written, then every sink
closes. A second Ctrl-C aborts: every stage exits at once, and the sinks still close, so JSON
lines hold whole lines and videos play.
"""

from pipeline.errors import InferpathError
from pipeline.runtime.build import make_backend, resolve_format, resolve_model, resolve_output
from pipeline.runtime.pipeline import Pipeline
from pipeline.runtime.summary import RunSummary, SourceSummary
from pipeline.runtime.supervise import TwoStepStop, close_sinks

__all__ = ["Pipeline", "RunSummary", "SourceSummary", "TwoStepStop", "close_sinks", "make_backend",
           "resolve_format", "resolve_model", "resolve_output", "InferpathError"]
