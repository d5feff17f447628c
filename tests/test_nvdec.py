"""NVDEC decode (sources[].decoder) on a fake PyNvVideoCodec: the fake demuxes and "decodes" a real
clip with OpenCV and hands frames over as PyNvVideoCodec does (RGB in a host buffer behind
``GetPtrToPlane(0)``), so what comes out can be compared with the CPU decoder frame by frame.
Real NVDEC runs in scripts/gpu_check.sh."""

from __future__ import annotations

import enum
import json
import logging
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from pipeline.sources import nvdec
from pipeline.sources.file import FileSource
from tests.conftest import VTEST


class FakeCodec(enum.Enum):
    H264 = 4
    HEVC = 8
    VP9 = 10


class FakeFrame:
    """A decoded frame in host memory: interleaved RGB behind a raw pointer."""

    def __init__(self, rgb: np.ndarray) -> None:
        self._rgb = np.ascontiguousarray(rgb)

    def GetPtrToPlane(self, plane):  # noqa: N802 - PyNvVideoCodec's name
        assert plane == 0
        return self._rgb.ctypes.data

    def framesize(self):
        return self._rgb.nbytes


class FakeNvc:
    """``PyNvVideoCodec`` as the reader uses it, over OpenCV (so its frames are the CPU decoder's)."""

    cudaVideoCodec = FakeCodec
    OutputColorType = SimpleNamespace(RGB="RGB", NATIVE="NATIVE")

    def __init__(self, codec=FakeCodec.H264, decoder_error: Exception | None = None,
                 frame_error: Exception | None = None) -> None:
        self.codec, self.decoder_error, self.frame_error = codec, decoder_error, frame_error
        self.decoders: list[dict] = []
        self.decoded = 0

    def CreateDemuxer(self, path):  # noqa: N802
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise RuntimeError(f"cannot open {path}")
        fake = self

        class Demuxer:
            def GetNvCodecId(self):  # noqa: N802
                return fake.codec

            def Width(self):  # noqa: N802
                return cap.get(cv2.CAP_PROP_FRAME_WIDTH)

            def Height(self):  # noqa: N802
                return cap.get(cv2.CAP_PROP_FRAME_HEIGHT)

            def FrameRate(self):  # noqa: N802
                return cap.get(cv2.CAP_PROP_FPS)

            def __iter__(self):
                while True:
                    ok, bgr = cap.read()
                    if not ok:
                        return
                    yield bgr  # a "packet" that decodes to one frame

        return Demuxer()

    def CreateDecoder(self, **kw):  # noqa: N802
        if self.decoder_error is not None:
            raise self.decoder_error
        self.decoders.append(kw)
        fake = self

        class Decoder:
            def Decode(self, packet):  # noqa: N802
                fake.decoded += 1
                if fake.frame_error is not None:
                    raise fake.frame_error
                return [FakeFrame(packet[:, :, ::-1])]  # RGB, as outputColorType=RGB gives

        return Decoder()


@pytest.fixture
def fake_nvc(monkeypatch):
    def install(**kw):
        fake = FakeNvc(**kw)
        monkeypatch.setitem(sys.modules, "PyNvVideoCodec", fake)
        monkeypatch.setattr(nvdec, "_told", set())
        return fake

    return install


def _cpu_frames(n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(VTEST))
    frames = [cap.read()[1] for _ in range(n)]
    cap.release()
    return frames


def test_nvdec_capture_gives_the_cpu_decoders_frames_in_order(fake_nvc):
    fake = fake_nvc()
    cap = nvdec.NvdecCapture(str(VTEST))
    assert cap.isOpened() and cap.codec == "H264"
    assert fake.decoders == [{"gpuid": 0, "codec": FakeCodec.H264, "cudacontext": 0, "cudastream": 0,
                              "usedevicememory": False, "outputColorType": "RGB"}]
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (768, 576)
    assert cap.get(cv2.CAP_PROP_FPS) > 0
    assert cap.grab()  # frame 0, not converted
    for i, expected in enumerate(_cpu_frames(6)[1:], start=1):
        ok, frame = cap.read()
        assert ok and frame.dtype == np.uint8 and frame.flags.c_contiguous
        np.testing.assert_array_equal(frame, expected, err_msg=f"frame {i}")  # BGR, same pixels
    cap.release()
    assert not cap.isOpened() and cap.read() == (False, None)


