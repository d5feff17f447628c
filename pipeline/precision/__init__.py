"""Preparing a model's precision once, from the ONNX: INT8 per target, FP16, uint8 input; the gate.

Precision is a property of the model file. TensorRT 11 removed its FP16/INT8 builder flags and
INT8 calibrators: an engine's precision comes from the ONNX it is built from (Q/DQ nodes for
INT8, float16 tensors for FP16). ONNX Runtime runs the same files on the CPU, which is how every
path here is tested without a GPU. One job per module:

* :mod:`pipeline.onnx_tools` (below the backends too): loading, atomic saving, metadata, what
  precision and target a file carries, FP16;
* :mod:`.frames`: calibration and held-out frames from the user's video;
* :mod:`.quantize`: INT8 per target (``onnxruntime``: U8S8, fast on the CPU; ``tensorrt``:
  symmetric S8S8), one calibration for any number of re-quantizations;
* :mod:`pipeline.backends.tensorrt_rules` (beside the backend): TensorRT's Q/DQ rules, and
  refusing a CPU-form model before a build;
* :mod:`.convert`: raw uint8 frames as input;
* :mod:`.gate`: the prepared model vs FP32 through the real backend (pseudo-mAP, agreement);
* :mod:`.recover`: per-layer sensitivity and keeping the worst layers in float.
"""

from pipeline.backends.tensorrt_rules import check_tensorrt_qdq, require_tensorrt_form
from pipeline.onnx_tools import (
    PRECISION_KEY,
    PREPARED_KEY,
    QDQ_OPS,
    SOURCE_KEY,
    SPEC_KEY,
    TARGET_KEY,
    TARGETS,
    convert_fp16,
    fp16_converter_version,
    get_metadata,
    load_model,
    made_from,
    model_precision,
    model_size_mb,
    quant_target,
    save_model,
    set_metadata,
    source_record,
)
from pipeline.precision.convert import wrap_uint8_input
from pipeline.precision.frames import (
    CALIB_PHASE,
    GATE_PHASE,
    MIN_VIDEO_FRAMES,
    FrameCalibrationReader,
    count_frames,
    held_out_indices,
    read_frames,
    read_frames_at,
    read_image_dir,
    split_video,
    spread_indices,
)
from pipeline.precision.gate import (
    Backends,
    Detector,
    Gate,
    GateReport,
    agreement,
    disagreements,
    judge,
    match_detections,
    pseudo_map,
    run_gate,
    score_floor,
)
from pipeline.precision.quantize import (
    ORT_FORMAT,
    Calibration,
    QuantizeResult,
    check_target,
    find_head_convs,
    quantize_int8,
)
from pipeline.precision.recover import LayerScore, Recovery, layer_sensitivity, measure_fps, quantize_gated, recover

__all__ = [
    "CALIB_PHASE", "GATE_PHASE", "MIN_VIDEO_FRAMES", "ORT_FORMAT", "PRECISION_KEY", "PREPARED_KEY", "QDQ_OPS",
    "SOURCE_KEY", "SPEC_KEY", "TARGETS", "TARGET_KEY",
    "Backends", "Calibration", "Detector", "LayerScore", "FrameCalibrationReader", "Gate", "GateReport", "QuantizeResult", "Recovery",
    "agreement", "check_target", "disagreements", "score_floor", "check_tensorrt_qdq", "convert_fp16", "find_head_convs", "fp16_converter_version", "get_metadata",
    "held_out_indices", "judge", "layer_sensitivity", "load_model", "made_from", "match_detections", "measure_fps",
    "model_precision", "model_size_mb", "pseudo_map", "quant_target", "quantize_gated", "quantize_int8", "read_frames",
    "read_frames_at", "read_image_dir", "recover", "require_tensorrt_form", "run_gate", "save_model", "set_metadata", "source_record", "split_video",
    "spread_indices", "count_frames", "wrap_uint8_input",
]
