"""Events out under a stalled broker, and what event clips cost (docs/bench/events.md).

1. ``stall``: configs/counting.yaml on vtest.avi (795 frames, JSON lines, no video), without
   events and with an MQTT target (QoS 1) on a local mosquitto that accepts the connection and
   then stops answering (SIGSTOP) for ``--stall-s`` seconds, one run after the other, in both
   forms: a batch job (as fast as it goes) and a live stream (the file in real time at
   ``--speed``). Reported: fps, e2e p50/p99, the events delivered after the broker came back.
2. ``clips``: the same config with ``output.clips`` (pre 5 s, post 5 s) on line events and on
   line and zone events (a clip open most of the time): CPU per frame of the clip sink's parts,
   read from the sink itself.

Run under the heavy lock on a shared machine::

    flock /tmp/heavy.lock python scripts/bench_events.py
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import build_config  # noqa: E402
from pipeline.runtime import Pipeline  # noqa: E402
from tests.brokers import Broker, Subscriber  # noqa: E402

VTEST = REPO / "sample_videos" / "vtest.avi"


def counting(out: Path, frames: int, **source) -> dict:
    raw = yaml.safe_load((REPO / "configs" / "counting.yaml").read_text())
    raw["sources"] = [{"uri": str(VTEST), "id": "vtest", "max_frames": frames, **source}]
    raw["output"] = {"dir": str(out), "video": False}
    raw["pipeline"] = {"progress": False}
    raw["metrics"] = {"log_interval_s": 0}
    return raw


def jsonl_events(out: Path) -> list[dict]:
    events = []
    for line in (out / "vtest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        events += [{**e, "seq": rec["seq"]} for e in rec.get("events", [])]
    return events


def stall_run(raw: dict, broker: Broker, sub: Subscriber | None, stall_s: float) -> dict:
    """One run; with ``sub``, the broker is stopped once the first event has arrived (or after 1 s)
    for ``stall_s`` seconds."""
    t: dict = {}

    def stall() -> None:
        start = time.monotonic()
        while not sub.payloads() and time.monotonic() - start < 5 and not t.get("done"):
            time.sleep(0.02)
        broker.pause()
        t["paused"] = time.monotonic()
        time.sleep(stall_s)
        broker.resume()
        t["resumed"] = time.monotonic()

    staller = threading.Thread(target=stall, daemon=True) if sub is not None else None
    if staller is not None:
        staller.start()
    summary = Pipeline(build_config(raw)).run(progress=False)
    t["done"] = True
    if staller is not None:
        staller.join(stall_s + 10)
    s = summary.sources[0]
    # fps: frames over the span from the first frame out to the last (the wait at the end for
    # undelivered events, drain_s, is not the pipeline's rate)
    row = {"fps": s.fps, "wall_s": summary.wall_s, "p50": summary.stages_ms["e2e"][0], "p99": summary.stages_ms["e2e"][2],
           "frames": s.frames_out, "drops": sum(s.drops.values()), "events": dict(s.events)}
    if sub is not None:
        time.sleep(1.0)
        out = Path(raw["output"]["dir"])
        produced = jsonl_events(out)
        got = {p["id"] for p in sub.payloads()}
        row["produced"] = len(produced)
        row["delivered"] = len(got & {f"vtest-{e['seq']}-{i}" for i, e in _indexed(produced)})
        row["stalled"] = "resumed" in t
    return row


def _indexed(events: list[dict]):
    """(index within its frame, event): the n of the ``<source>-<seq>-<n>`` message id."""
    seen: dict[int, int] = {}
    for e in events:
        n = seen.get(e["seq"], 0)
        seen[e["seq"]] = n + 1
        yield n, e


def bench_stall(tmp: Path, stall_s: float, speed: float, reps: int, forms: list[str]) -> list[str]:
    lines = ["| form | events | fps | e2e p50 ms | e2e p99 ms | frames out | drops | run s | events delivered |",
             "|---|---|---|---|---|---|---|---|---|"]
    with Broker(tmp) as broker:
        for form, extra in (("batch", {}), ("live", {"realtime": True, "speed": speed})):
            if form not in forms:
                continue
            rows: dict[bool, list[dict]] = {False: [], True: []}
            for rep, with_events in [(r, e) for r in range(reps) for e in (False, True)]:
                out = tmp / f"{form}-{with_events}-{rep}"
                raw = counting(out, 795, **extra)
                sub = None
                if with_events:
                    raw["output"]["events"] = [{"type": "mqtt", "url": f"mqtt://127.0.0.1:{broker.port}", "qos": 1,
                                                "drain_s": 30.0}]
                    sub = Subscriber(broker.port)
                try:
                    r = stall_run(raw, broker, sub, stall_s)
                    rows[with_events].append(r)
                finally:
                    if sub is not None:
                        sub.close()
                delivered = (f"{r['delivered']} of {r['produced']}" + ("" if r["stalled"] else " (no stall!)")
                             if with_events else "-")
                lines.append(f"| {form} | {'MQTT, broker stopped ' + format(stall_s, 'g') + ' s' if with_events else 'none'}"
                             f" | {r['fps']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['frames']} | {r['drops']} "
                             f"| {r['wall_s']:.1f} | {delivered} |")
                print(lines[-1], flush=True)
            med = {k: {m: float(np.median([r[m] for r in v])) for m in ("fps", "p50", "p99")} for k, v in rows.items()}
            base, ev = med[False], med[True]
            lines.append(f"| {form} | events / none, medians of {reps} | {ev['fps'] / base['fps']:.3f} "
                         f"| {ev['p50'] / base['p50']:.3f} | {ev['p99'] / base['p99']:.3f} | | | | |")
            print(lines[-1], flush=True)
    return lines


def bench_clips(tmp: Path, frames: int) -> list[str]:
    lines = ["| clips on | clips written | sink thread ms | draw + encode ms | ring + clip files ms | clip MB |",
             "|---|---|---|---|---|---|"]
    for on in (["line"], ["line", "zone"]):
        out = tmp / f"clips-{'-'.join(on)}"
        raw = counting(out, frames)
        raw["output"]["clips"] = {"pre_s": 5.0, "post_s": 5.0, "on": on}
        pipe = Pipeline(build_config(raw))
        pipe.run(progress=False)
        (sink,) = [s for s in pipe.sinks["vtest"] if s.name == "clips"]
        per = {k: v / 1e6 / sink.frames for k, v in sink.cpu_ns.items()}
        mb = sum(p.stat().st_size for p in (out / "clips").rglob("*.mp4")) / 1e6
        lines.append(f"| {', '.join(on)} | {sink.written} | {per['sink']:.3f} | {per['encode']:.3f} "
                     f"| {per['clip']:.3f} | {mb:.1f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="stall,clips", help="stall, clips or both (default)")
    ap.add_argument("--stall-s", type=float, default=10.0, help="how long the broker stops answering")
    ap.add_argument("--speed", type=float, default=3.0, help="live form: vtest.avi (10 fps) played this much faster")
    ap.add_argument("--clip-frames", type=int, default=795)
    ap.add_argument("--reps", type=int, default=1, help="stall: runs of each, alternating (medians)")
    ap.add_argument("--forms", default="batch,live", help="stall: batch, live or both (default)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        report = []
        if "stall" in parts:
            report += ["## A broker that stops answering", "", *bench_stall(tmp, args.stall_s, args.speed, args.reps, args.forms.split(",")), ""]
        if "clips" in parts:
            report += ["## Event clips, CPU per 768x576 frame", "", *bench_clips(tmp, args.clip_frames), ""]
    print("\n".join(report))


if __name__ == "__main__":
    main()
