"""Deployments: YAML → frozen, typed dataclasses, checked by pydantic.

Every key is checked: an unknown key, a wrong type or a bad value is a :class:`ConfigError`
that names the file, the key path and what was expected, in one line (pydantic's own report is
turned into that line by ``pipeline/config_errors.py``). The classes are pydantic dataclasses, so they are
also plain frozen dataclasses (``dataclasses.replace``, attribute access, pickling for Ray).
Bounds and their words sit on the fields (:func:`_range`); the few rules across fields are in
:func:`_check_across`. ``--set a.b=c`` overrides are applied to the raw mapping before
validation, so they are checked the same way. YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, ConfigDict, Field, PlainValidator, Strict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass
from pydantic.fields import FieldInfo

from pipeline import decoders
from pipeline.config_errors import ErrorWords
from pipeline.errors import ConfigError

QueuePolicy = Literal["auto", "block", "drop_oldest"]
PYAV_VIDEO_CODECS = ("h264", "vp9")  # encoded through PyAV (pipeline/sinks/video.py); others go to OpenCV
MAX_BATCH = 256  # frames per inference call: past this no backend gains, and the buffers get huge
_CORES = os.cpu_count() or 1

# YAML's types as the config takes them: no "4" for 4, no 1 for true; an integer is a number.
Int = Annotated[int, Strict()]
Num = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


def _range(low: float, high: float | None = None, what: str = "a number", above: bool = False,
           text: str | None = None) -> FieldInfo:
    """Bounds for a field, and what a refusal says it expected: ``{what} >= {low} and <= {high}``
    (``> low`` when ``above``), or ``text``."""
    if text is None:
        text = f"{what} {'>' if above else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
    return Field(gt=low if above else None, ge=None if above else low, le=high, description=text)


def _rule(check, text: str) -> AfterValidator:
    """A check on a field's value; a refusal says it expected ``text``."""
    def validate(value):
        if not check(value):
            raise ValueError(text)
        return value
    return AfterValidator(validate)


def _output_format(value: object) -> str:
    """model.format: auto or a registered output decoder (pipeline/decoders), read at validation
    time: formats registered after import count too."""
    formats = decoders.formats()
    if value not in formats:
        raise ValueError("one of " + ", ".join(repr(f) for f in formats))
    return value  # type: ignore[return-value]


def _video_codec(codec: str) -> bool:
    return codec in PYAV_VIDEO_CODECS or (len(codec) == 4 and codec.isascii() and codec.isprintable())


def _cluster_address(address: str | None) -> bool:
    return not address or address == "auto" or address.startswith("ray://") or ":" in address


def _points(count_ok, text: str, distinct: bool = False, polygon: bool = False) -> AfterValidator:
    """[x, y] points: a line's two (distinct), a zone's polygon (3 or more, simple, with an area)."""
    def validate(pts: list[list[float]]) -> list[list[float]]:
        if not count_ok(len(pts)) or any(len(p) != 2 for p in pts):
            raise ValueError(text)
        if distinct and pts[0] == pts[1]:
            raise ValueError("two distinct points")
        if polygon:
            problem = polygon_problem(pts)
            if problem:
                raise ValueError(f"a polygon with an area whose edges do not cross ({problem})")
        return pts
    return AfterValidator(validate)


def polygon_problem(pts: list[list[float]]) -> str | None:
    """Why ``pts`` is no usable zone (zero area, or two edges that cross: a bow-tie), or None.
    Inside-tests on such a polygon count a region the user did not draw, or nothing at all."""
    n = len(pts)

    def orient(a, b, c) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    for i in range(n):
        a, b = pts[i], pts[(i + 1) % n]
        for j in range(i + 2, n - (i == 0)):  # not the neighbours (the closing edge neighbours the first)
            c, d = pts[j], pts[(j + 1) % n]
            if orient(a, b, c) * orient(a, b, d) < 0 and orient(c, d, a) * orient(c, d, b) < 0:
                return f"edges {i + 1} and {j + 1} cross"
    area = sum(pts[i][0] * pts[(i + 1) % n][1] - pts[(i + 1) % n][0] * pts[i][1] for i in range(n)) / 2
    if abs(area) < 1e-9:
        return "its area is 0"
    return None


