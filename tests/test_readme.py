"""The README's commands and the shipped configs run as written, so neither can rot.

Every ``inferpath`` line of the README's fenced ``bash`` blocks is either run (its placeholder
files swapped for the sample videos, the bundled model or a MOTChallenge file made here, and
bounded to a few frames written under tmp) or skipped for a stated reason: it needs a camera, a
network server, a cluster or a GPU. A command that fits no rule fails the test, so a new README
line is either runnable here or says why not. Every config in ``configs/`` loads and starts.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO, VTEST, run_cli
from tests.rtsp import RtspServer, free_port, rtsp_available

README = REPO / "README.md"
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

# Placeholder files in the README -> what stands in for them here.
PLACEHOLDERS = {
    "video.mp4": str(VTEST),
    "long.mp4": str(VTEST),
    "my_camera.mp4": str(VTEST),
    "clips/*.mp4": str(REPO / "sample_videos" / "*.avi"),
    "yolov8n.onnx": str(REPO / "pipeline" / "models" / "nanodet_coco.onnx"),
}

# Commands that cannot run here, and why. Matched against the command's words.
NEEDS = [
    (lambda w: any(a.startswith(("rtsp://", "webcam:")) for a in w), "a camera"),
    (lambda w: any(a.startswith(("http://", "https://")) for a in w), "an HTTP server"),
    (lambda w: any("cluster." in a for a in w), "a Ray cluster"),
    (lambda w: "build-engine" in w or "backend.name=tensorrt" in w, "an NVIDIA GPU"),
    (lambda w: w[1] in ("quantize", "convert") or "model.int8.onnx" in w,
     "minutes of calibration (tests/test_precision_cli.py runs quantize and convert)"),
    (lambda w: w[1] == "run" and any(Path(a).name in ("live.yaml", "multistream.yaml") for a in w),
     "a camera (test_config_starts runs it against a test RTSP server)"),
]


def readme_commands() -> list[str]:
    """Every ``inferpath ...`` line of the README's fenced bash blocks, comments stripped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    cmds = []
    for block in blocks:
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "inferpath":
                cmds.append(shlex.join(words))
    return cmds


def skip_reason(words: list[str]) -> str | None:
    for needs, why in NEEDS:
        if needs(words):
            return why
    return None


def _mot_file(path: Path) -> Path:
    """Three boxes walking right over 20 frames, MOTChallenge detections."""
    path.write_text("".join(f"{f},-1,{100 + 5 * f + 60 * k},{50 + 40 * k},40,80,0.9\n"
                            for f in range(1, 21) for k in range(3)))
    return path


def runnable(words: list[str], tmp: Path) -> list[str]:
    """The command's arguments with placeholders swapped, its outputs under ``tmp``, a few frames only."""
    args = []
    it = iter(words[1:])
    for a in it:
        if a in PLACEHOLDERS:
            a = PLACEHOLDERS[a]
        elif a == "det.txt":
            a = str(_mot_file(tmp / "det.txt"))
        elif a in ("--output", "-o"):
            args += [a, str(tmp / Path(next(it)).name)]
            continue
        elif not a.startswith("-") and a.endswith((".mp4", ".avi", ".onnx", ".txt", ".yaml")) and "=" not in a:
            assert (REPO / a).exists() or a == "result.txt", f"README names {a}, which is not in the repo"
            if a == "result.txt":
                a = str(tmp / a)
        args.append(a)
    if args[0] == "run":
        args = [a if not a.startswith("sources.0.max_frames=") else "sources.0.max_frames=3" for a in args]
        args += ["--set", "sources.0.max_frames=3", "--set", f"output.dir={tmp / 'out'}"]
    return args


COMMANDS = readme_commands()


def test_readme_has_commands():
    assert any(c.startswith("inferpath run configs/counting.yaml") for c in COMMANDS), COMMANDS
    runs = [c for c in COMMANDS if skip_reason(shlex.split(c)) is None]
    assert len(runs) >= 8, runs


@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command_runs(cmd, tmp_path):
    words = shlex.split(cmd)
    why = skip_reason(words)
    if why:
        pytest.skip(f"needs {why}")
    proc = run_cli(*runnable(words, tmp_path), timeout=240)
    assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr


def _config_sources(path: Path) -> list[str]:
    import yaml

    return [s["uri"] for s in yaml.safe_load(path.read_text())["sources"]]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_loads(config):
    proc = run_cli("config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert "sources" in proc.stdout


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_starts(config, tmp_path):
    """Each config runs a few frames per source; its cameras are a test RTSP server on 127.0.0.1."""
    uris = _config_sources(config)
    cameras = [i for i, u in enumerate(uris) if u.startswith("rtsp://")]
    if cameras and rtsp_available():
        pytest.skip(rtsp_available())
    sets = [f"output.dir={tmp_path / 'out'}", f"metrics.prometheus.port={free_port()}",
            "output.web.enabled=false", "pipeline.duration_s=60"]
    sets += [f"sources.{i}.max_frames=3" for i in range(len(uris))]
    with RtspServer(VTEST) if cameras else contextlib.nullcontext() as server:
        sets += [f"sources.{i}.uri={server.url}" for i in cameras]
        proc = run_cli("run", str(config), *[a for s in sets for a in ("--set", s)], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "error" not in proc.stderr.lower().replace("errors", ""), proc.stderr[-3000:]

