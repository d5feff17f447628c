#!/usr/bin/python3
"""Loop a video file as a live H.264 RTSP stream (test / benchmark camera).

Run with Debian's system interpreter (PyGObject / GstRtspServer are not
importable from a virtualenv); install the packages with
scripts/install_system_deps.sh first:

    /usr/bin/python3 scripts/rtsp_server.py --video sample.avi --port 8554 \
        [--host 127.0.0.1] [--mount /stream] [--fps N] \
        [--user U --password P] [--no-loop] [--delay-ms MS]

Design
------
* One decoding pipeline ``filesrc ! decodebin ! videoconvert !
  video/x-raw,format=I420 ! appsink`` is owned by a producer thread.  The
  thread pulls frames at the target rate (paced against a monotonic clock,
  like a real camera) and, at end of file, flush-seeks back to the start (or
  rebuilds the decoder if the seek fails), so the loop is seamless.
* The RTSP factory is *shared*: all clients of a mount see the same media,
  whose pipeline is ``appsrc ! videoconvert ! x264enc ! rtph264pay``.  Each
  media's appsrc is registered in ``media-configure`` and unregistered when
  the media is unprepared (after its last client leaves); the next client
  gets a fresh media, so sequential connections work.
* Every frame pushed into a media's appsrc gets PTS ``base + k * duration``
  (k counts frames pushed into *that* media, never reset at the loop point),
  where ``base`` is the media pipeline's running time at its first frame.
* While no client is connected the decoder idles.

Prints exactly one line ``READY rtsp://HOST:PORT/MOUNT`` (flushed) once the
server is listening.  SIGTERM / SIGINT exit cleanly with status 0.  A missing
or undecodable video, or a port that cannot be bound, prints one line on
stderr and exits with status 2.  With ``--no-loop`` the file is played once
(starting with the first client), end-of-stream is sent to the clients and
the server exits with status 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import NoReturn

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstApp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstApp, GstRtspServer  # noqa: F401
except (ImportError, ValueError) as exc:  # pragma: no cover - environment
    print(
        f"rtsp_server: cannot import GStreamer RTSP bindings ({exc}); run with "
        "/usr/bin/python3 after scripts/install_system_deps.sh",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(2)


def log(msg: str) -> None:
    print(f"rtsp_server: {msg}", file=sys.stderr, flush=True)


class Decoder:
    """filesrc ! decodebin ! videoconvert ! I420 ! appsink, pulled on demand."""

    def __init__(self, path: str):
        self.path = path
        self.pipeline = None
        self.sink = None
        self._build()

    def _build(self) -> None:
        self.close()
        desc = (
            'filesrc name=file ! decodebin ! videoconvert ! '
            'video/x-raw,format=I420 ! '
            'appsink name=sink sync=false max-buffers=4 drop=false '
            'enable-last-sample=false'
        )
        pipeline = Gst.parse_launch(desc)
        pipeline.get_by_name("file").set_property("location", self.path)
        self.pipeline = pipeline
        self.sink = pipeline.get_by_name("sink")
        self._error = None
        pipeline.set_state(Gst.State.PLAYING)

    def _poll(self) -> None:
        """Drain the bus (nobody else reads it), remembering the first error."""
        bus = self.pipeline.get_bus()
        while True:
            msg = bus.pop()
            if msg is None:
                return
            if msg.type == Gst.MessageType.ERROR and self._error is None:
                err, _dbg = msg.parse_error()
                self._error = " ".join(err.message.split())

    def error(self) -> str | None:
        """Return (and clear) the first error posted by the decoder."""
        self._poll()
        err, self._error = self._error, None
        return err

    def pull(self, timeout_s: float = 5.0, cancelled=lambda: False):
        """Next buffer, or None at end of stream / error / timeout / cancel.

        Only the buffer is kept: appsink recycles its GstSample and complains
        (gst_sample_set_caps CRITICAL) if we still hold a reference to it.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            sample = self.sink.try_pull_sample(Gst.SECOND // 5)
            if sample is not None:
                return sample.get_buffer()
            self._poll()
            if (self.sink.is_eos() or self._error is not None or cancelled()
                    or time.monotonic() >= deadline):
                return None

    def caps(self):
        return self.sink.get_static_pad("sink").get_current_caps()

    def rewind(self) -> bool:
        """Seek to the start; rebuild the pipeline if the seek is refused."""
        ok = self.pipeline.seek_simple(
            Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0
        )
        if not ok:
            log("seek to start failed, rebuilding decoder")
            self._build()
        return True

    def rebuild(self) -> None:
        self._build()

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.set_state(Gst.State.NULL)
            self.pipeline = None
            self.sink = None


class Producer(threading.Thread):
    """Paces decoded frames into the appsrc of every live media."""

    def __init__(self, decoder: Decoder, first_buffer, fps_n: int, fps_d: int,
                 loop: bool, on_finished):
        super().__init__(name="rtsp-producer", daemon=True)
        self.decoder = decoder
        self.pending = first_buffer  # prerolled first frame, pushed first
        self.duration = Gst.util_uint64_scale_int(Gst.SECOND, fps_d, fps_n)
        self.period = fps_d / fps_n
        self.loop = loop
        self.on_finished = on_finished
        self.cond = threading.Condition()
        self.targets: dict = {}  # appsrc -> [base_pts or None, frames pushed]
        self.stopping = False

    # -- registration (called from the GLib main loop) ----------------------
    def add(self, appsrc) -> None:
        with self.cond:
            self.targets[appsrc] = [None, 0]
            self.cond.notify_all()

    def remove(self, appsrc) -> None:
        with self.cond:
            self.targets.pop(appsrc, None)

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    # -- thread body ---------------------------------------------------------
    def _next_buffer(self):
        if self.pending is not None:
            buf, self.pending = self.pending, None
            return buf
        buf = self.decoder.pull(cancelled=self._cancelled)
        if buf is not None or self.stopping:
            return buf
        err = self.decoder.error()
        if err:
            log(f"decoder error: {err}; rebuilding")
            self.decoder.rebuild()
        elif not self.loop:
            return None
        else:
            self.decoder.rewind()
        buf = self.decoder.pull(cancelled=self._cancelled)
        if buf is None and not self.stopping:
            # the seek produced nothing: start from scratch
            self.decoder.rebuild()
            buf = self.decoder.pull(cancelled=self._cancelled)
        return buf

    def _cancelled(self) -> bool:
        return self.stopping

    def run(self) -> None:
        next_t = None
        while True:
            with self.cond:
                while not self.targets and not self.stopping:
                    next_t = None  # idle: restart pacing when a client comes
                    self.cond.wait()
                if self.stopping:
                    return
            buf = self._next_buffer()
            if self.stopping:
                return
            if buf is None:
                with self.cond:
                    for appsrc in list(self.targets):
                        appsrc.emit("end-of-stream")
                self.on_finished()
                return
            now = time.monotonic()
            if next_t is None:
                next_t = now
            elif next_t > now:
                time.sleep(next_t - now)
            elif now - next_t > 1.0:  # fell far behind (e.g. stalled): resync
                next_t = now
            next_t += self.period
            self._push(buf)
            del buf

    def _push(self, src_buf) -> None:
        with self.cond:
            targets = list(self.targets.items())
        for appsrc, state in targets:
            if appsrc.get_state(0)[1] != Gst.State.PLAYING:
                continue  # not streaming yet: don't queue stale frames
            if state[0] is None:
                clock = appsrc.get_clock()
                base = 0
                if clock is not None:
                    base = max(0, clock.get_time() - appsrc.get_base_time())
                state[0] = base
            buf = src_buf.copy()  # shares memory; metadata writable
            buf.pts = state[0] + state[1] * self.duration
            buf.dts = Gst.CLOCK_TIME_NONE
            buf.duration = self.duration
            state[1] += 1
            appsrc.emit("push-buffer", buf)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, help="video file to stream")
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mount", default="/stream")
    p.add_argument("--fps", type=float, default=None,
                   help="output frame rate (default: the file's native rate)")
    p.add_argument("--delay-ms", type=float, default=0.0,
                   help="hold every encoded frame this long before it is sent (a slow network: "
                        "the RTP timestamps and RTCP sender reports keep the capture time)")
    p.add_argument("--user", default=None)
    p.add_argument("--password", default=None)
    p.add_argument("--no-loop", action="store_true",
                   help="play the file once, send EOS and exit")
    args = p.parse_args(argv)
    if (args.user is None) != (args.password is None):
        p.error("--user and --password must be given together")
    if not args.mount.startswith("/"):
        args.mount = "/" + args.mount
    if args.fps is not None and args.fps <= 0:
        p.error("--fps must be positive")
    return args


