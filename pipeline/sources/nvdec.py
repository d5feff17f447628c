"""NVDEC decode through PyNvVideoCodec: ``sources[].decoder: auto | cpu | nvdec``.

On a GPU node the CPU decoder becomes the next bound (about 15 core-ms per 1080p frame). With
``nvdec`` an H.264/HEVC file (or RTSP stream) is demuxed by PyNvVideoCodec's FFmpeg demuxer and
decoded by the GPU's NVDEC engine into RGB, then copied once to host memory as the BGR frame every
later stage takes. ``auto`` picks NVDEC when the backend is TensorRT (a GPU is in use anyway) and
PyNvVideoCodec imports; ``cpu`` is OpenCV/FFmpeg as before. Where NVDEC cannot be used (the package
or a GPU missing, a codec NVDEC does not take) the source falls back to the CPU decoder and says so
in one log line.

:class:`NvdecCapture` has the subset of ``cv2.VideoCapture`` the sources use (``isOpened``,
``read``, ``grab``, ``get``, ``release``), so a source swaps its capture, not its logic. The calls
follow PyNvVideoCodec 2.x's documented core API: ``CreateDemuxer(path)``, ``GetNvCodecId()``,
``CreateDecoder(gpuid, codec, cudacontext, cudastream, usedevicememory, outputColorType)``,
iterating the demuxer for packets, ``Decode(packet)`` for frames, and a host frame's
``GetPtrToPlane(0)`` / ``framesize()``. PyNvVideoCodec is imported lazily and never required.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from pipeline.sources.base import source_kind

log = logging.getLogger(__name__)

DECODERS = ("auto", "cpu", "nvdec")
NVDEC_CODECS = ("H264", "HEVC")  # what ``decoder: nvdec`` decodes; anything else is decoded on the CPU
INSTALL_HINT = "pip install 'inferpath[nvdec]' (NVIDIA's PyNvVideoCodec)"


class NvdecUnavailable(Exception):
    """Why NVDEC cannot decode this source (the source then decodes on the CPU)."""


def import_nvc() -> Any:
    """``import PyNvVideoCodec`` or :class:`NvdecUnavailable` with the reason."""
    try:
        return importlib.import_module("PyNvVideoCodec")
    except Exception as exc:  # ImportError, or OSError for a missing libnvcuvid
        raise NvdecUnavailable(f"PyNvVideoCodec cannot be imported ({type(exc).__name__}: {exc}); "
                               f"{INSTALL_HINT}") from None


def resolve_decoder(requested: str, backend_name: str, kind: str = "file",
                    nvc_present: Callable[[], bool] | None = None) -> str:
    """``cpu`` or ``nvdec`` for a source's ``decoder`` setting. ``auto`` is ``nvdec`` for a file
    when the backend is TensorRT and PyNvVideoCodec imports, else ``cpu``. A stream (``kind``
    rtsp) gets NVDEC only when asked for by name: PyNvVideoCodec's demuxer takes no read timeout,
    so a stalled camera is noticed only by the stream's watchdog, not by a failed read."""
    if requested not in DECODERS:
        raise ValueError(f"decoder: expected one of {', '.join(DECODERS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if backend_name != "tensorrt" or kind != "file":
        return "cpu"
    present = nvc_present or _nvc_importable
    return "nvdec" if present() else "cpu"


def _nvc_importable() -> bool:
    try:
        import_nvc()
    except NvdecUnavailable:
        return False
    return True


def apply_decoders(sources: Iterable[Any], configs: Iterable[Any], backend_name: str) -> None:
    """Set each source's ``decoder`` (``cpu``/``nvdec``) from its config and the backend."""
    for src, cfg in zip(sources, configs):
        src.decoder = resolve_decoder(getattr(cfg, "decoder", "cpu"), backend_name, source_kind(cfg.uri))


def open_capture(uri: str, decoder: str, fallback: Callable[[], Any], device: int = 0, label: str = "") -> Any:
    """An opened NVDEC capture of ``uri`` when ``decoder`` is ``nvdec`` and NVDEC can decode it;
    otherwise ``fallback()`` (the CPU capture), after one log line saying why."""
    if decoder != "nvdec":
        return fallback()
    try:
        return NvdecCapture(uri, device)
    except NvdecUnavailable as exc:
        if label not in _told:  # once per source, not at every reopen of a looping file or stream
            _told.add(label)
            log.warning("%s: decoding on the CPU: NVDEC cannot decode it (%s)", label or "source", exc)
        return fallback()


_told: set[str] = set()


class NvdecCapture:
    """A ``cv2.VideoCapture``-like reader that decodes on the GPU (see the module docstring)."""

    def __init__(self, uri: str, device: int = 0, nvc: Any = None) -> None:
        self._nvc = nvc if nvc is not None else import_nvc()
        nvc = self._nvc
        try:
            self._demuxer = nvc.CreateDemuxer(uri)
            codec = self._demuxer.GetNvCodecId()
        except Exception as exc:  # FFmpeg could not open or parse it
            raise NvdecUnavailable(f"the demuxer cannot open it ({type(exc).__name__}: {exc})") from None
        names = {getattr(nvc.cudaVideoCodec, n, None): n for n in NVDEC_CODECS}
        if codec not in names:
            raise NvdecUnavailable(f"codec {codec} is not one of {', '.join(NVDEC_CODECS)}")
        self.codec = names[codec]
        try:
            self._decoder = nvc.CreateDecoder(gpuid=device, codec=codec, cudacontext=0, cudastream=0,
                                              usedevicememory=False, outputColorType=nvc.OutputColorType.RGB)
        except Exception as exc:  # no GPU, no NVDEC, or a driver without this codec
            raise NvdecUnavailable(f"no NVDEC decoder ({type(exc).__name__}: {exc})") from None
        self._packets = iter(self._demuxer)
        self._frames: deque[Any] = deque()
        self._open = True
        self.frames_decoded = 0
        # Decode and convert the first frame now: an API or driver mismatch then shows at open, where
        # the source can still decode on the CPU, not in the middle of the run.
        try:
            first = self._next()
            self._first = None if first is None else self._to_bgr(first)
        except Exception as exc:
            raise NvdecUnavailable(f"cannot decode a first frame ({type(exc).__name__}: {exc})") from None

    def isOpened(self) -> bool:  # noqa: N802 - cv2.VideoCapture's name
        return self._open

    def get(self, prop: int) -> float:
        """FPS, width, height and frame count as ``cv2.CAP_PROP_*`` asks (0 when not known)."""
        import cv2

        getters = {cv2.CAP_PROP_FPS: "FrameRate", cv2.CAP_PROP_FRAME_WIDTH: "Width",
                   cv2.CAP_PROP_FRAME_HEIGHT: "Height"}
        name = getters.get(prop)
        if name is None or not hasattr(self._demuxer, name):
            return 0.0
        try:
            return float(getattr(self._demuxer, name)())
        except Exception:
            return 0.0

    def _next(self) -> Any | None:
        """The next decoded frame (still in the decoder's host buffer), or None at the end."""
        while not self._frames:
            packet = next(self._packets, None)
            if packet is None:
                return None
            self._frames.extend(self._decoder.Decode(packet))
        return self._frames.popleft()

    def grab(self) -> bool:
        if not self._open:
            return False
        if self._first is not None:
            self._first = None
            self.frames_decoded += 1
            return True
        frame = self._next()
        if frame is None:
            return False
        self.frames_decoded += 1
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        """(True, a BGR ``uint8`` frame ``[H, W, 3]``) or (False, None) at the end."""
        if not self._open:
            return False, None
        if self._first is not None:
            first, self._first = self._first, None
            self.frames_decoded += 1
            return True, first
        frame = self._next()
        if frame is None:
            return False, None
        self.frames_decoded += 1
        return True, self._to_bgr(frame)

    def _to_bgr(self, frame: Any) -> np.ndarray:
        width, height = self.get_size()
        if not (width and height):  # a demuxer without the header's size: the frame's own shape
            height, width = (int(d) for d in tuple(frame.shape)[:2])
        size = int(frame.framesize())
        if size != width * height * 3:
            raise ValueError(f"NVDEC frame of {size} bytes is not {width}x{height} RGB")
        raw = (ctypes.c_uint8 * size).from_address(int(frame.GetPtrToPlane(0)))
        rgb = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
        return np.ascontiguousarray(rgb[:, :, ::-1])  # a copy: the decoder reuses its buffer

    def get_size(self) -> tuple[int, int]:
        import cv2

        return int(self.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.get(cv2.CAP_PROP_FRAME_HEIGHT))

    def release(self) -> None:
        self._open = False
        self._first = None
        self._frames.clear()
        self._decoder = None
        self._demuxer = None
