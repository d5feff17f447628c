#!/usr/bin/env bash
# The whole GPU path, proved on one NVIDIA machine (scripts/gpu_check.py does the measuring):
#   1. a GPU and TensorRT, or stop at once (exit 2) with the reason;
#   2. install with the GPU extra that fits the driver (from NVIDIA's index), doctor, the GPU tests;
#   3. prepared models: INT8 for TensorRT (minmax and entropy calibration), FP16, uint8 input, both;
#   4. every engine kind built, then loaded from the cache without a rebuild;
#   5. the accuracy gate of every engine kind run through TensorRT against FP32 on ONNX Runtime;
#   6. inference fps per engine (any error fails);
#   7. `inferpath run` on the TensorRT backend: a file (every frame, in order, detections within the
#      gate of the FP32 engine's) and RTSP streams at overload (frames dropped, the budget held);
#   8. decode fps of a 1080p H.264 clip, OpenCV on the CPU vs NVDEC (reported; NVDEC is optional);
#   9. with --trt10, the TensorRT steps again in a venv pinned to TensorRT 10.x.
# Every step is logged to $OUT/<step>.log; a failing step is recorded and the script goes on.
# One summary: $OUT/summary.md (read it in a minute) and $OUT/summary.json (everything).
# Exit status: 0 only if every step passed; 1 if any failed; 2 if there is no GPU or no TensorRT.
# Usage: scripts/gpu_check.sh [--trt10]      (from anywhere; runs from the repository root)
#        PYTHON=python3.11 OUT=/tmp/out EXTRA=gpu-cu12 INSTALL=0 VENV=... scripts/gpu_check.sh
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
TRT10=0
for arg in "$@"; do
    case "$arg" in
        --trt10) TRT10=1 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv-gpu}"
VIDEO="${VIDEO:-sample_videos/vtest.avi}"
BUDGET_MS="${BUDGET_MS:-250}"
WORK="$OUT/work"
mkdir -p "$WORK"
STEPS="$OUT/steps.tsv"
: >"$STEPS"
FAILED=0
NVIDIA_INDEX="https://pypi.nvidia.com"

record() {  # record NAME STATUS SECONDS
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$STEPS"
    if [ "$2" != ok ]; then FAILED=$((FAILED + 1)); fi
}

step() {  # step NAME TIMEOUT_S CMD...: run, log to $OUT/NAME.log, record; returns the rc
    local name="$1" limit="$2"
    shift 2
    local start rc
    start=$(date +%s)
    echo "=== $name: $*" | tee "$OUT/$name.log"
    timeout "$limit" "$@" >>"$OUT/$name.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        record "$name" ok $(($(date +%s) - start))
    else
        record "$name" "FAILED (rc $rc)" $(($(date +%s) - start))
        echo "    $name failed (rc $rc); last lines:"
        tail -n 5 "$OUT/$name.log" | sed 's/^/    /'
    fi
    return $rc
}

fatal() {  # fatal NAME WHY DETAIL: nothing on the GPU can be tested; say why, write the summary, exit 2
    record "$1" "FAILED ($2)" 0
    {
        echo "# GPU check: FAILED: $2"
        echo
        echo '```'
        echo "$3" | tail -n 5
        echo '```'
        echo
        echo "| step | status | time |"
        echo "|---|---|---|"
        awk -F'\t' '{printf "| %s | %s | %s s |\n", $1, $2, $3}' "$STEPS"
    } >"$OUT/summary.md"
    printf '{"passed": false, "failed_steps": ["%s"], "fatal": "%s"}\n' "$1" "$2" >"$OUT/summary.json"
    {
        echo
        echo "FATAL: $2, so nothing on the GPU can be tested:"
        echo "$3" | tail -n 5 | sed 's/^/    /'
    } >&2
    exit 2
}

# 1. A GPU, before anything slow.
if ! command -v nvidia-smi >/dev/null 2>&1; then
    fatal gpu "no NVIDIA GPU (nvidia-smi not found)" \
        "This machine has no NVIDIA driver; run scripts/gpu_check.sh on an NVIDIA GPU machine."
fi
if ! GPU_LINE="$(nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader 2>&1 | head -n 1)" \
        || [ -z "$GPU_LINE" ] || [[ "$GPU_LINE" == *"failed"* ]] || [[ "$GPU_LINE" == *"No devices"* ]]; then
    fatal gpu "no NVIDIA GPU (nvidia-smi lists none)" "$GPU_LINE"
fi
DRIVER="$(echo "$GPU_LINE" | cut -d, -f2 | tr -d ' ')"
echo "GPU: $GPU_LINE"

# 2. Install (the extra that fits the driver; TensorRT's libraries come from NVIDIA's index).
if [ -z "${EXTRA:-}" ]; then
    if [[ "${DRIVER%%.*}" =~ ^[0-9]+$ ]] && [ "${DRIVER%%.*}" -ge 580 ]; then EXTRA=gpu-cu13; else EXTRA=gpu-cu12; fi
    echo "driver ${DRIVER:-unknown}: GPU extra $EXTRA"
