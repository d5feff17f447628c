"""The runtime, split by job: :mod:`.plan` (what a config means, decided once), :mod:`.state`
(a run's public state and the two-step stop), :mod:`.local` (the local engine) with :mod:`.build`
(stages and queues) and :mod:`.supervise` (the one watch loop), :mod:`.summary` (the run's public
summary, one function for every engine), and :mod:`.pipeline` (the :class:`Pipeline` facade).

Stopping has two steps. The first (Ctrl-C, SIGTERM, ``duration_s``, end of input) ends the
streams at their readers: what is already in flight is finished and written, then every sink
closes. A second Ctrl-C aborts: every stage exits at once, and the sinks still close, so JSON
lines hold whole lines and videos play.
"""

from pipeline.errors import InferpathError
from pipeline.runtime.pipeline import Pipeline
from pipeline.runtime.plan import Plan, make_backend, plan, resolve_format, resolve_model, resolve_output
from pipeline.runtime.state import RunState, TwoStepStop
from pipeline.runtime.summary import RunSummary, SourceSummary, StreamEnd, summarize
from pipeline.sinks import close_sinks

__all__ = ["Pipeline", "Plan", "plan", "RunState", "RunSummary", "SourceSummary", "StreamEnd", "summarize",
           "TwoStepStop", "close_sinks", "make_backend", "resolve_format", "resolve_model", "resolve_output",
           "InferpathError"]
