"""Delivery bookkeeping per stream: what the driver has received, and where a stream resumes
after its worker is lost.

* A **file** (read once, not looped) is resumable by frame index: its seq *is* the frame index
  (a worker started at ``start_frame`` keeps counting from there). The driver accepts only the
  next frame it expects, so a frame that reaches it twice (it never should) is skipped, and
  after a loss the file resumes at the first frame not yet received: every frame exactly once,
  in order.
* A **live** stream (camera, realtime or looped file) resumes from live: the new worker's frames
  get seqs after the gap, and the frames the gap held (read and lost in flight on the dead
  worker, and those the camera sent while no worker read it, estimated from the stream's rate)
  are counted as drops ``worker_lost``.

A resumed stream runs on its worker under the id ``<id>.part<k>`` so the worker's annotated
video of the new part never overwrites the one before; the driver maps it back.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from pipeline.config import SourceConfig
from pipeline.sources.base import source_kind

WORKER_LOST = "worker_lost"


def resumable(scfg: SourceConfig) -> bool:
    """A file read once, whose frame index is its seq."""
    return source_kind(scfg.uri) == "file" and not scfg.loop and not scfg.realtime


@dataclass
class StreamState:
    id: str
    config: SourceConfig
    cost: float
    worker: int = -1  # index of the worker slot that runs it
    part: int = 0  # 0, then 1, 2, ... after each resume
    next_seq: int = 0  # file: the next frame index expected; live: the next seq to give out
    seq_offset: int = 0  # live: added to the worker's seq in this part
    received: int = 0  # frames received in all parts
    received_part: int = 0  # frames received from the current part
    duplicates: int = 0
    last_stats: dict = field(default_factory=dict)  # the current part's counters, as last polled
    counted_in: int = 0  # live: the current part's frames_in already added to the driver's metrics
    counted_drops: dict[str, int] = field(default_factory=dict)  # the current part's drops already added
    counted_events: dict[str, int] = field(default_factory=dict)  # and its events
    input_fps: float = 0.0  # the camera's rate, measured from the frames its workers read
    _in_first: tuple[float, int] | None = None
    reported_fps: float = 0.0  # the rate the stream declares (its header), kept across parts
    first_at: float = 0.0
    last_at: float = 0.0
    lost_at: float | None = None  # live: the lost worker's last poll (until the next part delivers)
    lost_counted: int = 0  # live: frames of the gap already counted (in flight on the lost worker)
    done: bool = False
    closed: bool = False  # a service's stream whose driver-side sinks were closed at its end
    summary: object = None  # the worker's SourceSummary of the last part
    parts: list[dict] = field(default_factory=list)  # per part: worker, pid, start

    def __post_init__(self) -> None:
        self.resumable = resumable(self.config)
        self.next_seq = self.config.start_frame if self.resumable else 0

    @property
    def live(self) -> bool:
        """A camera or a file read at its own pace (as a local source's ``is_live``)."""
        return source_kind(self.config.uri) != "file" or self.config.realtime

    @property
    def part_id(self) -> str:
        return self.id if self.part == 0 else f"{self.id}.part{self.part}"

    def part_config(self) -> SourceConfig:
        """The config the worker runs for the current part (a file starts where delivery stopped)."""
        start = self.next_seq if self.resumable else self.config.start_frame
        return dataclasses.replace(self.config, id=self.part_id, start_frame=start)

    def accept(self, worker_seq: int) -> int | None:
        """The driver's seq for a record, or None when it was already received (skip it)."""
        if self.resumable:
            if worker_seq < self.next_seq:
                self.duplicates += 1
                return None
            seq = worker_seq
        else:
            seq = self.seq_offset + worker_seq
        now = time.monotonic()
        self.first_at = self.first_at or now
        self.last_at = now
        self.next_seq = seq + 1
        self.received += 1
        self.received_part += 1
        return seq

    def note_input(self, now: float, frames_in: int) -> None:
        """A poll's count of frames read by the current part: the stream's input rate."""
        self.reported_fps = self.last_stats.get("fps", 0.0) or self.reported_fps
        if frames_in <= 0:
            return
        if self._in_first is None:
            self._in_first = (now, frames_in)
        t0, n0 = self._in_first
        if now - t0 >= 0.5 and frames_in > n0:
            self.input_fps = (frames_in - n0) / (now - t0)

    def rate(self) -> float:
        """Frames the stream sends per second: as read by its workers, else as it reports (0 until known)."""
        return self.input_fps or self.last_stats.get("fps", 0.0) or self.reported_fps

    def lost_in_flight(self) -> int:
        """Live: frames the lost part read but neither delivered to the driver nor dropped."""
        st = self.last_stats
        return max(0, st.get("frames_in", 0) - self.received_part - sum(st.get("drops", {}).values()))

    def resume(self, lost_at: float, in_flight: int) -> None:
        """Start the next part: a file at ``next_seq``; a live stream from live, its gap closed
        by :meth:`close_gap` when the new part's first frame arrives."""
        self.part += 1
        if not self.resumable:
            self.lost_at = lost_at
            self.lost_counted = in_flight
        self.received_part = 0
        self.last_stats = {}
        self.counted_in = 0
        self.counted_drops = {}
        self.counted_events = {}
        self._in_first = None
        self.done = False

    def close_gap(self, now: float, read: int) -> int:
        """Live, once the new part has read its first frames (``read`` of them by ``now``): the
        frames the camera sent while no worker read it (time since the lost worker's last poll x
        the stream's rate, less those already counted in flight and those the new part has read);
        the new part's seqs start after them."""
        if self.lost_at is None:
            return 0
        gap = max(0, round((now - self.lost_at) * self.rate()) - self.lost_counted - read)
        self.next_seq += self.lost_counted + gap
        self.seq_offset = self.next_seq
        self.lost_at = None
        return gap


__all__ = ["StreamState", "WORKER_LOST", "resumable"]