Fraction = Annotated[Num, _range(0, 1, text="a number between 0 and 1")]
Positive = Annotated[Num, _range(0, above=True, text="a positive number")]
Seconds = Annotated[Num, _range(0, above=True, what="a number of seconds")]
Port = Annotated[Int, _range(1, 65535, text="a TCP port 1-65535")]
Points = list[list[Num]]

# Every config class: frozen, and a key it does not have is an error.
config_dataclass = functools.partial(_pydantic_dataclass, frozen=True, config=ConfigDict(extra="forbid"))


@config_dataclass
class ReconnectConfig:
    """Exponential backoff with jitter for live sources."""

    max_retries: Annotated[Int, _range(-1, what="an integer (-1 = forever)")] = 10  # -1 retries forever
    initial_backoff_s: Annotated[Num, _range(0, what="a number of seconds")] = 0.5
    max_backoff_s: Annotated[Num, _range(0, what="a number of seconds")] = 10.0
    multiplier: Annotated[Num, _range(1)] = 2.0
    jitter: Annotated[Num, _range(0, 1)] = 0.25  # +/- fraction of each delay


@config_dataclass
class SourceConfig:
    """One video source and how to read it."""

    uri: Annotated[Str, Field(min_length=1, description="a path or URI")]
    id: Str | None = None  # defaults to the file stem or a redacted URI
    realtime: Bool = False  # play a file at its native rate, as a camera would
    speed: Positive = 1.0  # realtime playback speed factor
    transport: Literal["tcp", "udp"] = "tcp"  # RTSP transport
    # whose clock a live frame's capture time is: "sender" = the camera's (RTSP with RTCP sender
    # reports: the network and decoder delay then counts against the budget, as its own stage
    # "network"); "reader" = when our reader got it; "auto" = the sender's where the stream
    # carries it (rtsp://), else the reader's.
    clock: Literal["auto", "reader", "sender"] = "auto"
    decoder: Literal["auto", "cpu", "nvdec"] = "auto"  # nvdec: GPU decode (PyNvVideoCodec); see sources/nvdec.py
    open_timeout_ms: Annotated[Int, _range(0, what="a number of ms", above=True)] = 10000
    read_timeout_ms: Annotated[Int, _range(0, what="a number of ms", above=True)] = 5000
    latency_budget_ms: Positive | None = None  # overrides pipeline.latency_budget_ms
    # this stream's share of inference when the streams together offer more than it can take:
    # weight / sum(weights) of the frames inferred (live-editable; a batch job loses nothing either way)
    weight: Positive = 1.0
    queue_policy: QueuePolicy = "auto"  # auto: block for files, drop_oldest for live
    loop: Bool = False  # restart a file at its end (live simulation)
    # http(s): auto = a stream that reports a length (frame count, duration) is a file, read once
    # like a local one; true/false force it.
    live: Literal["auto", True, False] = "auto"
    # end the stream after this many frames (a sample of a long video)
    max_frames: Annotated[Int, _range(1, what="an integer")] | None = None
    # files: start at this frame index (the frames before it are decoded and skipped, so the index
    # is exact); seq, pts and max_frames still count from the file's first frame. The cluster
    # driver resumes a file here after a worker is lost.
    start_frame: Annotated[Int, _range(0, what="an integer")] = 0
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    output_dir: Str | None = None  # per-source outputs (defaults to output.dir)


@config_dataclass
class CanaryConfig:
    """The FP32 canary (pipeline/canary.py): with an INT8 or FP16 model, one sampled frame every
    ``every_s`` per source re-run on the FP32 model in the background, compared by the gate's measures."""

    every_s: Seconds = 10.0  # one frame per source this often (wall clock)
    model: Str | None = None  # the FP32 model; default: the one the INT8/FP16 model was made from (its metadata)
    window: Annotated[Int, _range(1, what="an integer")] = 30  # sampled frames in the sliding window
    # FP32 boxes (>= conf + margin) the window must hold before its agreement is judged
    min_boxes: Annotated[Int, _range(1, what="an integer")] = 10
    # the canary's thread may use at most this share of one core; it waits between samples to stay inside
    max_cpu_share: Annotated[Num, _range(0, 1, above=True, text="a number > 0 and <= 1")] = 0.05
    save_dir: Str | None = None  # sampled frames that disagree are saved here; default: <output dir>/canary
    max_saved: Annotated[Int, _range(0, what="an integer")] = 100  # at most this many per run (0: none)


