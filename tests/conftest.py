"""Shared fixtures: the repo's real model and videos, a subprocess runner for the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VIDEOS = REPO / "sample_videos"
VTEST = VIDEOS / "vtest.avi"
MEGAMIND = VIDEOS / "Megamind.avi"
TREE = VIDEOS / "tree.avi"


def stage_ctx(budgets: dict | None = None):
    """A StageContext for driving one stage by hand: fresh metrics, the given budgets, unset events."""
    from pipeline.metrics import Metrics
    from pipeline.policy import LatencyBudget
    from pipeline.stages import StageContext

    return StageContext(Metrics(), LatencyBudget(budgets or {}), threading.Event(), threading.Event(), [],
                        threading.Lock())


def tiny_frame(sid: str, seq: int, captured_ns: int | None = None):
    """A 4x4 frame with a 3x2x2 tensor holding ``seq``: for tests that sequence queues and stages."""
    import time

    import numpy as np

    from pipeline.frame import Frame

    f = Frame(sid, seq, seq / 10, captured_ns or time.monotonic_ns(), np.zeros((4, 4, 3), np.uint8))
    f.tensor = np.full((3, 2, 2), seq, np.float32)
    return f


@pytest.fixture(scope="session")
def model_path() -> Path:
    from pipeline.model import bundled_model_path

    return bundled_model_path()


@pytest.fixture(scope="session")
def spec(model_path):
    from pipeline.model import load_spec

    return load_spec(model_path)


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m pipeline ARGS`` as a user would; returns the completed process."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture
def no_thread_leak():
    """Fails the test if it leaves an Inferpath thread running."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [t.name for t in threading.enumerate()
              if t.ident not in before and t.name.startswith("inferpath-") and t.is_alive()]
    assert not leaked, f"threads still alive: {leaked}"


def pytest_addoption(parser):
    parser.addoption(
        "--require-gpu", action="store_true", default=os.environ.get("INFERPATH_REQUIRE_GPU") == "1",
        help="a skipped gpu-marked test fails instead (scripts/gpu_check.sh: a GPU run that tested nothing "
             "must not pass); also INFERPATH_REQUIRE_GPU=1",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under --require-gpu, turn the skip of a ``gpu``-marked test into a failure naming the reason."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("gpu") and item.config.getoption("--require-gpu"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"GPU test skipped under --require-gpu: {reason}"


class SlowBackend:
    """The real backend with ``delay_ms`` of sleep before each call: a slower device, so tests
    can overload the pipeline (inject it with ``Pipeline(cfg, backend=slow_backend(cfg, ms))``)."""

    def __init__(self, inner, delay_ms: float) -> None:
        self.inner = inner
        self.delay_s = delay_ms / 1000.0
        self.name = inner.name
        self.inputs = inner.inputs
        self.outputs = inner.outputs

    @property
    def max_batch(self) -> int:
        return self.inner.max_batch

    def infer(self, batch):
        import time

        time.sleep(self.delay_s)
        return self.inner.infer(batch)

    def close(self) -> None:
        self.inner.close()


def slow_backend(cfg, delay_ms: float) -> SlowBackend:
    """The backend ``cfg`` names, on its model, slowed by ``delay_ms`` per call."""
    from pipeline.runtime import make_backend, resolve_model

    return SlowBackend(make_backend(cfg, resolve_model(cfg)[0]), delay_ms)
