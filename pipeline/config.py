"""Deployments: YAML → frozen, typed dataclasses.

Every key is checked: an unknown key, a wrong type or a bad value is a :class:`ConfigError`
that names the file, the key path and what was expected. ``--set a.b=c`` overrides are applied
to the raw mapping before validation, so they are checked the same way. YAML is read with
``yaml.safe_load`` only.
"""

from __future__ import annotations

import dataclasses
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from pipeline.errors import ConfigError

QueuePolicy = Literal["auto", "block", "drop_oldest"]
PYAV_VIDEO_CODECS = ("h264", "vp9")  # encoded through PyAV (pipeline/sinks/video.py); others go to OpenCV
MAX_BATCH = 256  # frames per inference call: past this no backend gains, and the buffers get huge


@dataclass(frozen=True)
class ReconnectConfig:
    """Exponential backoff with jitter for live sources."""

    max_retries: int = 10  # -1 retries forever
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.25  # +/- fraction of each delay


@dataclass(frozen=True)
class SourceConfig:
    """One video source and how to read it."""

    uri: str
    id: str | None = None  # defaults to the file stem or a redacted URI
    realtime: bool = False  # play a file at its native rate, as a camera would
    speed: float = 1.0  # realtime playback speed factor
    transport: Literal["tcp", "udp"] = "tcp"  # RTSP transport
    open_timeout_ms: int = 10000
    read_timeout_ms: int = 5000
    latency_budget_ms: float | None = None  # overrides pipeline.latency_budget_ms
    queue_policy: QueuePolicy = "auto"  # auto: block for files, drop_oldest for live
    loop: bool = False  # restart a file at its end (live simulation)
    # http(s): auto = a stream that reports a length (frame count, duration) is a file, read once
    # like a local one; true/false force it.
    live: Literal["auto", True, False] = "auto"
    max_frames: int | None = None  # end the stream after this many frames (a sample of a long video)
    # files: start at this frame index (the frames before it are decoded and skipped, so the index
    # is exact); seq, pts and max_frames still count from the file's first frame. The cluster
    # driver resumes a file here after a worker is lost.
    start_frame: int = 0
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    output_dir: str | None = None  # per-source outputs (defaults to output.dir)


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # ONNX file; None = the bundled NanoDet COCO model
    spec: str | None = None  # YAML spec; None = beside the model or in its metadata
    format: str = "auto"  # auto or an output format of pipeline/decoders (yolov8, yolov5, end2end)
    output: str | None = None  # which output holds the detections (default: the first that fits a format)
    conf_threshold: float = 0.35
    iou_threshold: float = 0.5
    max_detections: int = 300
    classes: list[int] | None = None  # keep only these class ids


@dataclass(frozen=True)
class OnnxRuntimeConfig:
    intra_op_threads: int = 0  # 0 = ONNX Runtime's default (all cores)
    inter_op_threads: int = 1
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    # ORT's worker threads spin while waiting for work; that steals CPU from the decode, encode
    # and sink threads on a small machine. false (default) = they sleep instead: measured on the
    # 2-core CPU with a decode+preprocess thread alongside, 9.3-13.2 vs 5.0-7.5 inferences/s.
    allow_spinning: bool = False


@dataclass(frozen=True)
class TensorRTConfig:
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"  # auto = as the ONNX is typed
    cache_dir: str = "~/.cache/inferpath/engines"
    cuda_binding: Literal["cuda-python", "pycuda"] = "cuda-python"
    workspace_mb: int = 2048
    opt_batch: int | None = None  # optimization-profile opt batch (default: max_batch)
    timing_cache: bool = True
    device: int = 0


@dataclass(frozen=True)
class BackendConfig:
    name: str = "onnxruntime"
    # frames per inference call (across streams). 4, measured (scripts/bench.py sweep, 2-core CPU):
    # 5.45 vs 5.18 fps through the pipeline, 5.46 vs 4.68 fps for the bare backend. A live stream
    # alone never waits for a batch to fill: it waits at most batch_timeout_ms.
    max_batch: int = 4
    batch_timeout_ms: float = 5.0  # wait at most this long after the first frame of a batch
    onnxruntime: OnnxRuntimeConfig = field(default_factory=OnnxRuntimeConfig)
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    test_delay_ms: float = 0.0  # test-only: extra time per inference call (simulates a slow device)