@config_dataclass
class ModelConfig:
    path: Str | None = None  # ONNX file; None = the bundled NanoDet COCO model
    spec: Str | None = None  # YAML spec; None = beside the model or in its metadata
    format: Annotated[str, PlainValidator(_output_format)] = "auto"  # auto or a pipeline/decoders format
    output: Str | None = None  # which output holds the detections (default: the first that fits a format)
    conf_threshold: Fraction = 0.35
    iou_threshold: Fraction = 0.5
    max_detections: Annotated[Int, _range(1, what="an integer")] = 300
    classes: list[Annotated[Int, _range(0, what="a class id")]] | None = None  # keep only these class ids
    canary: CanaryConfig | None = None  # the FP32 canary for an INT8/FP16 model (null: off)


@config_dataclass
class OnnxRuntimeConfig:
    # 0 = ONNX Runtime's default (all cores)
    intra_op_threads: Annotated[Int, _range(0, max(64, 4 * _CORES), "an integer (0 = all cores)")] = 0
    inter_op_threads: Annotated[Int, _range(0, max(64, 4 * _CORES), "an integer (0 = ONNX Runtime's default)")] = 1
    providers: list[Str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    # ORT's worker threads spin while waiting for work; that steals CPU from the decode, encode
    # and sink threads on a small machine. false (default) = they sleep instead: measured on the
    # 2-core CPU with a decode+preprocess thread alongside, 9.3-13.2 vs 5.0-7.5 inferences/s.
    allow_spinning: Bool = False
    # Inference calls in flight at once, at most (each its own thread; results still go on in
    # order). auto: 2 on a CPU with 2 or more cores (ORT's threads each get cores / 2), else 1: two
    # 1-thread calls side by side did 42-47 frames/s on the 2-core CPU against 37-40 for one
    # 2-thread call (docs/bench/outputs.md). A batch job runs them all the time. With a live source
    # one call on every core (the shortest time per frame) runs while the pipeline keeps up, and
    # the calls go side by side, on a second session, while inference is losing frames
    # (pipeline/policy.py: SideBySide).
    workers: Annotated[Int, _range(1, 64, text="an integer 1-64 or auto")] | Literal["auto"] = "auto"


@config_dataclass
class TensorRTConfig:
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"  # auto = as the ONNX is typed
    cache_dir: Str = "~/.cache/inferpath/engines"
    cuda_binding: Literal["cuda-python", "pycuda"] = "cuda-python"
    workspace_mb: Int = 2048
    opt_batch: Int | None = None  # optimization-profile opt batch (default: 1 with a live source, else max_batch)
    timing_cache: Bool = True
    device: Int = 0


@config_dataclass
class BackendConfig:
    name: Str = "onnxruntime"
    # Frames per inference call, at most (across streams). auto: 1 for ONNX Runtime on a CPU, where
    # two calls side by side (backend.onnxruntime.workers) beat batching: on the 2-core CPU a batch
    # job did 37.5 vs 33.4 frames/s at batch 1 vs 4, and a live stream at 3x overload 39 vs 34
    # frames/s with p99 92 vs 243 ms (docs/bench/outputs.md); 4 elsewhere (TensorRT, GPU
    # providers), where a batch fills the device. A live stream never waits for a batch to fill.
    max_batch: Annotated[Int, _range(1, MAX_BATCH, text=f"an integer 1-{MAX_BATCH} or auto")] | Literal["auto"] = "auto"
    # wait at most this long after the first frame of a batch
    batch_timeout_ms: Annotated[Num, _range(0, 10_000)] = 5.0
    onnxruntime: OnnxRuntimeConfig = field(default_factory=OnnxRuntimeConfig)
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)

    @property
    def on_cpu(self) -> bool:
        """ONNX Runtime on its CPU provider only: where calls side by side beat batching."""
        return self.name == "onnxruntime" and all(p == "CPUExecutionProvider" for p in self.onnxruntime.providers)

    def sections(self) -> dict[str, Any]:
        """Each backend's own settings by its name (``onnxruntime``, ``tensorrt``): a backend added
        with its config model here finds them in ``BackendOptions.extra``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if dataclasses.is_dataclass(getattr(self, f.name))}

    def __post_init__(self) -> None:
        if self.max_batch == "auto":  # resolved here: every reader of the config sees a number
            object.__setattr__(self, "max_batch", 1 if self.on_cpu else 4)


@config_dataclass
class WebConfig:
    """The live view in a browser (``--serve PORT``); see pipeline/web.py."""

    enabled: Bool = False
    host: Str = "127.0.0.1"  # any other address requires a token
    port: Annotated[Int, _range(0, 65535, text="a TCP port 0-65535")] = 8080  # 0: any free port (the URL is logged)
    token: Str | None = None  # required by non-local hosts; null: a random one, printed once
    max_fps: Positive = 15.0  # JPEG encodes per second per stream, at most
    jpeg_quality: Annotated[Int, _range(1, 100, text="an integer 1-100")] = 75


# ---- events out and event clips (pipeline/events; configs/events.yaml says what each key does) ----
EventKind = Literal["line", "zone", "detection"]


def _event_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in ("mqtt", "mqtts", "http", "https") and "://" in url


@config_dataclass
class EventSinkConfig:
    """One place events go: an MQTT broker or a webhook, fed from its own thread (pipeline/events)."""

    type: Literal["mqtt", "webhook"]
    url: Annotated[Str, _rule(_event_url, "an mqtt://, mqtts://, http:// or https:// URL")]
    name: Str | None = None  # the sink's label in metrics and the summary (default: its type)
    on: list[EventKind] = field(default_factory=lambda: ["line", "zone"])
    classes: list[Str] | None = None  # class names sent (default: all)
    min_score: Fraction = 0.0  # a detection (or a track's detection at its event) below this is not sent
    max_rate_hz: Positive = 1.0  # "detection" messages per second per source, at most
    queue_size: Annotated[Int, _range(1, what="an integer")] = 1000  # messages waiting; then the oldest drop
    initial_backoff_s: Positive = 0.5  # retry delays: doubled after each failure up to max_backoff_s
    max_backoff_s: Positive = 30.0
    drain_s: Annotated[Num, _range(0, what="a number of seconds")] = 5.0  # at the end, deliver for this long
    topic: Str = "inferpath/{source}/events"  # mqtt: {source}, {type} are filled in
    qos: Literal[0, 1, 2] = 1  # mqtt
    retain: Bool = False  # mqtt
    keepalive_s: Annotated[Int, _range(5, what="an integer")] = 15  # mqtt: a silent broker is dropped after 1.5x
    ca_file: Str | None = None  # mqtts / https: CA bundle (default: the system's)
    headers: dict[Str, Str] = field(default_factory=dict)  # webhook
    cooldown_s: Annotated[Num, _range(0, what="a number of seconds")] = 0.0  # webhook: one POST per this, at most
    timeout_s: Seconds = 5.0  # webhook: per POST; mqtt: connect and acknowledgement


def _yaml_on_key(data: dict) -> None:
    """YAML 1.1 reads an unquoted ``on:`` key as ``true``: under output.events[] and output.clips
    it is the ``on`` key (copied, never changed in place)."""
    output = data.get("output")
    if not isinstance(output, dict):
        return
    fix = lambda m: {("on" if k is True else k): v for k, v in m.items()} if isinstance(m, dict) else m  # noqa: E731
    output = dict(output)
    if "clips" in output:
        output["clips"] = fix(output["clips"])
    if isinstance(output.get("events"), list):
        output["events"] = [fix(m) for m in output["events"]]
    data["output"] = output


@config_dataclass
class ClipsConfig:
    """Event clips: H.264 mp4 around each event, from a ring buffer of encoded frames."""

    pre_s: Annotated[Num, _range(0, 60, what="a number of seconds")] = 5.0
    post_s: Annotated[Num, _range(0, 300, what="a number of seconds")] = 5.0
    on: list[Literal["line", "zone"]] = field(default_factory=lambda: ["line", "zone"])
    max_total_mb: Positive = 500.0  # all clips under dir together; the oldest are deleted first
    dir: Str | None = None  # default: <output dir>/clips


@config_dataclass
class OutputConfig:
    dir: Str = "outputs"
    jsonl: Bool = True
    video: Bool = True
    display: Bool = False
    # h264 (PyAV, plays in browsers) | vp9 (PyAV) | a four-character OpenCV code such as mp4v
    video_codec: Annotated[Str, _rule(_video_codec, f"one of {', '.join(PYAV_VIDEO_CODECS)} or a four-character "
                                                    "OpenCV code such as mp4v")] = "h264"
    web: WebConfig = field(default_factory=WebConfig)
    events: list[EventSinkConfig] = field(default_factory=list)  # MQTT / webhook sinks (pipeline/events)
    clips: ClipsConfig | None = None  # event clips (pipeline/events/clips.py); null = off


@config_dataclass
class PipelineConfig:
    queue_size: Annotated[Int, _range(1, what="an integer")] = 8
    latency_budget_ms: Positive | None = None  # live deployments: drop frames that cannot make it
    duration_s: Seconds | None = None  # stop after this long (live)
    drain_timeout_s: Seconds = 10.0  # after a stop, finish frames in flight for at most this long
    progress: Bool = True


@config_dataclass
class PrometheusConfig:
    enabled: Bool = False
    host: Str = "127.0.0.1"
    port: Port = 9464


@config_dataclass
class DriftConfig:
    reference: Str | None = None  # profile JSON written by `inferpath profile`
    threshold: Num = 3.0  # drift score that triggers a warning
    window: Int = 30  # frames in the rolling window


@config_dataclass
class MetricsConfig:
    # periodic log line; 0 = off
    log_interval_s: Annotated[Num, _range(0, what="a number of seconds (0 = off)")] = 10.0
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)


@config_dataclass
class GateConfig:
    """Accuracy gate: a prepared model vs FP32 on held-out frames (configs/sample.yaml says why these numbers)."""

    frames: Int = 64
    margin: Num = 0.05
    min_map: Num = 0.85
    min_agreement: Num = 0.9
    min_mean_iou: Num = 0.85
    map_min_score: Num = 0.05
    weak_below_boxes: Int = 100
    enabled: Bool = True


@config_dataclass
class PrecisionConfig:
    calib_frames: Int = 128
    calib_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    recover: Bool = True  # gate failed: keep the most sensitive convolutions in float, re-quantize
    max_float_layers: Int = 8  # recovery's cap
    gate: GateConfig = field(default_factory=GateConfig)


@config_dataclass
class LineConfig:
    """A counting line: crossings of a track's anchor point, per direction and class."""

    name: Str
    # [[x1, y1], [x2, y2]] in the source's frame pixels
    points: Annotated[Points, _points(lambda n: n == 2, "exactly 2 [x, y] points", distinct=True)]
    classes: list[Str] | None = None  # class names counted (default: all)
    source: Str | None = None  # only this source id (default: every source)


