"""Start-up and tear-down of ``inferpath run``, step by step (issue 25; docs/bench/startup.md).

    python scripts/bench_startup.py [--rounds 5] [--frames N] [--trees DIR,DIR] [--imports]

Each round runs ``python -m pipeline -q run --source sample_videos/vtest.avi`` (default outputs:
JSON lines + H.264 video) as a whole process, in each tree given (interleaved: tree A, tree B,
tree A, ...), and times its steps from inside: the run is started through a small wrapper that
times named functions of the pipeline as their modules are imported (an import hook, so the
order and place of every import stay the run's own). A step that a tree does not have (a
function renamed or gone) is left out of its row. Times are milliseconds since the process was
spawned (``start``) and durations (``ms``), medians over the rounds; steps may overlap (a thread).

``--imports`` adds one ``-X importtime`` run per tree (1 frame), summed by top-level package: what
each library costs to import, nested imports included in the package that pulls them in first.

Wall-clock time only; compare trees within one run (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDEO = "sample_videos/vtest.avi"

# (label, module, attribute path): each is timed on every call (``first``: its first call only).
STEPS: list[tuple[str, str, str]] = [
    ("config: YAML, flags, validation", "pipeline.cli", "_config_from_args"),
    ("plan (all of it)", "pipeline.runtime.plan", "plan"),
    ("plan: model file and spec", "pipeline.runtime.plan", "resolve_model"),
    ("plan: spec from the ONNX (onnx.load)", "pipeline.model", "load_onnx_metadata"),
    ("plan: ORT session (import onnxruntime + load)", "pipeline.runtime.plan", "make_backend"),
    ("plan: observers", "pipeline.runtime.plan", "from_config"),
    ("engine: open the source", "pipeline.runtime.local", "LocalEngine.open_sources"),
    ("engine: make the sinks (H.264 writer open)", "pipeline.runtime.local", "LocalEngine._make_sinks"),
    ("engine: H.264 writer open (import av + x264)", "pipeline.sinks.video", "_PyAvWriter.__init__"),
    ("engine: build the stages", "pipeline.runtime.local", "build_stages"),
    ("engine: warm-up (start_warm_inference)", "pipeline.runtime.local", "start_warm_inference"),
    ("engine: warm-up call(s)", "pipeline.runtime.build", "warm_up"),
    ("end: join the stages", "pipeline.runtime.local", "join_stages"),
    ("end: JSONL close", "pipeline.sinks.jsonl", "JsonlSink.close"),
    ("end: H.264 close (encoder flush + faststart)", "pipeline.sinks.video", "VideoSink.close"),
    ("end: backend close", "pipeline.runtime.plan", "InferencePlan.close"),
    ("end: summary (table)", "pipeline.runtime.summary", "RunSummary.table"),
    ("end: summary.json", "pipeline.cli", "_write_summary_json"),
]
# Imports timed as steps (cumulative: nested imports inside), the first time each is imported.
IMPORTS = ["pipeline", "pipeline.cli", "pipeline.config", "pipeline.runtime", "onnxruntime", "onnx", "av", "cv2",
           "pydantic", "numpy", "yaml"]

# The wrapper: runs in the child before the CLI. Marks go to the JSON file named by $STARTUP_TRACE.
WRAPPER = r'''
import time; T_MAIN = time.time()
import json, os, sys, threading, importlib.abc
STEPS = json.loads(os.environ["STARTUP_STEPS"]); IMPORTS = set(json.loads(os.environ["STARTUP_IMPORTS"]))
MARKS = []; FIRST = {}
by_module = {}
for label, mod, attr in STEPS:
    by_module.setdefault(mod, []).append((label, attr))

def timed(label, fn):
    def wrapper(*a, **k):
        t0 = time.time()
        try:
            return fn(*a, **k)
        finally:
            MARKS.append((label, t0, time.time(), threading.current_thread().name))
    wrapper.__wrapped__ = fn
    return wrapper

def patch(module):
    for label, attr in by_module.get(module.__name__, []):
        owner, *path = attr.split(".")
        if path:
            obj = getattr(module, owner, None)
            if obj is not None and hasattr(obj, path[0]):
                setattr(obj, path[0], timed(label, getattr(obj, path[0])))
        elif hasattr(module, owner):
            setattr(module, owner, timed(label, getattr(module, owner)))

class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in by_module and name not in IMPORTS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                run = spec.loader.exec_module
                def exec_module(module, run=run, name=name):
                    t0 = time.time()
                    run(module)
                    if name in IMPORTS:
                        MARKS.append(("import " + name, t0, time.time(), threading.current_thread().name))
                    patch(module)
                spec.loader.exec_module = exec_module
                return spec
        return None

sys.meta_path.insert(0, Hook())

def first_write():  # the first and the last frame that reached the JSON lines
    import pipeline.sinks.jsonl as j
    write = j.JsonlSink.write
    def w(self, frame, write=write):
        write(self, frame)
        now = time.time()
        FIRST.setdefault("first frame written (JSONL)", now)
        FIRST["last frame written (JSONL)"] = now
    j.JsonlSink.write = w

def dump():
    with open(os.environ["STARTUP_TRACE"], "w") as fh:
        json.dump({"main": T_MAIN, "marks": MARKS, "points": FIRST, "end": time.time()}, fh)

import atexit; atexit.register(dump)
sys.argv = ["inferpath", *json.loads(os.environ["STARTUP_ARGV"])]
from pipeline import cli
first_write()
code = cli.main()
FIRST["main returned"] = time.time()
getattr(cli, "exit_now", sys.exit)(code)  # as python -m pipeline ends (exit_now: where the tree has it)
'''


def run_once(tree: Path, frames: int | None, out: Path) -> dict:
    """One whole ``inferpath run`` in ``tree``; its marks relative to the spawn."""
    trace = out / "trace.json"
    argv = ["-q", "run", "--source", VIDEO, "-o", str(out / "o"), "--set", "metrics.log_interval_s=0"]
    if frames:
        argv += ["--set", f"sources.0.max_frames={frames}"]
    env = dict(os.environ, STARTUP_TRACE=str(trace), STARTUP_STEPS=json.dumps(STEPS),
               STARTUP_IMPORTS=json.dumps(IMPORTS), STARTUP_ARGV=json.dumps(argv))
    t_spawn = time.time()
    proc = subprocess.run([sys.executable, "-c", WRAPPER], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=600)
    t_exit = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    data = json.loads(trace.read_text())
    frames_out = sum(1 for _ in open(out / "o" / "vtest.jsonl", encoding="utf-8"))
    ms = lambda t: (t - t_spawn) * 1000  # noqa: E731
    steps: dict[str, tuple[float, float]] = {"python start (interpreter, site)": (0.0, ms(data["main"]))}
    for label, t0, t1, _thread in data["marks"]:
        if label not in steps:  # the first call of each (a helper called again later is not start-up)
            steps[label] = (ms(t0), ms(t1) - ms(t0))
    for label, t in data["points"].items():
        steps[label] = (ms(t), 0.0)
    steps["python exit (after main returned)"] = (ms(data["points"]["main returned"]),
                                                  ms(t_exit) - ms(data["points"]["main returned"]))
    steps["whole process"] = (0.0, ms(t_exit))
    return {"steps": steps, "frames": frames_out, "wall_s": t_exit - t_spawn}


def importtime(tree: Path, out: Path) -> dict[str, float]:
    """ms of import by top-level package (``-X importtime``, 1 frame): cumulative time of each
    package's first import at the top of the import tree (what the run pays for it, nested included)."""
    cmd = [sys.executable, "-X", "importtime", "-m", "pipeline", "-q", "run", "--source", VIDEO, "-o",
           str(out / "i"), "--set", "sources.0.max_frames=1", "--set", "metrics.log_interval_s=0"]
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=600)
    totals: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if name.startswith("   "):  # nested inside another import (two-space indents per level)
            continue
        try:
            us = int(cumulative.strip())
        except ValueError:
            continue
        name = name.strip()
        top = ".".join(name.split(".")[:2]) if name.startswith("pipeline.") else name.split(".")[0]
        totals[top] = totals.get(top, 0.0) + us / 1000
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frames", type=int, default=None, help="sources.0.max_frames (default: the whole clip)")
    ap.add_argument("--trees", default=str(ROOT), help="comma-separated checkouts to compare (default: this one)")
    ap.add_argument("--imports", action="store_true", help="add the -X importtime table")
    args = ap.parse_args()
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    results: dict[Path, list[dict]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k, tree in enumerate(trees):
                out = Path(tmp) / f"{k}-{r}"
                out.mkdir()
                res = run_once(tree, args.frames, out)
                results[tree].append(res)
                print(f"round {r + 1} {tree}: {res['frames']} frames, {res['wall_s']:.2f} s, "
                      f"{res['frames'] / res['wall_s']:.1f} fps", file=sys.stderr, flush=True)
        imports = {t: importtime(t, Path(tmp)) for t in trees} if args.imports else {}
    print(f"Rounds: {args.rounds} (interleaved), load average at the end {os.getloadavg()[0]:.2f}\n")
    labels: list[str] = []
    for tree in trees:
        for res in results[tree]:
            for label in res["steps"]:
                if label not in labels:
                    labels.append(label)

    def cell(tree: Path, label: str, which: int) -> str:
        values = [res["steps"][label][which] for res in results[tree] if label in res["steps"]]
        return f"{statistics.median(values):.0f}" if values else "-"

    order = sorted(labels, key=lambda lb: (lb == "whole process", statistics.median(
        [res["steps"][lb][0] for t in trees for res in results[t] if lb in res["steps"]])))
    head = "| step | " + " | ".join(f"{t.name} start ms | {t.name} ms" for t in trees) + " |"
    print(head)
    print("|" + "---|" * (1 + 2 * len(trees)))
    for label in order:
        print(f"| {label} | " + " | ".join(f"{cell(t, label, 0)} | {cell(t, label, 1)}" for t in trees) + " |")
    for tree in trees:
        walls = [res["wall_s"] for res in results[tree]]
        fps = [res["frames"] / res["wall_s"] for res in results[tree]]
        print(f"\n{tree.name}: {results[tree][0]['frames']} frames; wall s per round "
              f"{', '.join(f'{w:.2f}' for w in walls)}; fps median {statistics.median(fps):.1f}")
    if imports:
        print("\nImports by top-level package (ms, -X importtime, cumulative, 1 frame):\n")
        names = []
        for t in trees:
            names += [n for n in imports[t] if n not in names]
        print("| package | " + " | ".join(t.name for t in trees) + " |")
        print("|" + "---|" * (1 + len(trees)))
        for n in names:
            print(f"| {n} | " + " | ".join(f"{imports[t].get(n, 0):.0f}" for t in trees) + " |")
        print("| all | " + " | ".join(f"{sum(imports[t].values()):.0f}" for t in trees) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