@dataclass(frozen=True)
class WebConfig:
    """The live view in a browser (``--serve PORT``); see pipeline/web.py."""

    enabled: bool = False
    host: str = "127.0.0.1"  # any other address requires a token
    port: int = 8080  # 0: any free port (the URL is logged)
    token: str | None = None  # required by non-local hosts; null: a random one, printed once
    max_fps: float = 15.0  # JPEG encodes per second per stream, at most
    jpeg_quality: int = 75


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "outputs"
    jsonl: bool = True
    video: bool = True
    display: bool = False
    # h264 (PyAV, plays in browsers) | vp9 (PyAV) | a four-character OpenCV code such as mp4v
    video_codec: str = "h264"
    web: WebConfig = field(default_factory=WebConfig)


@dataclass(frozen=True)
class PipelineConfig:
    queue_size: int = 8
    latency_budget_ms: float | None = None  # live deployments: drop frames that cannot make it
    duration_s: float | None = None  # stop after this long (live)
    drain_timeout_s: float = 10.0  # after a stop, finish frames in flight for at most this long
    progress: bool = True


@dataclass(frozen=True)
class PrometheusConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True)
class DriftConfig:
    reference: str | None = None  # profile JSON written by `inferpath profile`
    threshold: float = 3.0  # drift score that triggers a warning
    window: int = 30  # frames in the rolling window


@dataclass(frozen=True)
class MetricsConfig:
    log_interval_s: float = 10.0  # periodic log line; 0 = off
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)


@dataclass(frozen=True)
class GateConfig:
    """Accuracy gate: a prepared model vs FP32 on held-out frames (configs/sample.yaml says why these numbers)."""

    frames: int = 64
    margin: float = 0.05
    min_map: float = 0.85
    min_agreement: float = 0.9
    min_mean_iou: float = 0.85
    map_min_score: float = 0.05
    weak_below_boxes: int = 100
    enabled: bool = True


@dataclass(frozen=True)
class PrecisionConfig:
    calib_frames: int = 128
    calib_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    recover: bool = True  # gate failed: keep the most sensitive convolutions in float, re-quantize
    max_float_layers: int = 8  # recovery's cap
    gate: GateConfig = field(default_factory=GateConfig)


@dataclass(frozen=True)
class LineConfig:
    """A counting line: crossings of a track's anchor point, per direction and class."""

    name: str
    points: list[list[float]]  # [[x1, y1], [x2, y2]] in the source's frame pixels
    classes: list[str] | None = None  # class names counted (default: all)
    source: str | None = None  # only this source id (default: every source)


@dataclass(frozen=True)
class ZoneConfig:
    """A counting zone: occupancy (current, peak) and dwell time of tracks inside it."""

    name: str
    polygon: list[list[float]]  # [[x, y], ...] (3 or more points) in the source's frame pixels
    classes: list[str] | None = None
    source: str | None = None


@dataclass(frozen=True)
class TrackingConfig:
    """Per-stream object tracking (ByteTrack from Roboflow's ``trackers``) and counting."""

    enabled: bool = False
    tracker: Literal["bytetrack", "sort", "ocsort"] = "bytetrack"
    lost_track_s: float = 1.0  # a track missed this long (stream time) ends
    activation_threshold: float = 0.5  # score a detection needs to start a track
    high_threshold: float = 0.5  # ByteTrack: first-stage (high score) matching; the rest go second
    match_iou: float = 0.2  # minimum IoU to match a detection to a track's prediction
    min_hits: int = 2  # consecutive detections before a track gets an id
    trail: int = 30  # points of each track's trail drawn on the video
    anchor: Literal["bottom_center", "center"] = "bottom_center"  # the point lines and zones test
    lines: list[LineConfig] = field(default_factory=list)
    zones: list[ZoneConfig] = field(default_factory=list)


@dataclass(frozen=True)
class ClusterConfig:
    """Where the streams run: this process (``local``) or Ray workers (``ray``, see pipeline.cluster)."""

    engine: Literal["local", "ray"] = "local"
    address: str | None = None  # null: start a Ray on this machine; auto: join this node's cluster; ray://host:port
    workers: int | Literal["auto"] = "auto"  # auto: one per GPU, else one per cpus_per_worker cores
    cpus_per_worker: float = 1.0  # Ray actor resources
    gpus_per_worker: float = 0.0
    max_restarts: int = 3  # a worker lost more often than this (per worker slot) fails its streams
    connect_timeout_s: float = 30.0  # reaching the cluster and placing every worker


