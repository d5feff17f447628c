"""``streams``: how many realtime 10 fps streams fit the 500 ms budget with < 1 % drops,
batching on and off.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import BATCH_VIDEO, ModeResult, base_config, md_table, progress, run_pipeline, stage_p50
from pipeline.runtime import RunSummary


def run(args: argparse.Namespace, work: Path) -> ModeResult:
    """Search upward for the number of realtime 10 fps streams the machine holds within the budget."""
    res = ModeResult("streams")
    budget = 500.0
    duration = args.streams_duration or (8.0 if args.quick else 20.0)
    ladder = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    rows = []
    held: dict[str, int] = {}
    best_summary: dict[str, tuple[int, RunSummary]] = {}
    for setting in ("batching on", "batching off"):
        held[setting] = 0
        for n in ladder:
            max_batch = min(n, 8) if setting == "batching on" else 1
            progress(f"streams: {setting}, {n} stream(s) for {duration:g} s")
            cfg = base_config({
                "sources": [{"uri": str(BATCH_VIDEO), "id": f"s{i}", "realtime": True, "loop": True}
                            for i in range(n)],
                "pipeline": {"latency_budget_ms": budget, "duration_s": duration, "progress": False},
                "output": {"jsonl": False, "video": False},
                "backend": {"max_batch": max_batch, "batch_timeout_ms": 20.0},
            }, args.model)
            try:
                _, summary, _ = run_pipeline(cfg)
            except Exception as exc:
                rows.append([setting, n, max_batch, f"error: {type(exc).__name__}: {exc}", "", "", "", "", "FAIL"])
                break
            e2e = summary.stages_ms.get("e2e", [float("nan")] * 3)
            f_in = sum(s.frames_in for s in summary.sources)
            dropped = sum(sum(s.drops.values()) for s in summary.sources)
            drop_pct = 100 * dropped / f_in if f_in else 100.0
            ok = e2e[2] <= budget and drop_pct < 1.0 and summary.frames > 0
            sizes = ", ".join(f"{k}x{v}" for k, v in sorted(summary.batch_sizes.items())) or "-"
            rows.append([setting, n, max_batch, e2e[0], e2e[2], f"{drop_pct:.2f}", summary.frames / duration,
                         sizes, "pass" if ok else "FAIL"])
            if not ok:
                break
            held[setting] = n
            best_summary[setting] = (n, summary)
    for setting, (n, summary) in best_summary.items():
        res.stage_p50[f"streams {n} ({setting})"] = stage_p50(summary)
    res.sections.append(
        f"### Streams per machine ({BATCH_VIDEO.name} realtime 10 fps, loop, {duration:g} s per step, "
        f"budget {budget:g} ms; pass = p99 <= budget and drops < 1 %; batch_timeout_ms 20)\n\n"
        + md_table(["setting", "streams", "max_batch", "e2e p50 ms", "e2e p99 ms", "drop %", "out fps",
                    "batch sizes (size x calls)", "result"], rows)
        + "\n\n**Streams per machine at the budget:** "
        + ", ".join(f"{k}: {v}" for k, v in held.items()))
    res.extra["held"] = held
    return res