@pytest.mark.parametrize(
    "requested,backend,kind,present,expected",
    [
        ("auto", "tensorrt", "file", True, "nvdec"),
        ("auto", "tensorrt", "file", False, "cpu"),  # no PyNvVideoCodec
        ("auto", "onnxruntime", "file", True, "cpu"),  # no GPU in use
        ("auto", "tensorrt", "rtsp", True, "cpu"),  # streams only when asked for by name
        ("nvdec", "onnxruntime", "rtsp", False, "nvdec"),  # asked for: tried, and falls back at open
        ("cpu", "tensorrt", "file", True, "cpu"),
    ],
)
def test_resolve_decoder(requested, backend, kind, present, expected):
    assert nvdec.resolve_decoder(requested, backend, kind, nvc_present=lambda: present) == expected


def test_resolve_decoder_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="auto, cpu, nvdec"):
        nvdec.resolve_decoder("vaapi", "tensorrt")


@pytest.mark.parametrize(
    "setup,reason",
    [
        ({"codec": FakeCodec.VP9}, "codec FakeCodec.VP9 is not one of H264, HEVC"),
        ({"decoder_error": RuntimeError("no CUDA-capable device is detected")}, "no NVDEC decoder"),
        ({"frame_error": AttributeError("'DecodedFrame' object has no attribute 'framesize'")},
         "cannot decode a first frame"),
        (None, "PyNvVideoCodec cannot be imported"),
    ],
    ids=["codec", "no-gpu", "api-mismatch", "no-package"],
)
def test_file_source_falls_back_to_the_cpu_with_one_log_line(fake_nvc, monkeypatch, caplog, setup, reason):
    if setup is None:
        monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)  # import fails
        monkeypatch.setattr(nvdec, "_told", set())
    else:
        fake_nvc(**setup)
    src = FileSource(str(VTEST), "cam", loop=True)
    src.decoder = "nvdec"
    with caplog.at_level(logging.WARNING, logger="pipeline.sources.nvdec"):
        src.open()
        frames = [src.read() for _ in range(3)]
        src._rewind()  # a looping file reopens: still one line
        src.close()
    assert [r.getMessage() for r in caplog.records if "decoding on the CPU" in r.getMessage()] == [
        next(r.getMessage() for r in caplog.records)]
    assert reason in caplog.text and "cam: decoding on the CPU" in caplog.text
    np.testing.assert_array_equal(frames[2].image, _cpu_frames(3)[2])


def _detections(path):
    return [(r["seq"], json.dumps(r["detections"], sort_keys=True)) for r in map(json.loads, path.open())]


def test_pipeline_decodes_on_nvdec_with_the_cpu_decoders_detections(fake_nvc, tmp_path, no_thread_leak):
    """A whole run with decoder: nvdec gives every frame, in order, with the detections of the CPU
    decoder's run."""
    from pipeline.config import build_config
    from pipeline.runtime import Pipeline

    fake = fake_nvc()
    out = {}
    for decoder in ("cpu", "nvdec"):
        cfg = build_config({
            "sources": [{"uri": str(VTEST), "id": "cam", "max_frames": 12, "decoder": decoder}],
            "output": {"dir": str(tmp_path / decoder), "video": False}, "pipeline": {"progress": False},
        })
        summary = Pipeline(cfg).run()
        assert summary.sources[0].frames_out == 12
        out[decoder] = _detections(tmp_path / decoder / "cam.jsonl")
    assert fake.decoded >= 12  # the nvdec run decoded through PyNvVideoCodec
    assert [s for s, _ in out["nvdec"]] == list(range(12))
    assert out["nvdec"] == out["cpu"]
