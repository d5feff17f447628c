"""Stages: the batcher and failure propagation, with real threads and a fake backend.

A fake backend is fine here: these tests sequence threads; end-to-end tests use the real model.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from pipeline.backends.base import TensorInfo
from pipeline.frame import Frame
from pipeline.queues import EndOfStream, FrameQueue, QueueGroup
from pipeline.stages import InferenceStage
from tests.conftest import stage_ctx
from tests.conftest import tiny_frame as frame


class FakeBackend:
    """Sequencing only: returns the input mean per item, optionally slow or failing."""

    name = "fake"
    inputs = [TensorInfo("images", ("batch", 3, 2, 2), np.dtype(np.float32))]
    outputs = [TensorInfo("out", ("batch", 1), np.dtype(np.float32))]
    max_batch = 8

    def __init__(self, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.delay, self.fail_at, self.calls, self.sizes = delay, fail_at, 0, []

    def infer(self, batch):
        self.calls += 1
        self.sizes.append(len(batch))
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("device lost")
        time.sleep(self.delay)
        return [batch.reshape(len(batch), -1).mean(1, keepdims=True)]

    def close(self):
        pass


def _drain(q: FrameQueue, until_eos: int, timeout: float = 10) -> list:
    items, eos = [], 0
    deadline = time.monotonic() + timeout
    while eos < until_eos and time.monotonic() < deadline:
        item = q.get(timeout=0.2)
        if item is None:
            continue
        items.append(item)
        eos += isinstance(item, EndOfStream)
    return items


def _run_two_streams(backend, n_a: int, n_b: int, **stage_args) -> list:
    """Streams ``a`` (``n_a`` frames) and ``b`` (``n_b``) through an inference stage, each ended by
    its end-of-stream; everything the stage hands on, in order, once it has stopped."""
    ctx = stage_ctx()
    group = QueueGroup()
    qs = {sid: group.add(sid, "inference", 256, "block", None) for sid in ("a", "b")}
    out = FrameQueue("post", 512, "block")
    stage = InferenceStage(ctx, backend, group, out, ["a", "b"], **stage_args)
    stage.start()
    for i in range(max(n_a, n_b)):
        if i < n_a:
            qs["a"].put(frame("a", i))
        if i < n_b:
            qs["b"].put(frame("b", i))
    qs["a"].put(EndOfStream("a"))
    qs["b"].put(EndOfStream("b"))
    items = _drain(out, 2, timeout=30)
    stage.join(5)
    assert not stage.is_alive()
    return items


def test_inference_routes_results_in_order_per_stream():
    backend = FakeBackend()
    items = _run_two_streams(backend, 20, 10, max_batch=4, batch_timeout_ms=5)
    frames = [i for i in items if isinstance(i, Frame)]
    for sid, n in (("a", 20), ("b", 10)):
        mine = [f for f in frames if f.source_id == sid]
        assert [f.seq for f in mine] == list(range(n))
        assert all(float(f.outputs[0][0, 0]) == f.seq for f in mine)  # each result went to its own frame
    assert max(backend.sizes) > 1


def _assert_failure_ends_both_streams(backend, frames: int, **stage_args) -> None:
    """Frames of stream ``a`` (``b`` sends none) into a stage whose backend fails: the stage
    reports the error once and ends BOTH streams with it, and no thread of it is left."""
    ctx = stage_ctx()
    group = QueueGroup()
    qs = {sid: group.add(sid, "inference", 64, "block", None) for sid in ("a", "b")}
    out = FrameQueue("post", 128, "block")
    stage = InferenceStage(ctx, backend, group, out, ["a", "b"], max_batch=1, batch_timeout_ms=1, **stage_args)
    stage.start()
    for i in range(frames):
        qs["a"].put(frame("a", i))
    items = _drain(out, 2)
    stage.join(5)
    assert not stage.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("inferpath-inference")]
    eos = [i for i in items if isinstance(i, EndOfStream)]
    assert sorted(e.source_id for e in eos) == ["a", "b"] and all("device lost" in e.error for e in eos)
    assert ctx.errors and "device lost" in ctx.errors[0][1]


def test_failing_backend_reports_and_ends_every_stream():
    _assert_failure_ends_both_streams(FakeBackend(fail_at=3), 10)


class JitteryBackend(FakeBackend):
    """Calls that take a different time each (a later call often ends first), safe to call from
    several threads; records how many calls overlapped at most."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__(fail_at=fail_at)
        self._lock = threading.Lock()
        self._running = 0
        self.overlap = 0
        self._rng = np.random.default_rng(7)

    def infer(self, batch):
        with self._lock:
            self.calls += 1
            call = self.calls
            self._running += 1
            self.overlap = max(self.overlap, self._running)
            delay = float(self._rng.uniform(0.0, 0.02))
        try:
            if self.fail_at is not None and call >= self.fail_at:
                raise RuntimeError("device lost")
            time.sleep(delay)
            return [batch.reshape(len(batch), -1).mean(1, keepdims=True)]
        finally:
            with self._lock:
                self._running -= 1


def test_overlapping_workers_hand_on_in_order():
    """Two workers run calls side by side; every stream's frames still leave in order, each with
    its own result, exactly once, and each end-of-stream after its stream's last frame."""
    backend = JitteryBackend()
    items = _run_two_streams(backend, 120, 70, max_batch=3, batch_timeout_ms=1, workers=2)
    assert backend.overlap == 2  # the calls really overlapped
    for sid, n in (("a", 120), ("b", 70)):
        mine = [i for i in items if getattr(i, "source_id", None) == sid]
        assert isinstance(mine[-1], EndOfStream) and mine[-1].error is None
        seqs = [f.seq for f in mine[:-1]]
        assert seqs == list(range(n))
        assert all(float(f.outputs[0][0, 0]) == f.seq for f in mine[:-1])


