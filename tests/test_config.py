from __future__ import annotations

import pytest

from pipeline.config import build_config, load_config
from pipeline.errors import ConfigError


@pytest.mark.parametrize(
    "data, message",
    [
        ({"modle": {}}, "unknown key 'modle'; expected one of sources, model"),
        ({"model": {"conf_threshold": "high"}}, "model.conf_threshold: expected a number, got 'high'"),
        ({"model": {"conf_threshold": 1.5}}, "model.conf_threshold: expected a number between 0 and 1"),
        ({"model": {"path": 3}}, "model.path: expected a string or null, got 3"),
        ({"backend": {"max_batch": 0}}, "backend.max_batch: expected an integer 1-256 or auto, got 0"),
        ({"backend": {"max_batch": 2.5}}, "backend.max_batch: expected an integer or one of 'auto', got 2.5"),
        ({"backend": {"tensorrt": {"precision": "int4"}}}, "backend.tensorrt.precision: expected one of 'auto'"),
        ({"sources": [{"uri": "a.avi", "realtme": True}]}, "sources[0]: unknown key 'realtme'"),
        ({"sources": [{"id": "cam"}]}, "sources[0]: missing required key 'uri'"),
        ({"sources": [{"uri": "a.avi", "realtime": "yes"}]}, "sources[0].realtime: expected true/false"),
        ({"sources": [{"uri": "a", "id": "x"}, {"uri": "b", "id": "x"}]}, "duplicate id 'x'"),
        ({"pipeline": {"latency_budget_ms": -5}}, "pipeline.latency_budget_ms: expected a positive number"),
        ({"sources": [{"uri": "a.avi", "weight": 0}]}, "sources[0].weight: expected a positive number, got 0"),
        ({"sources": [{"uri": "a.avi", "weight": -1.5}]}, "sources[0].weight: expected a positive number"),
        ({"sources": [{"uri": "a.avi", "weight": "high"}]}, "sources[0].weight: expected a number, got 'high'"),
        ({"output": []}, "output: expected a mapping"),
        ({"metrics": {"prometheus": {"port": 70000}}}, "metrics.prometheus.port: expected a TCP port"),
    ],
)
def test_validation_table(data, message):
    with pytest.raises(ConfigError) as err:
        build_config(data, "deploy.yaml")
    assert str(err.value).startswith("deploy.yaml: ")
    assert message in str(err.value)


def test_defaults_and_shorthands():
    cfg = build_config({"sources": ["a.avi", {"uri": "rtsp://cam/1", "transport": "udp"}]})
    assert [s.uri for s in cfg.sources] == ["a.avi", "rtsp://cam/1"]
    assert cfg.sources[1].transport == "udp"
    assert cfg.model.path is None and cfg.backend.name == "onnxruntime" and cfg.metrics.prometheus.host == "127.0.0.1"
    assert build_config({"source": "b.avi"}).sources[0].uri == "b.avi"
    assert cfg.sources[0].weight == 1.0  # every stream an equal share unless told otherwise
    assert build_config({"sources": [{"uri": "a.avi", "weight": 0.25}]}).sources[0].weight == 0.25


def test_config_is_frozen():
    cfg = build_config({})
    with pytest.raises(AttributeError):
        cfg.model.conf_threshold = 0.1  # type: ignore[misc]


