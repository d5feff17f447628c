"""The engines a plan runs on, by name (``cluster.engine``).

An engine is built from a :class:`~pipeline.runtime.plan.Plan` and the run's
:class:`~pipeline.runtime.state.RunState`, and ``run()`` returns the
:class:`~pipeline.runtime.summary.RunSummary`. ``local`` is :mod:`pipeline.runtime.local`; ``ray``
is :mod:`pipeline.cluster`, which registers itself here (a plug-in package of this registry, found
by name: the runtime never imports the cluster, the cluster builds on the runtime).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pipeline.errors import ConfigError
from pipeline.registry import LAST, Registry

if TYPE_CHECKING:
    from pipeline.runtime.plan import Plan
    from pipeline.runtime.state import RunState
    from pipeline.runtime.summary import RunSummary


class Engine(Protocol):
    """Runs one plan once."""

    def run(self, progress: bool | None = None) -> RunSummary: ...


EngineFactory = Callable[["Plan", "RunState"], Engine]

ENGINES: Registry[EngineFactory] = Registry("engine", "pipeline.runtime", error=ConfigError,
                                            plugins=("pipeline.cluster",))


def register_engine(name: str, factory: EngineFactory, order: int = LAST) -> None:
    """Register an engine: ``factory(plan, state)`` -> something with ``run(progress)``."""
    ENGINES.register(name, factory, order)


def engine_for(plan: Plan, state: RunState) -> Engine:
    """The engine ``plan.engine`` names, built on ``plan`` and ``state``."""
    return ENGINES.lookup(plan.engine)(plan, state)


__all__ = ["ENGINES", "Engine", "EngineFactory", "engine_for", "register_engine"]