def test_a_failing_worker_ends_every_stream_and_the_other_worker():
    _assert_failure_ends_both_streams(JitteryBackend(fail_at=5), 40, workers=2)


def test_live_calls_go_side_by_side_under_overload_and_back_when_it_eases():
    """A live stream offered 4x what one call at a time takes loses frames: the workers then run
    their calls side by side on the second backend; once the stream slows to a fifth of it, one
    call at a time again. Frames leave in order throughout."""
    one, side = FakeBackend(delay=0.02), FakeBackend(delay=0.025)  # 50/s one at a time; 2 x 40/s side by side
    ctx = stage_ctx()
    group = QueueGroup()
    q = group.add("cam", "inference", 1, "drop_oldest", None)
    out = FrameQueue("post", 4096, "block")
    stage = InferenceStage(ctx, one, group, out, ["cam"], max_batch=1, batch_timeout_ms=0, workers=2,
                           side_backend=side)
    stage.start()
    seq = 0

    def offer(fps: float, seconds: float) -> None:
        nonlocal seq
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            q.put(frame("cam", seq))
            seq += 1
            time.sleep(1 / fps)

    offer(200, 1.5)
    assert stage.side.on and side.calls > 0, (stage.side.offered_fps, side.calls)
    calls_before = one.calls
    offer(10, 2.0)
    assert not stage.side.on, stage.side.offered_fps
    assert one.calls > calls_before  # one call at a time again, on the first backend
    q.put(EndOfStream("cam"))
    items = _drain(out, 1)
    stage.join(5)
    seqs = [f.seq for f in items[:-1]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert stage.side_frames == side.calls and stage.side.switches == 2


class EchoBackend:
    """Returns its input batch: what the stage gave the model, for each frame."""

    name = "echo"
    inputs = [TensorInfo("images", ("batch", 3, 32, 32), np.dtype(np.float32))]
    outputs = [TensorInfo("out", ("batch", 3, 32, 32), np.dtype(np.float32))]
    max_batch = 4

    def infer(self, batch):
        return [batch.copy()]

    def close(self):
        pass


def test_frames_taken_without_a_tensor_are_preprocessed_when_taken():
    """A stream that preprocesses when taken puts raw frames on its queue; the stage letterboxes
    and normalizes them after taking them, exactly as the preprocess stage would (same input to
    the model, same letterbox), stamps and times the stage, runs the frame hooks, and drops a
    frame that cannot be preprocessed without ending the stream or the stage."""
    from pipeline.model import ModelSpec
    from pipeline.preprocess import preprocess

    spec = ModelSpec(input_size=(32, 32))
    ctx = stage_ctx()
    hooked = []
    ctx.frame_hooks.append(lambda f: hooked.append((f.seq, f.tensor is not None)))
    group = QueueGroup()
    q = group.add("a", "inference", 64, "drop_oldest", None)
    out = FrameQueue("post", 64, "block")
    stage = InferenceStage(ctx, EchoBackend(), group, out, ["a"], max_batch=2, batch_timeout_ms=0, spec=spec)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 40, 3), dtype=np.uint8) for _ in range(5)]
    images[3] = np.zeros((0, 0, 3), np.uint8)  # cannot be letterboxed
    for seq, image in enumerate(images):
        q.put(Frame("a", seq, seq / 10, time.monotonic_ns(), image))
    q.put(EndOfStream("a"))
    stage.start()
    items = _drain(out, 1)
    stage.join(5)
    assert not stage.is_alive() and stage.error is None
    frames = [i for i in items if isinstance(i, Frame)]
    assert [f.seq for f in frames] == [0, 1, 2, 4] and isinstance(items[-1], EndOfStream)
    for f in frames:
        tensor, lb = preprocess(images[f.seq], spec)
        assert np.array_equal(f.outputs[0][0], tensor) and f.letterbox == lb
        assert "preprocess" in f.stamps and f.stamps["preprocess"][1] <= f.stamps["inference"][0]
    assert [seq for seq, _ in hooked] == [0, 1, 2, 4] and all(ready for _, ready in hooked)
    assert ctx.metrics.sources["a"].drops == {"error@preprocess": 1}
    assert len(ctx.metrics.stage_values("preprocess", "a")) == 4


def test_a_file_ending_beside_a_camera_stops_batches_waiting():
    """A file (``block``) and a camera (``drop_oldest``): while the file runs a batch waits up to
    the batch timeout to fill; once its end-of-stream is taken, only the camera is left and a
    batch no longer waits."""
    ctx = stage_ctx()
    group = QueueGroup()
    qs = {"file": group.add("file", "inference", 16, "block", None),
          "cam": group.add("cam", "inference", 4, "drop_oldest", None)}
    out = FrameQueue("post", 64, "block")
    stage = InferenceStage(ctx, FakeBackend(), group, out, ["file", "cam"], max_batch=4, batch_timeout_ms=200)
    assert not stage.live and stage.timeout_s == 0.2
    stage.start()
    try:
        qs["file"].put(frame("file", 0))
        qs["file"].put(EndOfStream("file"))
        assert [type(i).__name__ for i in _drain(out, 1)] == ["Frame", "EndOfStream"]
        deadline = time.monotonic() + 5
        while not stage.live and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stage.live and stage.timeout_s == 0.0
    finally:
        qs["cam"].put(EndOfStream("cam"))
        _drain(out, 1)
        stage.join(5)
    assert not stage.is_alive()