@config_dataclass
class ZoneConfig:
    """A counting zone: occupancy (current, peak) and dwell time of tracks inside it."""

    name: Str
    # [[x, y], ...] (3 or more points) in the source's frame pixels
    polygon: Annotated[Points, _points(lambda n: n >= 3, "3 or more [x, y] points", polygon=True)]
    classes: list[Str] | None = None
    source: Str | None = None


@config_dataclass
class TrackingConfig:
    """Per-stream object tracking (ByteTrack from Roboflow's ``trackers``) and counting."""

    enabled: Bool = False
    tracker: Literal["bytetrack", "sort", "ocsort"] = "bytetrack"
    lost_track_s: Positive = 1.0  # a track missed this long (stream time) ends
    activation_threshold: Fraction = 0.5  # score a detection needs to start a track
    high_threshold: Fraction = 0.5  # ByteTrack: first-stage (high score) matching; the rest go second
    match_iou: Fraction = 0.2  # minimum IoU to match a detection to a track's prediction
    min_hits: Annotated[Int, _range(1, what="an integer")] = 2  # consecutive detections before a track gets an id
    trail: Annotated[Int, _range(0, what="an integer")] = 30  # points of each track's trail drawn on the video
    anchor: Literal["bottom_center", "center"] = "bottom_center"  # the point lines and zones test
    lines: list[LineConfig] = field(default_factory=list)
    zones: list[ZoneConfig] = field(default_factory=list)


