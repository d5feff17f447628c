"""Live edits of a running service: what may change without a restart, and applying it.

:func:`apply_update` takes a partial config (``PATCH /api/config``'s body, or the whole file again
on ``SIGHUP``), merges it over the running config, validates the result with the same rules as a
YAML file, and compares. If only live keys changed, they apply from each stream's next frame:

- ``tracking.lines`` / ``tracking.zones``: tracks go on; an unchanged line keeps its counts, an
  edited one restarts from zero and the summary says so (:meth:`Tracking.update`);
- ``model.conf_threshold`` / ``model.classes``: the postprocess stage's next frame;
- latency budgets (``pipeline.latency_budget_ms``, ``sources[].latency_budget_ms``): the budget
  every stage checks, and the batcher's cap;
- ``sources[].weight``: the stream's share of inference, in the batcher's queue group;
- ``metrics.drift.threshold``: the drift monitor.

Any other key that changed refuses the whole edit (:class:`RestartRequiredError` names them), so
a request never half-applies. ``sources`` in a partial is a list of entries matched by ``id``
(the streams running now, whether they came from the file or the API); an entry for a stream that
is not running is not a live edit (add it with ``POST /api/streams``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from pipeline.config import Config, build_config, source_config, to_dict
from pipeline.errors import ConfigError, RestartRequiredError
from pipeline.runtime.plan import check_classes as check_model_classes
from pipeline.sources.base import default_id

if TYPE_CHECKING:
    from pipeline.runtime.local import LocalEngine

log = logging.getLogger("pipeline.runtime")

# Dotted keys that change live; a changed key under one of them is live too.
LIVE_KEYS = ("tracking.lines", "tracking.zones", "model.conf_threshold", "model.classes",
             "pipeline.latency_budget_ms", "metrics.drift.threshold")
LIVE_SOURCE_KEYS = ("latency_budget_ms", "weight")


def merge(base: Any, partial: Any) -> Any:
    """``partial`` over ``base``: mappings merge key by key, anything else (lists too) replaces."""
    if isinstance(base, dict) and isinstance(partial, dict):
        out = dict(base)
        for key, value in partial.items():
            out[key] = merge(base.get(key), value) if key in base else value
        return out
    return partial


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ (a list is one value: ``tracking.lines``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += changed_keys(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if old == new else [prefix]


def apply_update(cfg: Config, partial: dict, engine: Any, check_only: bool = False) -> tuple[Config, list[str]]:
    """Validate ``partial`` against the running ``cfg`` and apply it (see the module doc) through
    ``engine.apply_live`` (the local engine's stages, or the Ray driver's workers). Returns the
    new config and the keys that changed; raises ConfigError (a bad value: nothing applied) or
    RestartRequiredError (keys that need a restart: nothing applied). ``check_only``: every
    check, nothing applied."""
    if not isinstance(partial, dict):
        raise ConfigError(f"expected a mapping of config sections, got {type(partial).__name__}")
    partial = dict(partial)
    source_edits = partial.pop("sources", None)
    old = to_dict(cfg)
    old.pop("sources", None)
    new_cfg = build_config(merge(old, partial), cfg.path or "<config>")
    new = to_dict(new_cfg)
    new.pop("sources", None)
    changed = changed_keys(old, new)
    edits, source_changed, restart = _source_edits(source_edits, engine)
    restart += [k for k in changed if not k.startswith(LIVE_KEYS)]
    if restart:
        raise RestartRequiredError(restart)
    new_cfg = dataclasses.replace(new_cfg, sources=cfg.sources, path=cfg.path)
    engine.apply_live(cfg, new_cfg, changed, edits, check_only)
    changed += source_changed
    if check_only:
        return cfg, changed
    if changed:
        log.info("live update applied from the next frame: %s", ", ".join(changed))
    return new_cfg, changed


def _source_edits(entries: Any, engine: Any) -> tuple[dict[str, dict[str, Any]], list[str], list[str]]:
    """``sources`` of a partial: (the live keys' new values by stream id, e.g. ``{"door":
    {"weight": 0.5}}``; the keys changed; those needing a restart)."""
    if entries is None:
        return {}, [], []
    if isinstance(entries, (str, dict)):
        entries = [entries]
    if not isinstance(entries, list):
        raise ConfigError(f"sources: expected a list of sources[] entries, got {type(entries).__name__}")
    edits: dict[str, dict[str, Any]] = {}
    changed: list[str] = []
    restart: list[str] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"uri": entry}
        if not isinstance(entry, dict) or not (entry.get("id") or entry.get("uri")):
            raise ConfigError(f"sources[{i}]: expected a mapping with the id of a running stream")
        sid = entry.get("id") or default_id(str(entry["uri"]))
        stream = engine.streams.get(sid)
        if stream is None:
            restart.append(f"sources[{i}] ({sid}: not running; add it with POST /api/streams)")
            continue
        running = stream.config
        scfg = source_config({**to_dict(running), **entry})  # the running entry with the edit: same checks
        given = set(entry)
        for key in sorted(given - {"id"}):
            if getattr(scfg, key) == getattr(running, key):
                continue
            if key in LIVE_SOURCE_KEYS:
                edits.setdefault(sid, {})[key] = getattr(scfg, key)
                changed.append(f"sources[{sid}].{key}")
            else:
                restart.append(f"sources[{sid}].{key}")
    return edits, changed, restart


def check_classes(plan: Any, new: Config, changed: list[str]) -> None:
    """An edited ``model.classes`` names classes of the running model (ConfigError otherwise)."""
    if any(k.startswith(("model.conf_threshold", "model.classes")) for k in changed):
        check_model_classes(new.model.classes, plan.names, plan.model_path)


def live_partial(new: Config, changed: list[str]) -> dict:
    """The live keys of ``new`` that ``changed`` names, as a partial config (what the Ray driver
    forwards to each worker, whose own config differs in everything else)."""
    data = to_dict(new)
    out: dict = {}
    for key in LIVE_KEYS:
        if not any(k == key or k.startswith(key + ".") for k in changed):
            continue
        *path, last = key.split(".")
        src, dst = data, out
        for part in path:
            src, dst = src[part], dst.setdefault(part, {})
        dst[last] = src[last]
    return out


def apply_local(engine: LocalEngine, old: Config, new: Config, changed: list[str],
                edits: dict[str, dict[str, Any]], check_only: bool = False) -> None:
    """Carry the changed live keys into the local engine's running stages (each is read per
    frame); ``check_only``: the checks only (classes, lines and zones inside each known frame)."""
    graph = engine.graph
    if graph is None:
        raise RuntimeError("live edits need a running service")
    plan = engine.plan
    check_classes(plan, new, changed)
    if any(k.startswith(("tracking.lines", "tracking.zones")) for k in changed):
        if plan.tracking is None:
            log.warning("tracking.lines/zones edited, but tracking is off (tracking.enabled needs a restart)")
        elif check_only:
            plan.tracking.check(new.tracking)
        else:
            plan.tracking.update(new.tracking)  # checks first; a bad edit raises before anything changed
    if check_only:
        return
    if any(k.startswith(("model.conf_threshold", "model.classes")) for k in changed):
        m = new.model
        graph.postprocess.settings = dataclasses.replace(
            graph.postprocess.settings, conf=m.conf_threshold, classes=tuple(m.classes) if m.classes else None)
    budgets = {sid: e["latency_budget_ms"] for sid, e in edits.items() if "latency_budget_ms" in e}
    for sid, e in edits.items():  # the running entry keeps each live edit (GET /api/config, later edits)
        stream = engine.streams[sid]
        engine.streams[sid] = dataclasses.replace(stream, config=dataclasses.replace(stream.config, **e))
    for sid, e in edits.items():
        if "weight" in e:
            graph.group.set_weight(sid, e["weight"])
    if budgets or "pipeline.latency_budget_ms" in changed:
        budget = graph.ctx.budget
        for sid, stream in list(engine.streams.items()):
            own = stream.config.latency_budget_ms
            budget.budgets_ms[sid] = own if own is not None else (
                new.pipeline.latency_budget_ms if stream.live else None)
        graph.inference.streams_changed()
    if "metrics.drift.threshold" in changed:
        for ob in engine.state.observers:
            if hasattr(ob, "threshold") and hasattr(ob, "on_frame"):  # the drift monitor
                ob.threshold = float(new.metrics.drift.threshold)


__all__ = ["LIVE_KEYS", "apply_local", "apply_update", "changed_keys", "check_classes", "live_partial", "merge"]
