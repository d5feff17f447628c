"""TensorRT on a real GPU: engines vs ONNX Runtime, INT8, per-thread contexts, the CUDA module.

Skipped without a GPU and TensorRT; ``scripts/gpu_check.sh`` runs them with ``--require-gpu``, which
turns every such skip into a failure (see tests/conftest.py), so a GPU run that tested nothing fails.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pipeline.errors import BackendUnavailableError


def _cuda_reason() -> str | None:
    """Why no CUDA device is usable through cuda-python (the backend's default binding), or None.
    Asks CUDA itself, not nvidia-smi, which a container may lack."""
    from pipeline.backends.cuda import open_cuda

    try:
        open_cuda("cuda-python", 0)
    except Exception as exc:  # BackendUnavailableError (no cuda-python), CudaError (no device/driver)
        return f"no CUDA device through cuda-python: {exc}"
    return None


def _gpu_reason() -> str | None:
    from pipeline.backends.tensorrt import import_tensorrt

    try:
        import_tensorrt()
    except BackendUnavailableError as exc:  # the real import error, e.g. a missing libnvinfer
        return str(exc)
    return _cuda_reason()


CUDA_REASON = _cuda_reason()
GPU_REASON = _gpu_reason()
gpu = pytest.mark.skipif(GPU_REASON is not None, reason=GPU_REASON or "")


@pytest.fixture(scope="module")
def gpu_setup(tmp_path_factory):
    import cv2

    from pipeline.model import bundled_model_path

    model = bundled_model_path()
    if not model.exists():
        pytest.skip("bundled model not built")
    cap = cv2.VideoCapture("sample_videos/vtest.avi")
    ok, frame = cap.read()
    cap.release()
    if not ok:
        pytest.skip("sample_videos/vtest.avi missing")
    return model, frame, tmp_path_factory.mktemp("engines")


def _backend(model, cache, precision="auto", max_batch=4):
    from pipeline.backends.base import BackendOptions
    from pipeline.backends.tensorrt import TensorRTBackend
    from pipeline.config import TensorRTConfig

    cfg = TensorRTConfig(precision=precision, cache_dir=str(cache))
    return TensorRTBackend(str(model), BackendOptions(max_batch=max_batch, extra={"tensorrt": cfg}))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision,tol,box_tol", [("fp32", 1e-2, 0.25), ("fp16", 0.1, 2.0)])
def test_engine_matches_onnxruntime(gpu_setup, precision, tol, box_tol):
    from pipeline.config import Config
    from pipeline.precision import Detector
    from pipeline.precision_cli import run_backends
    from pipeline.preprocess import preprocess

    model, frame, cache = gpu_setup
    with Detector(Config(), model, backends=run_backends()) as ref:  # the onnxruntime backend, as the pipeline runs it
        x, _ = preprocess(frame, ref.spec)
        batch = np.stack([x, x])
        expected = ref.backend.infer(batch)[0]
    be = _backend(model, cache, precision)
    try:
        assert be.max_batch == 4 and not isinstance(be.inputs[0].shape[0], int)  # a dynamic batch axis
        out = be.infer(batch)[0]
        assert out.shape == expected.shape
        # compare where it matters: the class scores (rows 4:) of every candidate, and the boxes
        # (rows 0:4, in input pixels) of the confident ones
        assert np.abs(out[:, 4:] - expected[:, 4:]).max() < tol
        confident = expected[:, 4:].max(axis=1) > 0.3  # [B, candidates]
        assert confident.sum() >= 2, "the sample frame should give confident candidates"
        boxes, ref_boxes = out[:, :4].transpose(0, 2, 1), expected[:, :4].transpose(0, 2, 1)
        assert np.abs(boxes[confident] - ref_boxes[confident]).max() < box_tol
    finally:
        be.close()
    stamp = (be.engine_path.stat().st_mtime_ns, be.engine_path.read_bytes())
    be2 = _backend(model, cache, precision)  # second construction loads from cache: no rebuild
    try:
        assert be2.engine_path == be.engine_path and not be2.built
        assert (be2.engine_path.stat().st_mtime_ns, be2.engine_path.read_bytes()) == stamp
    finally:
        be2.close()


@pytest.mark.gpu
@gpu
def test_int8_engine_and_thread_local_contexts(gpu_setup, tmp_path):
    from pipeline.model import load_spec
    from pipeline.precision import quantize_int8, read_frames
    from pipeline.preprocess import preprocess

    model, frame, cache = gpu_setup
    frames, _ = read_frames("sample_videos/vtest.avi", 8)
    out = quantize_int8(model, frames, tmp_path / "int8.onnx", target="tensorrt")
    be = _backend(out.output, cache)
    try:
        assert be.plan.precision == "int8"
        x, _ = preprocess(frame, load_spec(out.output))
        results, errors = {}, []

        def worker(i):
            try:
                results[i] = be.infer(np.stack([x] * (i + 1)))[0]
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
            assert not t.is_alive()
        assert not errors
        assert len(be._states) == 3  # one context + stream per thread
        np.testing.assert_allclose(results[0][0], results[2][0], atol=1e-3)
    finally:
        be.close()


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_REASON is not None, reason=CUDA_REASON or "")
def test_cuda_module_round_trip_on_the_gpu():
    """The CUDA memory module on a real device, without TensorRT: pinned and device buffers,
    async copies on a stream in both directions, and event timing."""
    from pipeline.backends.cuda import open_cuda

    api = open_cuda("cuda-python", 0)
    api.thread_enter()
    try:
        assert api.device_name() and api.compute_capability()[0] >= 5
        data = np.random.default_rng(0).standard_normal((4, 3, 416, 416)).astype(np.float32)
        with api.stream() as stream, api.event() as start, api.event() as end:
            dev = api.alloc(data.nbytes)
            host_in = api.alloc_pinned(data.nbytes)
            host_out = api.alloc_pinned(data.nbytes)
            src = host_in.view(np.float32, data.shape)
            np.copyto(src, data)
            dst = host_out.view(np.float32, data.shape)
            dst[...] = 0
            start.record(stream)
            api.copy_htod_async(dev, src, stream)
            api.copy_dtoh_async(dst, dev, stream)
            end.record(stream)
            end.synchronize()  # the host waits for the event: the copies before it are done
            np.testing.assert_array_equal(dst, data)
            for buf in (dev, host_in, host_out):
                buf.close()
    finally:
        api.thread_exit()


@pytest.mark.gpu
@gpu
def test_static_batch_engine_takes_partial_batches(tmp_path):
    """An ONNX with a static batch of 4: partial batches of 1 and 3 run as 4 and return 1 and 3 rows."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [4, 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["out"])], "static4", [x], [y])
    path = tmp_path / "static4.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    be = _backend(path, tmp_path / "engines", "fp32", max_batch=8)
    try:
        assert be.max_batch == 4 and be.inputs[0].shape[0] == 4  # a static batch axis
        rng = np.random.default_rng(0)
        for n in (4, 1, 3):
            batch = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
            out = be.infer(batch)[0]
            assert out.shape == (n, 3, 8, 8)
            np.testing.assert_allclose(out, np.maximum(batch, 0), atol=1e-6)
    finally:
        be.close()