@dataclass(frozen=True)
class Config:
    """A whole deployment."""

    sources: list[SourceConfig] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    path: str | None = None  # the YAML it came from (not a YAML key)


_NOT_KEYS = {"path"}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_convert(v, get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in this module, not user input


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if not (cls is Config and f.name in _NOT_KEYS)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {str(unknown[0])!r}; expected one of {', '.join(names)}"
        )
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{where}: missing required key {missing[0]!r}") from None
        raise ConfigError(f"{where}: {exc}") from None


def _set_path(data: dict, dotted: str, value: Any, origin: str) -> None:
    keys = dotted.split(".")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(key)]
                continue
            except (ValueError, IndexError):
                raise ConfigError(f"{origin}: {'.'.join(keys[: i + 1])}: no such list item") from None
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        node = nxt
    if isinstance(node, list):
        try:
            node[int(keys[-1])] = value
        except (ValueError, IndexError):
            raise ConfigError(f"{origin}: {dotted}: no such list item") from None
    elif isinstance(node, dict):
        node[keys[-1]] = value
    else:
        raise ConfigError(f"{origin}: {dotted}: parent is not a mapping")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` strings; values are parsed as YAML scalars/lists (safe_load)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
        _set_path(data, key.strip(), value, "--set")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML lets the last win
    silently, so a typo'd copy of a section would quietly replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str):
    """``yaml.safe_load`` semantics (no arbitrary objects), but duplicate keys are an error."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)


# Keys holding input paths: relative ones resolve against the config file's directory.
_INPUT_PATHS = (("model", "path"), ("model", "spec"), ("metrics", "drift", "reference"))


def resolve_relative_paths(data: dict, base: Path) -> None:
    """Make the input paths of a config file (sources' files and globs, model, spec, drift
    reference) absolute against ``base`` (the file's directory), as compose files do. URLs,
    cameras, absolute and ``~`` paths are kept; output directories stay relative to where the
    command runs."""

    def fix(value: object) -> object:
        if not isinstance(value, str) or not value or "://" in value or value.startswith(("~", "webcam:", "/")):
            return value
        if value.isdigit():  # a camera index
            return value
        return os.path.normpath(base / value)

    for keys in _INPUT_PATHS:
        node: object = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] in node:
            node[keys[-1]] = fix(node[keys[-1]])
    normalize_sources(data)
    for src in data.get("sources") or []:
        if isinstance(src, dict) and "uri" in src:
            src["uri"] = fix(src["uri"])


def read_yaml(path: str | Path, resolve_paths: bool = True) -> dict:
    """Load a deployment YAML into a mapping, with one-line errors naming the file. Relative input
    paths in it are made absolute against the file's directory (``resolve_paths``)."""
    p = Path(path)
    if p.suffix.lower() not in (".yaml", ".yml", ".json", ""):
        raise ConfigError(f"{p}: not a deployment config (expected a .yaml file; a video, image or URL "
                          "given instead is taken as the source)")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a YAML config (binary content); a video goes in --source") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config ({exc.strerror})") from None
    try:
        data = safe_load_unique(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: malformed YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    if resolve_paths:
        resolve_relative_paths(data, p.resolve().parent)
    return data


def normalize_sources(data: dict) -> None:
    """Allow ``sources: [path, ...]`` and ``source: path`` shorthands."""
    if "source" in data:
        data.setdefault("sources", []).insert(0, data.pop("source"))
    srcs = data.get("sources")
    if isinstance(srcs, (str, dict)):
        srcs = data["sources"] = [srcs]
    if isinstance(srcs, list):
        data["sources"] = [{"uri": s} if isinstance(s, str) else s for s in srcs]


def build_config(data: dict, origin: str = "<config>") -> Config:
    """Validate a raw mapping into a :class:`Config`; errors are prefixed with ``origin``."""
    data = dict(data)
    normalize_sources(data)
    try:
        cfg = _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {str(exc).lstrip(': ')}") from None
    _check_values(cfg, origin)
    return dataclasses.replace(cfg, path=origin if origin != "<config>" else None)


def _check_values(cfg: Config, origin: str) -> None:
    def bad(key: str, what: str, value: Any) -> ConfigError:
        return ConfigError(f"{origin}: {key}: expected {what}, got {value!r}")

    def check_range(key: str, value: float | None, low: float, high: float | None = None, what: str = "a number",
                    low_open: bool = False) -> None:
        if value is None:
            return
        if (value <= low if low_open else value < low) or (high is not None and value > high):
            span = f"> {low:g}" if low_open else f">= {low:g}"
            raise bad(key, f"{what} {span}" + (f" and <= {high:g}" if high is not None else ""), value)

    cores = os.cpu_count() or 1
    b, p = cfg.backend, cfg.pipeline
    check_range("backend.max_batch", b.max_batch, 1, MAX_BATCH, "an integer")
    check_range("backend.batch_timeout_ms", b.batch_timeout_ms, 0, 10_000)
    check_range("backend.onnxruntime.intra_op_threads", b.onnxruntime.intra_op_threads, 0, max(64, 4 * cores),
                "an integer (0 = all cores)")
    check_range("backend.onnxruntime.inter_op_threads", b.onnxruntime.inter_op_threads, 0, max(64, 4 * cores),
                "an integer (0 = ONNX Runtime's default)")
    check_range("pipeline.duration_s", p.duration_s, 0, None, "a number of seconds", low_open=True)
    check_range("pipeline.drain_timeout_s", p.drain_timeout_s, 0, None, "a number of seconds", low_open=True)
    check_range("metrics.log_interval_s", cfg.metrics.log_interval_s, 0, None, "a number of seconds (0 = off)")
    from pipeline import decoders  # numpy: imported when a config is built, not with this module

    formats = ("auto", *decoders.names())
    if cfg.model.format not in formats:
        raise bad("model.format", "one of " + ", ".join(repr(f) for f in formats), cfg.model.format)
    check_range("model.max_detections", cfg.model.max_detections, 1, None, "an integer")
    for i, c in enumerate(cfg.model.classes or []):
        check_range(f"model.classes[{i}]", c, 0, None, "a class id")
    if cfg.pipeline.queue_size < 1:
        raise bad("pipeline.queue_size", "an integer >= 1", cfg.pipeline.queue_size)
    for key, value in (("model.conf_threshold", cfg.model.conf_threshold), ("model.iou_threshold", cfg.model.iou_threshold)):
        if not 0.0 <= value <= 1.0:
            raise bad(key, "a number between 0 and 1", value)
    budget = cfg.pipeline.latency_budget_ms
    if budget is not None and budget <= 0:
        raise bad("pipeline.latency_budget_ms", "a positive number", budget)
    ids = [s.id for s in cfg.sources if s.id]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError(f"{origin}: sources: duplicate id {sorted(dup)[0]!r}")
    for i, s in enumerate(cfg.sources):
        if not s.uri:
            raise bad(f"sources[{i}].uri", "a path or URI", s.uri)
        if s.max_frames is not None and s.max_frames < 1:
            raise bad(f"sources[{i}].max_frames", "an integer >= 1", s.max_frames)
        if s.start_frame < 0:
            raise bad(f"sources[{i}].start_frame", "an integer >= 0", s.start_frame)
        if s.speed <= 0:
            raise bad(f"sources[{i}].speed", "a positive number", s.speed)
        if s.latency_budget_ms is not None and s.latency_budget_ms <= 0:
            raise bad(f"sources[{i}].latency_budget_ms", "a positive number", s.latency_budget_ms)
        check_range(f"sources[{i}].open_timeout_ms", s.open_timeout_ms, 0, None, "a number of ms", low_open=True)
        check_range(f"sources[{i}].read_timeout_ms", s.read_timeout_ms, 0, None, "a number of ms", low_open=True)
        r = s.reconnect
        check_range(f"sources[{i}].reconnect.max_retries", r.max_retries, -1, None, "an integer (-1 = forever)")
        check_range(f"sources[{i}].reconnect.initial_backoff_s", r.initial_backoff_s, 0, None, "a number of seconds")
        check_range(f"sources[{i}].reconnect.max_backoff_s", r.max_backoff_s, 0, None, "a number of seconds")
        check_range(f"sources[{i}].reconnect.multiplier", r.multiplier, 1, None)
        check_range(f"sources[{i}].reconnect.jitter", r.jitter, 0, 1)
    if not 0 < cfg.metrics.prometheus.port < 65536:
        raise bad("metrics.prometheus.port", "a TCP port 1-65535", cfg.metrics.prometheus.port)
    codec = cfg.output.video_codec
    if codec not in PYAV_VIDEO_CODECS and not (len(codec) == 4 and codec.isascii() and codec.isprintable()):
        raise bad("output.video_codec", f"one of {', '.join(PYAV_VIDEO_CODECS)} or a four-character OpenCV "
                  "code such as mp4v", codec)
    web = cfg.output.web
    if not 0 <= web.port < 65536:
        raise bad("output.web.port", "a TCP port 0-65535", web.port)
    if web.max_fps <= 0:
        raise bad("output.web.max_fps", "a positive number", web.max_fps)
    if not 1 <= web.jpeg_quality <= 100:
        raise bad("output.web.jpeg_quality", "an integer 1-100", web.jpeg_quality)
    _check_tracking(cfg.tracking, bad)
    c = cfg.cluster
    if c.workers != "auto" and c.workers < 1:
        raise bad("cluster.workers", "an integer >= 1 or auto", c.workers)
    check_range("cluster.cpus_per_worker", c.cpus_per_worker, 0)
    check_range("cluster.gpus_per_worker", c.gpus_per_worker, 0)
    check_range("cluster.max_restarts", c.max_restarts, 0, None, "an integer")
    check_range("cluster.connect_timeout_s", c.connect_timeout_s, 0, None, "a number of seconds", low_open=True)
    if c.address and c.address != "auto" and not c.address.startswith("ray://") and ":" not in c.address:
        raise bad("cluster.address", "null, auto, ray://host:port or host:port", c.address)


def _check_tracking(t: TrackingConfig, bad) -> None:
    for key in ("activation_threshold", "high_threshold", "match_iou"):
        if not 0.0 <= getattr(t, key) <= 1.0:
            raise bad(f"tracking.{key}", "a number between 0 and 1", getattr(t, key))
    if t.lost_track_s <= 0:
        raise bad("tracking.lost_track_s", "a positive number", t.lost_track_s)
    if t.min_hits < 1:
        raise bad("tracking.min_hits", "an integer >= 1", t.min_hits)
    if t.trail < 0:
        raise bad("tracking.trail", "an integer >= 0", t.trail)
    for kind, items, key, count in (("lines", t.lines, "points", "exactly 2"), ("zones", t.zones, "polygon", "3 or more")):
        names = [i.name for i in items]
        for i, item in enumerate(items):
            where = f"tracking.{kind}[{i}]"
            if not item.name or item.name in names[:i]:
                raise bad(f"{where}.name", f"a name unique among tracking.{kind}", item.name)
            pts = getattr(item, key)
            if (len(pts) != 2 if kind == "lines" else len(pts) < 3) or any(len(p) != 2 for p in pts):
                raise bad(f"{where}.{key}", f"{count} [x, y] points", pts)
            if kind == "lines" and pts[0] == pts[1]:
                raise bad(f"{where}.{key}", "two distinct points", pts)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a deployment (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data = read_yaml(path) if path is not None else {}
    origin = str(path) if path is not None else "<defaults>"
    if overrides:
        normalize_sources(data)
        apply_overrides(data, overrides)
    return build_config(data, origin)


def to_dict(cfg: Any) -> Any:
    """A plain mapping of a config (for logging the resolved config)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if not (isinstance(cfg, Config) and f.name in _NOT_KEYS)}
    if isinstance(cfg, list):
        return [to_dict(v) for v in cfg]
    return cfg


__all__ = [
    "Config", "SourceConfig", "ModelConfig", "BackendConfig", "OnnxRuntimeConfig", "TensorRTConfig",
    "OutputConfig", "WebConfig", "PipelineConfig", "MetricsConfig", "PrometheusConfig", "DriftConfig",
    "PrecisionConfig", "GateConfig", "ReconnectConfig", "TrackingConfig", "LineConfig", "ZoneConfig",
    "ClusterConfig", "load_config", "build_config",
    "apply_overrides", "read_yaml", "to_dict",
]
