"""rich vs tqdm for the run's progress bar: import time, cost per call, and what each writes to a
terminal (a pty of 80 or 40 columns) and to a pipe. The numbers of docs/bench/progress.md.

    python scripts/bench_progress.py            # all
    python scripts/bench_progress.py display    # one part: imports | calls | display
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import statistics
import struct
import subprocess
import sys
import termios
import time

TOTAL, TICKS, DT = 600, 150, 0.02  # a 3 s "run": 2 frames every 20 ms
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# ---- what each variant draws (run in a child process with stderr on a pty or a pipe) -----------
def hand_written() -> None:
    """The hand-written bar rich replaced: '\\r' + the line, every 0.5 s, when stderr is a terminal."""
    t0, last, drawn = time.monotonic(), 0.0, False
    for i in range(1, TICKS + 1):
        now = time.monotonic()
        if sys.stderr.isatty() and now - last >= 0.5:
            last, done = now, 2 * i
            bar = f"[{'#' * int(done / TOTAL * 30):<30}] {done}/{TOTAL} "
            sys.stderr.write(f"\r{bar}{done / (now - t0):5.1f} fps, 3 dropped ")
            sys.stderr.flush()
            drawn = True
        time.sleep(DT)
    if drawn:
        sys.stderr.write("\n")


def tqdm_default() -> None:
    from tqdm import tqdm

    with tqdm(total=TOTAL) as bar:
        for _ in range(TICKS):
            bar.update(2)
            time.sleep(DT)


def tqdm_configured() -> None:
    from tqdm import tqdm

    bar = tqdm(total=TOTAL, disable=None, mininterval=0.5, smoothing=0, dynamic_ncols=True,
               bar_format="{bar} {n}/{total} {postfix}")
    t0 = time.monotonic()
    for i in range(1, TICKS + 1):
        bar.set_postfix_str(f"{2 * i / (time.monotonic() - t0):5.1f} fps, 3 dropped", refresh=False)
        bar.update(2)
        time.sleep(DT)
    bar.close()


def rich_default() -> None:
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("run", total=TOTAL)
        for _ in range(TICKS):
            progress.update(task, advance=2)
            time.sleep(DT)


def run_progress() -> None:
    """pipeline.progress.RunProgress (rich), fed by a real Metrics."""
    from pipeline.metrics import Metrics
    from pipeline.progress import RunProgress

    m = Metrics()
    m.drop("a", "late@inference", 3)
    progress = RunProgress(m, TOTAL, live=False, show=True, log_interval_s=0)
    for _ in range(TICKS):
        for _ in range(2):
            m.frame_out("a", [])
        progress.tick()
        time.sleep(DT)
    progress.close()


VARIANTS = {f.__name__: f for f in (hand_written, tqdm_default, tqdm_configured, rich_default, run_progress)}


def _child(variant: str, stderr: int | None, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--draw", variant], stderr=stderr,
                            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)


def on_pty(variant: str, columns: int) -> bytes:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "NO_COLOR")}
    child = _child(variant, slave, dict(env, TERM="xterm-256color"))
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    child.wait()
    os.close(master)
    return out


def on_pipe(variant: str) -> bytes:
    child = _child(variant, subprocess.PIPE, dict(os.environ, TERM="xterm-256color"))
    out = child.stderr.read()
    child.wait()
    return out


def describe(raw: bytes) -> str:
    text = ANSI.sub("", raw.decode("utf-8", "replace"))
    widest = max((len(seg) for line in text.split("\n") for seg in line.split("\r")), default=0)
    cr, esc = raw.count(b"\r"), raw.count(b"\x1b")
    return f"{len(raw):5d} B, {cr:2d} CR, {esc:3d} ESC, widest line {widest:3d} columns"


def display() -> None:
    print("what each variant writes in a 3 s run (a redraw every 0.5 s where it chooses):")
    for name in VARIANTS:
        print(f"  {name:16s} pipe   : {describe(on_pipe(name))}")
        for columns in (80, 40):
            print(f"  {name:16s} pty {columns:2d} : {describe(on_pty(name, columns))}")


# ---- import time ---------------------------------------------------------------------------------
IMPORTS = {"tqdm": "import tqdm", "rich (progress, table, console)": "import rich.progress, rich.table, rich.console",
           "rich (table, console)": "import rich.table, rich.console"}


def imports(runs: int = 15) -> None:
    print(f"import time, median (min) of {runs} fresh interpreters:")
    for before_name, before in (("fresh python", "pass"), ("after pipeline.runtime", "import pipeline.runtime")):
        for name, stmt in IMPORTS.items():
            code = f"{before}\nimport time\nt = time.perf_counter()\n{stmt}\nprint(time.perf_counter() - t)"
            ts = [1000 * float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                              check=True).stdout) for _ in range(runs)]
            print(f"  {before_name:24s} {name:32s} {statistics.median(ts):5.1f} ms ({min(ts):5.1f})")


# ---- cost per call --------------------------------------------------------------------------------
def _per_call(fn, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t) / n * 1e6


def calls() -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn
    from tqdm import tqdm

    bar = tqdm(total=10**9, file=io.StringIO(), mininterval=3600, smoothing=0, ncols=80,
               bar_format="{bar} {n}/{total} {postfix}")

    def tqdm_update(i: int) -> None:
        bar.n = i
        bar.set_postfix_str(f"{i / 3:5.1f} fps, 3 dropped", refresh=False)
        bar.update(0)

    def tqdm_draw(i: int) -> None:
        tqdm_update(i)
        bar.refresh()

    progress = Progress(BarColumn(bar_width=30), TextColumn("{task.description}"), auto_refresh=False,
                        console=Console(file=io.StringIO(), force_terminal=True, width=80),
                        redirect_stdout=False, redirect_stderr=False)
    progress.start()
    task = progress.add_task("", total=10**9)

    def rich_update(i: int) -> None:
        progress.update(task, completed=i, description=f"{i}/{10**9} {i / 3:5.1f} fps, 3 dropped")

    def rich_draw(i: int) -> None:
        rich_update(i)
        progress.refresh()

    sink = io.StringIO()

    def hand_draw(i: int) -> None:
        sink.write(f"\r[{'#' * int(i / 10**9 * 30):<30}] {i}/{10**9} {i / 3:5.1f} fps, 3 dropped ")

    print("cost per call (best of 3), into an in-memory 80-column terminal:")
    for name, update, draw in (("hand-written", None, hand_draw), ("tqdm", tqdm_update, tqdm_draw),
                               ("rich", rich_update, rich_draw)):
        up = min(_per_call(update, 100_000) for _ in range(3)) if update else 0.0
        dr = min(_per_call(draw, 5_000) for _ in range(3))
        print(f"  {name:14s} update without redraw {up:6.2f} us, redraw {dr:7.1f} us")
    progress.stop()
    bar.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--draw"]:
        VARIANTS[sys.argv[2]]()
    else:
        parts = {"imports": imports, "calls": calls, "display": display}
        for part in sys.argv[1:] or parts:
            parts[part]()