fi
PY="$VENV/bin/python"
IP="$VENV/bin/inferpath"
if [ "${INSTALL:-1}" = 1 ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        step venv 120 "$PYTHON" -m venv "$VENV"
    fi
    step install 900 "$PY" -m pip install --extra-index-url "$NVIDIA_INDEX" -e ".[$EXTRA,dev]"
fi
if ! "$PY" -c "import pipeline, onnxruntime, cv2, yaml" >/dev/null 2>&1; then
    # No install (INSTALL=0), or no package index reachable (a lent GPU machine has none): use the
    # machine's own python, which must already hold the dependencies and TensorRT, on this checkout.
    echo "no usable $VENV: using $PYTHON with PYTHONPATH=$ROOT"
    PY="$(command -v "$PYTHON")"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    mkdir -p "$WORK/bin"
    printf '#!/bin/sh\nexec "%s" -m pipeline "$@"\n' "$PY" >"$WORK/bin/inferpath"
    chmod +x "$WORK/bin/inferpath"
    IP="$WORK/bin/inferpath"
fi

# Without TensorRT every GPU test would skip and every engine step fail: stop here, loudly.
if ! TRT_OUT="$("$PY" -c 'import tensorrt; print(tensorrt.__version__)' 2>&1)"; then
    echo "$TRT_OUT" >"$OUT/tensorrt-import.log"
    fatal tensorrt-import "TensorRT cannot be imported by $PY" \
        "$TRT_OUT
Install the extra that fits the driver: pip install --extra-index-url $NVIDIA_INDEX -e '.[$EXTRA]'"
fi
echo "tensorrt $TRT_OUT"
"$PY" -c 'import json, sys; n, d, c = [x.strip() for x in sys.argv[1].split(",")][:3]
json.dump({"gpu": n, "driver": d, "compute_capability": c, "tensorrt": sys.argv[2], "extra": sys.argv[3]},
          open(sys.argv[4], "w"))' "$GPU_LINE" "$TRT_OUT" "$EXTRA" "$OUT/environment.json"
step pip-freeze 60 "$PY" -m pip freeze
step doctor 60 "$IP" doctor
step pytest-gpu 900 "$PY" -m pytest -p no:cacheprovider -m gpu -v -rs --require-gpu tests/
step pytest-cpu 900 "$PY" -m pytest -q -p no:cacheprovider tests/test_precision.py tests/test_engine_cache.py \
    tests/test_tensorrt_fake.py tests/test_nvdec.py

# 3. Prepared models (ONNX Runtime on the CPU calibrates; each CLI step runs its own gate on ORT).
step quantize-minmax 900 "$IP" quantize --target tensorrt --method minmax --calib "$VIDEO" --frames 64 \
    --gate-frames 16 -o "$WORK/model.int8.onnx"
step quantize-entropy 900 "$IP" quantize --target tensorrt --method entropy --calib "$VIDEO" --frames 64 \
    --gate-frames 16 -o "$WORK/model.int8-entropy.onnx"
step convert-fp16 300 "$IP" convert --fp16 --video "$VIDEO" --gate-frames 16 -o "$WORK/model.fp16.onnx"
step convert-uint8 300 "$IP" convert --uint8-input --video "$VIDEO" --gate-frames 16 -o "$WORK/model.uint8.onnx"
step convert-fp16-uint8 300 "$IP" convert --fp16 --uint8-input --video "$VIDEO" --gate-frames 16 \
    -o "$WORK/model.fp16.uint8.onnx"

# 4. Engines: each kind built, then loaded from the cache (build-engine says "cached ..." then).
M="$("$PY" -c 'from pipeline.model import bundled_model_path; print(bundled_model_path())')"
engines() {  # engines PREFIX INFERPATH
    local prefix="$1" ip="$2" spec tag model prec
    for spec in "fp32:$M:fp32" "fp16flag:$M:fp16" "fp16onnx:$WORK/model.fp16.onnx:auto" \
                "int8:$WORK/model.int8.onnx:auto" "int8entropy:$WORK/model.int8-entropy.onnx:auto" \
                "uint8:$WORK/model.uint8.onnx:auto" "uint8fp16:$WORK/model.uint8.onnx:fp16" \
                "fp16uint8:$WORK/model.fp16.uint8.onnx:auto"; do
        IFS=: read -r tag model prec <<<"$spec"
        local args=(build-engine --model "$model" --set backend.name=tensorrt --set "backend.tensorrt.precision=$prec"
                    --set "backend.tensorrt.cache_dir=$WORK/engines$prefix" --set backend.max_batch=8)
        step "${prefix}engine-$tag" 1200 "$ip" "${args[@]}"
        if step "${prefix}engine-$tag-cached" 300 "$ip" "${args[@]}" \
                && ! grep -q '^cached ' "$OUT/${prefix}engine-$tag-cached.log"; then
            record "${prefix}engine-$tag-cached" "FAILED (rebuilt instead of loading the cached engine)" 0
        fi
    done
}
engines "" "$IP"

# 5-6. The gate through TensorRT for every engine kind, and fps (any error fails).
step gates 1800 "$PY" scripts/gpu_check.py gates "$WORK" "$VIDEO"
step bench 900 "$PY" scripts/gpu_check.py bench "$WORK" "$VIDEO"

# 7. `inferpath run` on TensorRT. A file: every frame, in order; the runs write boxes down to the
# gate's floor so the FP16 engine's run can be judged against the FP32 engine's (and ORT's against it).
FLOOR="$("$PY" -c 'from pipeline.config import Config
c = Config(); g = c.precision.gate; print(max(0.0, min(g.map_min_score, c.model.conf_threshold - g.margin)))')"
N="$("$PY" -c 'import sys; from pipeline.precision import count_frames; print(count_frames(sys.argv[1]))' "$VIDEO")"
STEM="$(basename "${VIDEO%.*}")"
for run in "trt-fp32:tensorrt:fp32" "trt-fp16:tensorrt:fp16" "ort-fp32:onnxruntime:auto"; do
    IFS=: read -r tag backend prec <<<"$run"
    step "run-$tag" 900 "$IP" run --source "$VIDEO" -o "$WORK/run-$tag" --no-video --set "backend.name=$backend" \
        --set "backend.tensorrt.precision=$prec" --set "backend.tensorrt.cache_dir=$WORK/engines" \
        --set "model.conf_threshold=$FLOOR" --set pipeline.progress=false
done
step run-trt-fp16-vs-fp32 120 "$PY" scripts/gpu_check.py compare-runs "$WORK/run-trt-fp32/$STEM.jsonl" \
    "$WORK/run-trt-fp16/$STEM.jsonl" "$N"
step run-ort-vs-trt-fp32 120 "$PY" scripts/gpu_check.py compare-runs "$WORK/run-trt-fp32/$STEM.jsonl" \
    "$WORK/run-ort-fp32/$STEM.jsonl" "$N"
# RTSP at overload: 4 streams served at 240 fps each, a 250 ms budget, 30 s.
step run-live-rtsp 900 "$PY" scripts/gpu_check.py live-run "$WORK/run-live" "$VIDEO" "$BUDGET_MS" 4 240 30 \
    "$IP" "$WORK/engines"

# 8. Decode fps, CPU vs NVDEC, on a 1080p H.264 clip made from the sample (ffmpeg needed to make it).
if command -v ffmpeg >/dev/null 2>&1 && ffmpeg -loglevel error -y -i "$VIDEO" -vf scale=1920:1080 -c:v libx264 \
        -pix_fmt yuv420p -frames:v 600 "$WORK/clip1080.mp4" >"$OUT/decode-clip.log" 2>&1; then
    step decode 300 "$PY" scripts/gpu_check.py decode "$OUT" "$WORK/clip1080.mp4" 600
else
    echo "no ffmpeg with libx264: the 1080p decode comparison is not measured" | tee "$OUT/decode.log"
fi

# 9. Optionally, TensorRT 10.x in its own venv (the machine's packages plus tensorrt-cu12 10.x).
if [ "$TRT10" = 1 ]; then
    V10="${TRT10_VENV:-$OUT/venv-trt10}"
    if [ ! -x "$V10/bin/python" ]; then
        step trt10-venv 120 "$PY" -m venv --system-site-packages "$V10"
        step trt10-install 900 "$V10/bin/python" -m pip install --extra-index-url "$NVIDIA_INDEX" \
            "tensorrt-cu12>=10.5,<11"
    fi
    if TRT10_OUT="$("$V10/bin/python" -c 'import tensorrt; print(tensorrt.__version__)' 2>&1)" \
            && [[ "$TRT10_OUT" == 10.* ]]; then
        echo "tensorrt (second pass) $TRT10_OUT"
        mkdir -p "$WORK/bin10"
        printf '#!/bin/sh\nexec "%s" -m pipeline "$@"\n' "$V10/bin/python" >"$WORK/bin10/inferpath"
        chmod +x "$WORK/bin10/inferpath"
        step trt10-pytest-gpu 900 "$V10/bin/python" -m pytest -p no:cacheprovider -m gpu -v -rs --require-gpu tests/
        engines "trt10-" "$WORK/bin10/inferpath"
    else
        record trt10 "FAILED (no TensorRT 10.x in $V10: ${TRT10_OUT:-none})" 0
    fi
fi

rm -f "$WORK"/engines*/*.lock 2>/dev/null || true
"$PY" scripts/gpu_check.py summary "$OUT" >/dev/null || echo "summary could not be written" >&2
cat "$OUT/summary.md" 2>/dev/null
if [ "$FAILED" -gt 0 ]; then
    echo "GPU check FAILED: $FAILED step(s); see $OUT/summary.md" >&2
    exit 1
fi
exit 0
