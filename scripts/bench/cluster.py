"""``cluster``: realtime 10 fps streams held within the budget by the local engine and by 1 and
2 Ray workers on this machine (``pip install 'inferpath[cluster]'``): the cost of the cluster layer.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bench.common import BATCH_VIDEO, ModeResult, base_config, md_table, progress, run_pipeline
from pipeline.config import Config
from pipeline.runtime import RunSummary

CLUSTER_LADDER = [1, 2, 3, 4, 5, 6, 8, 12, 16]


def _cluster_step(cfg: Config, workers: int | None) -> RunSummary:
    """One step of the cluster search: the local engine (``workers`` None) or Ray workers."""
    if workers is None:
        return run_pipeline(cfg)[1]
    from pipeline.cluster import ClusterRun

    summary = ClusterRun(cfg).run()
    if summary.errors:
        raise RuntimeError(f"cluster error: {summary.errors[0][0]}: {summary.errors[0][1]}")
    return summary


def run(args: argparse.Namespace, work: Path) -> ModeResult:
    """Realtime 10 fps streams held within the budget by the local engine and by 1 and 2 Ray
    workers on this machine: what the cluster layer itself costs (one local Ray for the mode)."""
    res = ModeResult("cluster")
    try:
        import ray
    except ImportError:
        res.sections.append("### Cluster\n\nRay is not installed: pip install 'inferpath[cluster]'")
        return res
    budget = 500.0
    duration = args.streams_duration or (8.0 if args.quick else 20.0)
    cores = os.cpu_count() or 1
    settings: list[tuple[str, int | None, float]] = [("local engine", None, 0.0), ("ray, 1 worker", 1, float(cores)),
                                                     ("ray, 2 workers", 2, cores / 2)]
    rows: list[list[Any]] = []
    ray.init(num_cpus=cores, include_dashboard=False, object_store_memory=128 * 1024 * 1024,
             logging_level="WARNING", log_to_driver=False)
    alive = {name: True for name, _, _ in settings}
    held = {name: 0 for name, _, _ in settings}
    try:  # interleaved: every engine at n streams, then at the next n, so load changes hit them alike
        for n in CLUSTER_LADDER:
            for name, workers, cpus in settings:
                if not alive[name]:
                    continue
                progress(f"cluster: {name}, {n} stream(s) for {duration:g} s")
                cfg = base_config({
                    "sources": [{"uri": str(BATCH_VIDEO), "id": f"s{i}", "realtime": True, "loop": True}
                                for i in range(n)],
                    "pipeline": {"latency_budget_ms": budget, "duration_s": duration, "progress": False},
                    "output": {"dir": str(work / "cluster"), "jsonl": True, "video": False},
                    "backend": {"max_batch": min(n, 8), "batch_timeout_ms": 20.0},
                    "cluster": {"engine": "ray" if workers else "local", "workers": workers or 1,
                                "cpus_per_worker": cpus or 1.0},
                }, args.model)
                try:
                    summary = _cluster_step(cfg, workers)
                except Exception as exc:
                    rows.append([name, n, f"error: {type(exc).__name__}: {exc}", "", "", "", "FAIL"])
                    alive[name] = False
                    continue
                e2e = summary.stages_ms.get("e2e", [float("nan")] * 3)
                f_in = sum(s.frames_in for s in summary.sources)
                drop_pct = 100 * sum(sum(s.drops.values()) for s in summary.sources) / f_in if f_in else 100.0
                ok = e2e[2] <= budget and drop_pct < 1.0 and summary.frames > 0
                rows.append([name, n, e2e[0], e2e[2], f"{drop_pct:.2f}", summary.frames / duration,
                             "pass" if ok else "FAIL"])
                alive[name] = ok
                held[name] = n if ok else held[name]
            if not any(alive.values()):
                break
    finally:
        ray.shutdown()
    local = held.get("local engine") or 0
    ratios = ", ".join(f"{k}: {v / local:.2f}x" for k, v in held.items() if k != "local engine") if local else "-"
    res.sections.append(
        f"### Cluster layer ({BATCH_VIDEO.name} realtime 10 fps, loop, {duration:g} s per step, budget {budget:g} ms; "
        f"pass = p99 <= budget and drops < 1 %; {cores} cores; the Ray workers split them)\n\n"
        + md_table(["engine", "streams", "e2e p50 ms", "e2e p99 ms", "drop %", "out fps", "result"], rows)
        + "\n\n**Streams held:** " + ", ".join(f"{k}: {v}" for k, v in held.items())
        + f"; against the local engine: {ratios}")
    res.extra["held"] = held
    return res
