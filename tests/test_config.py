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
        ({"backend": {"max_batch": 0}}, "backend.max_batch: expected an integer >= 1"),
        ({"backend": {"max_batch": 2.5}}, "backend.max_batch: expected an integer, got 2.5"),
        ({"backend": {"tensorrt": {"precision": "int4"}}}, "backend.tensorrt.precision: expected one of 'auto'"),
        ({"sources": [{"uri": "a.avi", "realtme": True}]}, "sources[0]: unknown key 'realtme'"),
        ({"sources": [{"id": "cam"}]}, "sources[0]: missing required key 'uri'"),
        ({"sources": [{"uri": "a.avi", "realtime": "yes"}]}, "sources[0].realtime: expected true/false"),
        ({"sources": [{"uri": "a", "id": "x"}, {"uri": "b", "id": "x"}]}, "duplicate id 'x'"),
        ({"pipeline": {"latency_budget_ms": -5}}, "pipeline.latency_budget_ms: expected a positive number"),
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
