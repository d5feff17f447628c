"""The display sink in a real window, on a virtual X server (Xvfb) started by the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import MEGAMIND, REPO

pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None,
                                reason="Xvfb not installed (scripts/install_system_deps.sh installs it)")


@pytest.fixture
def xdisplay():
    for number in range(90 + os.getpid() % 50, 200):
        if not os.path.exists(f"/tmp/.X11-unix/X{number}") and not os.path.exists(f"/tmp/.X{number}-lock"):
            break
    proc = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(f"/tmp/.X11-unix/X{number}"):
        assert proc.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
        time.sleep(0.05)
    yield f":{number}"
    proc.terminate()
    proc.wait(10)


def test_display_window_shows_annotated_frames(tmp_path, xdisplay):
    from PIL import ImageGrab

    env = dict(os.environ, DISPLAY=xdisplay)
    env.pop("WAYLAND_DISPLAY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--source", str(MEGAMIND), "--realtime", "--duration", "6",
         "--display", "--no-video", "-o", str(tmp_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    boxes_seen = False
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline and not boxes_seen:
        time.sleep(0.3)
        shot = np.asarray(ImageGrab.grab(xdisplay=xdisplay).convert("RGB")).astype(int)
        # Person boxes are drawn in the palette's first colour, (56, 56, 255) BGR = red in RGB.
        red = (shot[..., 0] > 200) & (shot[..., 1] < 90) & (shot[..., 2] < 90)
        boxes_seen = int(red.sum()) > 200
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert "display disabled" not in stderr and "Traceback" not in stderr
    assert boxes_seen, "no window with the film and its red person boxes appeared on the virtual display"
