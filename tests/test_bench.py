"""Smoke test of ``scripts/bench.py``: it runs and prints its batch table.

Speed is never asserted here (a shared CI machine is too noisy, and speed belongs in the
benchmark's report, not in a pass/fail test); only that the three rows come out with positive fps.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_batch_quick_prints_three_rows() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--modes", "batch", "--quick", "--frames", "40"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    fps: dict[str, float] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"\|\s*(bound|naive|pipeline)\s*\|[^|]*\|\s*([0-9.]+)\s*\|", line)
        if m:
            fps.setdefault(m.group(1), float(m.group(2)))
    assert set(fps) == {"bound", "naive", "pipeline"}, proc.stdout
    assert all(v > 0 for v in fps.values()), fps


def _bench_cli(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import bench.cli

    return bench.cli


def test_bench_fails_on_any_error_a_mode_reported_as_a_row(monkeypatch, capsys) -> None:
    """A mode that turned an error into a table row (an engine that fails at inference) and went on
    fails the run, as a mode that raised does; scripts/gpu_check.sh relies on the exit code."""
    cli = _bench_cli(monkeypatch)
    from bench.common import ModeResult

    outcomes = {
        "batch": lambda: ModeResult("batch", sections=["ok"]),
        "precision": lambda: ModeResult("precision", failures=["precision: FP16: RuntimeError: execute failed"]),
    }
    monkeypatch.setattr(cli, "run_mode", lambda mode, args, work: outcomes[mode]())
    assert cli.main(["--modes", "batch"]) == 0
    assert cli.main(["--modes", "batch,precision"]) == 1
    assert "bench: FAILED precision: FP16: RuntimeError: execute failed" in capsys.readouterr().err

    def raises(mode, args, work):
        raise RuntimeError("no engine")

    monkeypatch.setattr(cli, "run_mode", raises)
    assert cli.main(["--modes", "batch"]) == 1
    assert "bench: FAILED batch: RuntimeError: no engine" in capsys.readouterr().err
