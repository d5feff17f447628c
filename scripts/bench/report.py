"""The ``--report`` plots (matplotlib): latency over time and per-stage p50 per mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import ModeResult, md_table, progress
from pipeline.metrics import STAGES


def write_plots(results: list[ModeResult], out: Path, budget: float) -> list[Path]:
    """PNG plots: latency over time per live speed, and where the time goes per stage."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("bench: plots need matplotlib: pip install 'inferpath[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    for r in results:
        for plot, series in r.series.items():
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(9, 4.5))
            for label, (t, ms) in series.items():
                if len(t):
                    ax.plot(t, ms, ".", ms=2, label=f"{label} (p99 {np.percentile(ms, 99):.0f} ms)")
            ax.axhline(budget, color="red", ls="--", lw=1, label=f"budget {budget:g} ms")
            ax.set_yscale("log")
            ax.set_xlabel("seconds since start")
            ax.set_ylabel("end-to-end latency, ms (log)")
            ax.set_title(f"{plot}: latency over time")
            ax.legend(loc="upper left", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            path = out / f"latency_{plot.replace(' ', '_')}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    stages = {label: d for r in results for label, d in r.stage_p50.items()}
    if stages:
        # Two panels: the work each stage does (ms, queue excluded: in a batch job the queue wait is
        # backpressure and would dwarf the rest), and each stage's share of the end-to-end time.
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
        labels = list(stages)
        bottom = np.zeros(len(labels))
        shares_bottom = np.zeros(len(labels))
        totals = np.array([sum(np.nan_to_num(stages[lab].get(st, 0.0)) for st in STAGES) for lab in labels])
        colors = dict(zip(STAGES, plt.get_cmap("tab10").colors))  # one colour per stage in both panels
        for stage in STAGES:
            vals = np.nan_to_num(np.array([stages[lab].get(stage, 0.0) for lab in labels]))
            share = 100 * vals / np.maximum(totals, 1e-9)
            ax2.bar(labels, share, bottom=shares_bottom, label=stage, color=colors[stage])
            shares_bottom += share
            if stage == "queue":
                continue
            ax.bar(labels, vals, bottom=bottom, label=stage, color=colors[stage])
            bottom += vals
        ax.set_ylabel("p50 ms per stage (stacked, queue wait excluded)")
        ax.set_title("Work per frame, by stage")
        ax.legend(fontsize=8)
        ax2.set_ylabel("% of the summed stage p50s")
        ax2.set_title("Share of the time, queue wait included")
        ax2.legend(fontsize=8)
        for a in (ax, ax2):
            plt.setp(a.get_xticklabels(), rotation=15, ha="right", fontsize=8)
        fig.tight_layout()
        path = out / "stages.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(results: list[ModeResult], info: dict[str, str], out: Path, budget: float) -> None:
    """``out/bench.md``: the machine, every mode's sections, and the plots."""
    plots = write_plots(results, out, budget)
    md = ["# Inferpath benchmark", "", "## Machine", "",
          md_table(["", ""], [[k, v] for k, v in info.items()]), "",
          "Numbers come from one run with every system side by side; on a shared machine compare "
          "ratios and medians within this report, not absolute fps across reports.", ""]
    for r in results:
        md += [f"## {r.name}", "", "\n\n".join(r.sections), ""]
    if plots:
        md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    (out / "bench.md").write_text("\n".join(md) + "\n")
    progress(f"report written: {out / 'bench.md'} and {len(plots)} plot(s)")