def test_overrides_are_validated(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("sources: [a.avi]\nmodel: {conf_threshold: 0.4}\n")
    cfg = load_config(path, ["model.conf_threshold=0.6", "backend.max_batch=4", "sources.0.realtime=true"])
    assert cfg.model.conf_threshold == 0.6 and cfg.backend.max_batch == 4 and cfg.sources[0].realtime
    with pytest.raises(ConfigError, match="model.iou_treshold|unknown key 'iou_treshold'"):
        load_config(path, ["model.iou_treshold=0.3"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(path, ["model.conf_threshold"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: [unclosed\n", "malformed YAML at line"),
        ("- just\n- a list\n", "expected a mapping of sections"),
        ("model: !!python/object/apply:os.system ['true']\n", "malformed YAML"),  # safe_load refuses tags
    ],
)
def test_bad_yaml_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert configs, "configs/ is empty"
    for path in configs:
        load_config(path)


# ---- ranges, duplicates, relative paths, positional sources (issue 10) ------------------------------
@pytest.mark.parametrize("flag, message", [
    (["--max-batch", "100000"], "backend.max_batch: expected an integer 1-256 or auto, got 100000"),
    (["--duration", "-5"], "pipeline.duration_s: expected a number of seconds > 0, got -5.0"),
    (["--set", "backend.batch_timeout_ms=-1"], "backend.batch_timeout_ms: expected a number >= 0"),
    (["--set", "metrics.log_interval_s=-3"], "metrics.log_interval_s: expected a number of seconds (0 = off) >= 0"),
    (["--set", "backend.onnxruntime.intra_op_threads=-4"], "intra_op_threads: expected an integer (0 = all cores) >= 0"),
    (["--set", "backend.onnxruntime.intra_op_threads=1000"], "got 1000"),
    (["--set", "model.classes=[-1]"], "model.classes[0]: expected a class id >= 0"),
    (["--set", "pipeline.drain_timeout_s=0"], "pipeline.drain_timeout_s: expected a number of seconds > 0"),
    (["--set", "sources.0.reconnect.jitter=2"], "sources[0].reconnect.jitter: expected a number >= 0 and <= 1"),
])
def test_cli_values_have_ranges(flag, message):
    from tests.conftest import VTEST, run_cli
    from tests.test_bad_input import assert_one_line_error

    proc = run_cli("config", "--source", str(VTEST), *flag, timeout=60)
    assert_one_line_error(proc, message, code=ConfigError.exit_code)


def test_class_ids_beyond_the_model_are_refused(tmp_path):
    from tests.conftest import VTEST, run_cli
    from tests.test_bad_input import assert_one_line_error

    proc = run_cli("run", "--source", str(VTEST), "-o", str(tmp_path), "--set", "model.classes=[0, 999]", timeout=60)
    assert_one_line_error(proc, "model.classes: 999 is not a class id of nanodet_coco.onnx (80 classes: 0 to 79)",
                          code=ConfigError.exit_code)


def test_duplicate_yaml_keys_are_refused(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("model:\n  conf_threshold: 0.3\nbackend:\n  max_batch: 2\nmodel:\n  iou_threshold: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: malformed YAML at line 5, column 1: duplicate key 'model' "
                                          r"\(first at line 1\)"):
        load_config(cfg)
    cfg.write_text("sources:\n  - uri: a.avi\n    id: x\n    id: y\n")
    with pytest.raises(ConfigError, match="duplicate key 'id'"):
        load_config(cfg)


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    """``inferpath run /path/to/configs/sample.yaml`` from elsewhere finds its video."""
    from tests.conftest import REPO, VTEST, run_cli

    cfg = load_config(REPO / "configs" / "sample.yaml")
    assert cfg.sources[0].uri == str(VTEST)
    d = tmp_path / "deploy"
    d.mkdir()
    (d / "spec.yaml").write_text("names: [a]\n")
    (d / "job.yaml").write_text("sources: [clip.avi, rtsp://cam/x, webcam:0, /abs/v.mp4]\n"
                                "model: {path: m.onnx, spec: spec.yaml}\noutput: {dir: out}\n")
    cfg = load_config(d / "job.yaml", ["model.path=cli.onnx"])
    assert [s.uri for s in cfg.sources] == [str(d / "clip.avi"), "rtsp://cam/x", "webcam:0", "/abs/v.mp4"]
    assert cfg.model.spec == str(d / "spec.yaml") and cfg.model.path == "cli.onnx"  # --set: from the cwd
    assert cfg.output.dir == "out"  # outputs stay where the command runs
    proc = run_cli("run", str(REPO / "configs" / "sample.yaml"), "-o", str(tmp_path / "o"), "--no-video",
                   "--set", "sources.0.max_frames=3", timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("command", ["run", "config"])
def test_positional_video_is_the_source(tmp_path, command):
    """Before: ``inferpath run video.avi`` raised UnicodeDecodeError (read as a YAML)."""
    from tests.conftest import VTEST, run_cli

    proc = run_cli(command, str(VTEST), "-o", str(tmp_path), "--no-video", "--set", "sources.0.max_frames=2",
                   timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    if command == "run":
        assert len((tmp_path / "vtest.jsonl").read_text().splitlines()) == 2
    else:
        assert f"uri: {VTEST}" in proc.stdout


@pytest.mark.parametrize("name, content", [("notes.txt", b"hello"), ("model.onnx", b"\x08\x07\xff\xfe"),
                                            ("weird.yaml", b"\xff\xfe\x00binary")])
def test_non_yaml_file_gets_one_line(tmp_path, name, content):
    from tests.conftest import run_cli
    from tests.test_bad_input import assert_one_line_error

    f = tmp_path / name
    f.write_bytes(content)
    proc = run_cli("config", str(f), timeout=60)
    assert_one_line_error(proc, str(f), "not a", code=ConfigError.exit_code)


def test_one_default_max_batch():
    """The CLI's default and configs/sample.yaml agree: auto, 1 on ONNX Runtime's CPU provider
    (two calls side by side beat batching there: docs/bench/outputs.md), 4 on TensorRT."""
    from pathlib import Path

    sample = load_config(Path(__file__).resolve().parent.parent / "configs" / "sample.yaml")
    assert build_config({}).backend.max_batch == sample.backend.max_batch == 1
    assert build_config({"backend": {"name": "tensorrt"}}).backend.max_batch == 4
    gpu_ep = {"backend": {"onnxruntime": {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}}}
    assert build_config(gpu_ep).backend.max_batch == 4
    assert build_config({"backend": {"max_batch": "auto", "name": "tensorrt"}}).backend.max_batch == 4