def fail(msg: str) -> NoReturn:  # noqa: F821
    print(f"rtsp_server: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def open_video(path: str):
    """Preroll the decoder; return (decoder, first_buffer, caps structure)."""
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        fail(f"cannot read video file: {path}")
    try:
        decoder = Decoder(path)
    except GLib.Error as exc:
        fail(f"cannot build decoder for {path}: {exc.message}")
    buf = decoder.pull(timeout_s=10.0)
    if buf is None:
        err = decoder.error() or "no video frames decoded"
        decoder.close()
        fail(f"cannot decode video file {path}: {err}")
    return decoder, buf, decoder.caps().get_structure(0)


def main(argv=None) -> int:
    args = parse_args(argv)
    Gst.init(None)

    decoder, first, st = open_video(os.path.abspath(args.video))
    width, height = st.get_value("width"), st.get_value("height")
    ok, fps_n, fps_d = st.get_fraction("framerate")
    if args.fps is not None:
        frac = Gst.util_double_to_fraction(args.fps)
        fps_n, fps_d = frac[0], frac[1]
    elif not ok or fps_n <= 0 or fps_d <= 0:
        fps_n, fps_d = 25, 1  # variable / unknown rate
    fps = fps_n / fps_d
    par = "1/1"
    ok_par, par_n, par_d = st.get_fraction("pixel-aspect-ratio")
    if ok_par and par_n > 0 and par_d > 0:
        par = f"{par_n}/{par_d}"
    caps = (f"video/x-raw,format=I420,width={width},height={height},"
            f"framerate={fps_n}/{fps_d},pixel-aspect-ratio={par}")
    gop = max(1, int(round(fps)))
    # --delay-ms: a queue that lets a frame go only once frames delay_ms newer stand behind it
    delay = (f'! queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 '
             f'min-threshold-time={int(args.delay_ms * 1e6)} ' if args.delay_ms > 0 else '')
    launch = (
        f'( appsrc name=src is-live=true format=time do-timestamp=false '
        f'block=false max-buffers=8 leaky-type=downstream caps="{caps}" '
        f'! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast '
        f'key-int-max={gop} '
        f'{delay}! rtph264pay name=pay0 pt=96 config-interval=1 )'
    )

    loop = GLib.MainLoop()
    exit_code = [0]

    def finished():  # producer thread: --no-loop reached EOF
        GLib.timeout_add(1000, lambda: (loop.quit(), False)[1])

    producer = Producer(decoder, first, fps_n, fps_d, not args.no_loop,
                        finished)
    del first, st  # don't pin the decoder's first buffer / caps

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)

    def on_unprepared(media, appsrc):
        producer.remove(appsrc)

    def on_element_added(_bin, _sub_bin, element):
        # RTCP sender reports tie RTP time to the frame's capture time, as a camera's do (GStreamer's
        # default is the send time, which would hide --delay-ms from the receiver)
        factory_ = element.get_factory()
        if factory_ is not None and factory_.get_name() == "rtpbin":
            element.set_property("rtcp-sync-send-time", False)

    def on_media_configure(_factory, media):
        element = media.get_element()
        appsrc = element.get_child_by_name("src")
        media.connect("unprepared", on_unprepared, appsrc)
        pipeline = element.get_parent()
        if pipeline is not None:
            pipeline.connect("deep-element-added", on_element_added)
        producer.add(appsrc)

    factory.connect("media-configure", on_media_configure)

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user,
                                                         args.password), token)
        server.set_auth(auth)
        factory.add_role_from_structure(Gst.Structure.new_from_string(
            "user, media.factory.access=(boolean)true, "
            "media.factory.construct=(boolean)true"))

    server.get_mount_points().add_factory(args.mount, factory)

    try:
        source = server.create_source(None)
    except GLib.Error as exc:
        decoder.close()
        fail(f"cannot listen on {args.host}:{args.port}: {exc.message}")
    source.attach(None)

    def on_signal(*_):
        loop.quit()
        return GLib.SOURCE_REMOVE

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, on_signal)

    producer.start()
    port = server.get_bound_port()
    print(f"READY rtsp://{args.host}:{port}{args.mount}", flush=True)
    log(f"serving {args.video} {width}x{height} @ {fps:.3f} fps "
        f"({'once' if args.no_loop else 'looped'})")
    try:
        loop.run()
    finally:
        producer.stop()
        producer.join(timeout=2.0)
        source.destroy()
        decoder.close()
    return exit_code[0]


if __name__ == "__main__":
    sys.exit(main())