@config_dataclass
class ClusterConfig:
    """Where the streams run: this process (``local``) or Ray workers (``ray``, see pipeline.cluster)."""

    engine: Literal["local", "ray"] = "local"
    # null: start a Ray on this machine; auto: join this node's cluster; ray://host:port
    address: Annotated[Str | None, _rule(_cluster_address, "null, auto, ray://host:port or host:port")] = None
    # auto: one per GPU, else one per cpus_per_worker cores
    workers: Annotated[Int, _range(1, text="an integer >= 1 or auto")] | Literal["auto"] = "auto"
    cpus_per_worker: Annotated[Num, _range(0)] = 1.0  # Ray actor resources
    gpus_per_worker: Annotated[Num, _range(0)] = 0.0
    # a worker lost more often than this (per worker slot) fails its streams
    max_restarts: Annotated[Int, _range(0, what="an integer")] = 3
    connect_timeout_s: Seconds = 30.0  # reaching the cluster and placing every worker


@config_dataclass
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
    path: Str | None = None  # the YAML it came from (not a YAML key)


_NOT_KEYS = {"path"}
_CONFIG = TypeAdapter(Config)
_WORDS = ErrorWords(Config, hidden=frozenset(_NOT_KEYS))


def _set_path(data: dict, dotted: str, value: Any, origin: str) -> None:
    """Set ``a.b.0.c`` in ``data``. A list index one past the end adds an item, so
    ``--set sources.0.uri=clip.mp4`` works without a config file (the source list starts empty)."""
    keys = dotted.split(".")
    node: Any = data

    def item(lst: list, i: int, fresh: Any) -> int:
        try:
            n = int(keys[i])
        except ValueError:
            raise ConfigError(f"{origin}: {'.'.join(keys[: i + 1])}: expected a list index") from None
        if n == len(lst) and n >= 0:
            lst.append(fresh)
        elif not 0 <= n < len(lst):
            where = ".".join(keys[:i])
            raise ConfigError(f"{origin}: {'.'.join(keys[: i + 1])}: no such list item ({where} has {len(lst)}; "
                              f"{where}.{len(lst)} adds one)") from None
        return n

    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[item(node, i, {})]
            continue
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = [] if keys[i + 1].isdigit() else {}
        node = nxt
    if isinstance(node, list):
        node[item(node, len(keys) - 1, None)] = value
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
_INPUT_PATHS = (("model", "path"), ("model", "spec"), ("model", "canary", "model"), ("metrics", "drift", "reference"))


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
    _yaml_on_key(data)
    try:
        for key in _NOT_KEYS & data.keys():
            raise ConfigError(_WORDS.unknown_key("", key, Config))
        try:
            cfg = _CONFIG.validate_python({**data, "path": origin if origin != "<config>" else None})
        except ValidationError as exc:
            raise ConfigError(_WORDS.one_line(exc, data)) from None
        _check_across(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {str(exc).lstrip(': ')}") from None
    return cfg


def _check_across(cfg: Config) -> None:
    """The rules that span several entries: unique source ids, unique line and zone names."""
    ids = [s.id for s in cfg.sources if s.id]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError(f"sources: duplicate id {sorted(dup)[0]!r}")
    for kind, items in (("lines", cfg.tracking.lines), ("zones", cfg.tracking.zones)):
        names = [item.name for item in items]
        for i, name in enumerate(names):
            if not name or name in names[:i]:
                raise ConfigError(f"tracking.{kind}[{i}].name: expected a name unique among tracking.{kind}, "
                                  f"got {name!r}")


def source_config(entry: Any) -> SourceConfig:
    """One ``sources[]`` entry (a mapping, or a bare URI), validated by the same rules and with the
    same one-line message as in a YAML file (``sources[0].latency_budget_ms: expected ...``)."""
    if isinstance(entry, str):
        entry = {"uri": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"sources[0]: expected a mapping with a uri (one sources[] entry), "
                          f"got {type(entry).__name__}")
    try:
        return build_config({"sources": [entry]}).sources[0]
    except ConfigError as exc:
        raise ConfigError(str(exc).removeprefix("<config>: ")) from None


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
    "Config", "SourceConfig", "ModelConfig", "CanaryConfig", "BackendConfig", "OnnxRuntimeConfig", "TensorRTConfig",
    "OutputConfig", "WebConfig", "PipelineConfig", "MetricsConfig", "PrometheusConfig", "DriftConfig",
    "PrecisionConfig", "GateConfig", "ReconnectConfig", "TrackingConfig", "LineConfig", "ZoneConfig",
    "ClusterConfig", "load_config", "build_config", "source_config",
    "apply_overrides", "read_yaml", "to_dict",
]
