"""``inferpath serve [CONFIG] [--host 127.0.0.1] [--port 8080]``: the service (see :mod:`pipeline.service`).

It runs until SIGTERM or Ctrl-C (a second one aborts, as ``run`` does), then prints the summary
and writes ``summary.json`` like ``run``. ``SIGHUP`` re-reads CONFIG: its live keys apply (the
same rule as ``PATCH /api/config``); if any other key changed, nothing is applied and one error
line names the keys that need a restart.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("pipeline")


def serve_config(config: str | None, host: str, port: int, sets: list[str] | None, output: str | None = None):
    """The service's config: CONFIG (or the defaults) with the live view on ``host:port`` (its
    port serves the API and ``/metrics`` too) and no progress bar; ``--set`` last."""
    from pipeline.config import apply_overrides, build_config, normalize_sources, read_yaml

    data = read_yaml(config) if config else {}
    data.setdefault("sources", [])
    pre = ["output.web.enabled=true", f"output.web.host={host}", f"output.web.port={port}",
           "pipeline.progress=false"]
    if output is not None:
        pre.append(f"output.dir={output}")
    normalize_sources(data)
    apply_overrides(data, pre + list(sets or []))
    return build_config(data, str(config) if config else "<command line>")


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.cli import _write_summary_json
    from pipeline.errors import InferpathError
    from pipeline.runtime import Pipeline
    from pipeline.service import ServiceAPI
    from pipeline.web import LiveView

    def load():
        return serve_config(args.config, args.host, args.port, args.set, args.output)

    cfg = load()
    pipe = Pipeline(cfg, serve=True)
    view = next(ob for ob in pipe.observers if isinstance(ob, LiveView))
    view.api = ServiceAPI(pipe, view.token)
    reload = threading.Event()
    done = threading.Event()

    def reloader() -> None:
        while not done.is_set():
            if not reload.wait(0.5):
                continue
            reload.clear()
            try:
                changed = pipe.reload(load())
                log.info("SIGHUP: %s", f"applied {', '.join(changed)}" if changed else "nothing changed")
            except InferpathError as exc:
                log.error("SIGHUP: %s; nothing applied", exc)
            except RuntimeError as exc:
                log.error("SIGHUP: %s", exc)

    def on_stop(signum: int, _frame: Any) -> None:
        pipe.stop(signal.Signals(signum).name)

    def on_hup(_signum: int, _frame: Any) -> None:
        reload.set()  # only a flag here: the reload runs in its own thread

    thread = threading.Thread(target=reloader, name="inferpath-reload", daemon=True)
    thread.start()
    old = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    print(f"inferpath: serving on {view.url.split('?')[0]} (API at /api/streams, /metrics, /healthz, /readyz)",
          file=sys.stderr, flush=True)
    try:
        summary = pipe.run()
    finally:
        done.set()
        for s, h in old.items():
            signal.signal(s, h)
        thread.join(2)
    print(summary.table())
    if cfg.output.jsonl or cfg.output.video:
        _write_summary_json(Path(cfg.output.dir).expanduser() / "summary.json", summary)
    return 1 if summary.errors and summary.stopped_by is None else 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run as a service: add and remove streams over HTTP, live edits, health")
    p.add_argument("config", nargs="?", help="deployment YAML (sources: [] is fine: add them over HTTP)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs the printed token on /api)")
    p.add_argument("--port", type=int, default=8080, help="port of the live view, /metrics and the API (default 8080)")
    p.add_argument("--output", "-o", metavar="DIR", help="output directory (output.dir)")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config key (repeatable)")
    p.set_defaults(func=cmd_serve)


__all__ = ["cmd_serve", "register", "serve_config"]
