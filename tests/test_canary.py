"""The FP32 canary (pipeline/canary.py): real model, real video, real threads.

An INT8 model made here from the bundled NanoDet (8 calibration frames: seconds), a run on
``vtest.avi`` with the canary sampling often, and the gate's own functions run again on the
frames it sampled; a damaged copy of the model (10 % noise on every weight tensor) and its
warning; the configuration's one-line refusals; ``quantize --calib-frames``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import precision as prec
from pipeline.canary import Canary, canary_settings
from pipeline.cli import main
from pipeline.config import build_config
from pipeline.errors import ConfigError
from pipeline.fileio import sha256_file
from pipeline.model import bundled_model_path
from pipeline.precision_cli import run_backends
from pipeline.runtime import Pipeline
from pipeline.web import render_page
from tests.rtsp import free_port

ROOT = Path(__file__).resolve().parents[1]
VTEST = ROOT / "sample_videos" / "vtest.avi"
sys.path.insert(0, str(ROOT / "scripts"))
from bench_canary import damage_weights  # noqa: E402  (the bench's own damage, so test and bench agree)

pytestmark = pytest.mark.skipif(not (bundled_model_path().exists() and VTEST.exists()),
                                reason="bundled model or sample video missing")


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory) -> Path:
    """An INT8 model of the bundled one, calibrated on 8 frames of vtest.avi (its metadata names the FP32 one)."""
    out = tmp_path_factory.mktemp("canary") / "nanodet.int8.onnx"
    frames, _ = prec.read_frames(VTEST, 8)
    prec.quantize_int8(bundled_model_path(), frames, out)
    return out


def _cfg(tmp_path: Path, model: Path, **canary) -> dict:
    return {
        "sources": [{"uri": str(VTEST), "id": "cam", "max_frames": 120}],
        "model": {"path": str(model), "canary": {"every_s": 0.05, "max_cpu_share": 1.0, "window": 100, **canary}},
        "backend": {"max_batch": 1},
        "output": {"dir": str(tmp_path / "out"), "video": False, "jsonl": False,
                   "web": {"enabled": True, "port": 0}},
        "metrics": {"log_interval_s": 0, "prometheus": {"enabled": True, "port": free_port()}},
        "pipeline": {"progress": False},
    }


def test_metadata_names_the_fp32_model_and_the_canary_finds_it(int8_model):
    rec = prec.made_from(int8_model)
    assert rec["name"] == bundled_model_path().name and Path(rec["path"]) == bundled_model_path().resolve()
    assert rec["sha256"] == sha256_file(bundled_model_path())
    settings = canary_settings(build_config(_cfg(Path("/tmp"), int8_model)), int8_model)
    assert settings.reference == bundled_model_path().resolve() and settings.precision == "int8"


def test_canary_agreement_equals_the_gates_on_the_same_frames(tmp_path, int8_model, no_thread_leak):
    cfg = build_config(_cfg(tmp_path, int8_model))
    pipe = Pipeline(cfg)
    summary = pipe.run(progress=False)
    canary = next(ob for ob in pipe.observers if isinstance(ob, Canary))
    window = canary.window("cam")
    report = canary.report("cam")
    assert len(window) >= 3 and report is not None and report.found_judged > 0

    # The gate's own functions on the same frames, decoded from the file again.
    frames, seqs = prec.read_frames_at(VTEST, [c.seq for c in window])
    assert seqs == [c.seq for c in window]
    floor = prec.score_floor(cfg)
    with (prec.Detector(cfg, bundled_model_path(), backends=run_backends()) as fp32,
          prec.Detector(cfg, int8_model, backends=run_backends()) as int8):
        ref, cand = fp32.detect(frames, floor), int8.detect(frames, floor)
    for c, r, d in zip(window, ref, cand):
        assert np.array_equal(c.reference.xyxy, r.xyxy) and np.array_equal(c.reference.confidence, r.confidence)
        assert np.array_equal(c.deployed.xyxy, d.xyxy) and np.array_equal(c.deployed.class_id, d.class_id)
    gate = prec.judge(ref, cand, cfg)
    assert (report.found, report.kept, report.map50, report.found_judged) == \
        (gate.found, gate.kept, gate.map50, gate.found_judged)
    assert 0.9 <= gate.found <= 1.0  # a sound INT8 model agrees as the gate said it does

    # summary, Prometheus, live view: the same numbers
    s = summary.sources[0].to_dict()["canary"]
    assert s["frames"] == len(window) and s["agreement"] == gate.found and s["map50"] == gate.map50
    assert s["boxes"] == gate.found_judged and s["warnings"] == 0 and 0 < s["cpu_s"] < 60
    reg = pipe.plan.observers.prometheus.registry
    assert reg.get_sample_value("inferpath_canary_agreement", {"source": "cam"}) == gate.found
    assert reg.get_sample_value("inferpath_canary_frames_total", {"source": "cam"}) == len(window)
    view = next(ob for ob in pipe.observers if type(ob).__name__ == "LiveView")
    row = view.stats()["streams"][0]
    assert row["canary_agreement"] == gate.found and row["canary_frames"] == len(window)
    assert f"agreement {gate.found:.3f}, {len(window)} frames" in render_page(view)
    assert not canary.niced  # a batch job over files: normal priority, under max_cpu_share


def test_canary_is_niced_with_a_live_stream(tmp_path, int8_model):
    data = _cfg(tmp_path, int8_model)
    data["sources"] = [{"uri": str(VTEST), "id": "cam", "max_frames": 20, "realtime": True, "speed": 4.0}]
    pipe = Pipeline(build_config(data))
    summary = pipe.run(progress=False)
    canary = next(ob for ob in pipe.observers if isinstance(ob, Canary))
    assert canary.low_priority and canary.niced == (sys.platform == "linux")  # a frame's budget comes first
    assert summary.sources[0].to_dict()["canary"]["frames"] >= 1


def test_damaged_model_warns_once_and_saves_frames_for_recalibration(tmp_path, int8_model):
    damaged = tmp_path / "nanodet.int8.damaged.onnx"
    assert damage_weights(int8_model, damaged, rel=0.1, seed=0) > 10
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(VTEST), "--model", str(damaged),
         "--set", f"model.canary.model={bundled_model_path()}", "--set", "model.canary.every_s=0.1",
         "--set", "model.canary.max_cpu_share=1.0", "--set", "model.canary.max_saved=5",
         "--set", "output.video=false", "--set", f"output.dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if "canary: the INT8 model finds" in line]
    assert len(warnings) == 1, proc.stderr[-3000:]  # once per crossing, not once per frame
    assert "below the gate's 0.9" in warnings[0]
    canary = json.loads((out / "summary.json").read_text())["sources"][0]["canary"]
    assert canary["frames"] >= 3 and canary["agreement"] < 0.9 and canary["warnings"] == 1
    saved = sorted((out / "canary").glob("*.png"))
    assert canary["saved"] == len(saved) == 5  # bounded by model.canary.max_saved
    lines = [json.loads(x) for x in (out / "canary" / "canary.jsonl").read_text().splitlines()]
    assert [x["file"] for x in lines] == [p.name for p in saved] and all(x["why"] for x in lines)
    assert cv2.imread(str(saved[0])).shape == (576, 768, 3)

    # the saved frames are calibration frames for the next quantization
    rc = main(["quantize", "--calib-frames", str(out / "canary"), "--gate-video", str(VTEST), "--gate-frames", "8",
               "-o", str(tmp_path / "requantized.onnx")])
    assert rc == 0 and prec.model_precision(tmp_path / "requantized.onnx") == "int8"


def test_fp32_model_says_the_canary_is_off(tmp_path, caplog):
    cfg = build_config(_cfg(tmp_path, bundled_model_path()))
    with caplog.at_level(logging.WARNING, logger="pipeline.canary"):
        pipe = Pipeline(cfg)
    try:
        assert not any(isinstance(ob, Canary) for ob in pipe.observers)
        lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.canary"]
        assert len(lines) == 1 and "is FP32" in lines[0] and "it is off" in lines[0]
    finally:
        pipe.plan.close()


def test_bad_canary_models_are_one_line(tmp_path, int8_model, capsys):
    plain = tmp_path / "plain.fp16.onnx"  # an FP16 model whose metadata names no source
    prec.save_model(prec.convert_fp16(bundled_model_path()), plain)
    other = tmp_path / "elsewhere" / "nanodet.int8.onnx"  # names a source whose file changed since
    proto = prec.load_model(int8_model)
    fake = tmp_path / "elsewhere" / bundled_model_path().name
    fake.parent.mkdir()
    fake.write_bytes(b"not the same model")
    prec.set_metadata(proto, {prec.SOURCE_KEY: json.dumps({"path": str(fake), "name": fake.name, "sha256": "0" * 64})})
    prec.save_model(proto, other)
    cases = [
        (int8_model, {"model": str(tmp_path / "missing.onnx")}, "model.canary.model: ", "model file not found"),
        (int8_model, {"model": str(int8_model)}, "model.canary.model: ", "is int8; the canary needs the FP32 model"),
        (int8_model, {"model": str(VTEST)}, "model.canary.model: ", "cannot parse as ONNX"),
        (plain, {}, "model.canary.model: plain.fp16.onnx does not say which FP32 model", "set model.canary.model"),
        (other, {}, f"model.canary.model: {fake} is not the model", "sha256 differs"),
    ]
    for model, canary, start, end in cases:
        args = ["run", str(VTEST), "--model", str(model), "--set", "output.video=false",
                "--set", f"output.dir={tmp_path / 'out'}", "--set", "model.canary.every_s=10"]
        args += [x for k, v in canary.items() for x in ("--set", f"model.canary.{k}={v}")]
        rc = main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0 and len(err) == 1 and "Traceback" not in err[0], err
        assert start in err[0] and end in err[0], err[0]
    with pytest.raises(ConfigError, match="model.canary: unknown key 'evry_s'"):
        build_config({"model": {"canary": {"evry_s": 1}}})


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "no such directory"),
    (lambda d: d, "no images (.png, .jpg, .jpeg, .bmp) in it"),
])
def test_calib_frames_missing_or_empty_is_one_line(tmp_path, capsys, make, message):
    (tmp_path / "notes.txt").write_text("not an image")
    rc = main(["quantize", "--calib-frames", str(make(tmp_path)), "-o", str(tmp_path / "q.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].endswith(message) and "--calib-frames: " in err[0]
    assert not (tmp_path / "q.onnx").exists()


def test_calib_frames_added_to_the_video_or_alone(tmp_path, capsys):
    frames, _ = prec.read_frames(VTEST, 16, 0.5)
    d = tmp_path / "frames"
    d.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(d / f"f{i:02d}.png"), frame)
    rc = main(["quantize", "--calib", str(VTEST), "--calib-frames", str(d), "--frames", "8", "--gate-frames", "8",
               "-o", str(tmp_path / "q.onnx")])
    err = capsys.readouterr().err
    assert rc == 0 and f"calibrating on 8 frames of {VTEST} and 16 images of {d}" in err
    assert prec.model_precision(tmp_path / "q.onnx") == "int8"
    # alone: half the images calibrate, the others are the gate's held-out frames
    rc = main(["quantize", "--calib-frames", str(d), "--gate-frames", "8", "-o", str(tmp_path / "alone.onnx")])
    err = capsys.readouterr().err
    assert rc == 0 and f"calibrating on 8 images of {d} (8 others held out for the gate)" in err
    assert prec.model_precision(tmp_path / "alone.onnx") == "int8"
