#!/usr/bin/env bash
# One-shot check on a GPU machine: install with the GPU extra that fits the driver, doctor, GPU
# tests, FP32/FP16/INT8 engines of the bundled model, and a short fps comparison. Every step is
# logged; a failing step is recorded and the script goes on, except when TensorRT cannot be
# imported: then nothing on the GPU can be tested, and the script stops at once with the import error.
# Exit status: 0 only if every step passed; 1 if any failed; 2 if TensorRT is not importable.
# GPU tests run with --require-gpu, so a GPU test that skips (no GPU, no TensorRT, no model) fails.
# Results go under $OUT (else ./gpu_check_out):
#   <step>.log for each step, summary.md (step status table + benchmark), bench.json.
# Usage: scripts/gpu_check.sh            (from the repository root)
#        PYTHON=python3.11 OUT=/tmp/out scripts/gpu_check.sh
#        EXTRA=gpu-cu12 (default: gpu-cu13 for driver r580+, else gpu-cu12); INSTALL=0 skips the venv
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv-gpu}"
VIDEO="${VIDEO:-sample_videos/vtest.avi}"
WORK="$OUT/work"
mkdir -p "$WORK"
SUMMARY="$OUT/summary.md"
STATUS=()
FAILED=0

failed() {  # failed NAME WHY: record a failed check
    STATUS+=("| $1 | FAILED ($2) | |")
    FAILED=$((FAILED + 1))
    echo "    $1 FAILED: $2"
}

step() {  # step NAME TIMEOUT_S CMD...: run, log to $OUT/NAME.log, record status; returns the rc
    local name="$1" limit="$2"
    shift 2
    local start end rc
    start=$(date +%s)
    echo "=== $name: $*" | tee "$OUT/$name.log"
    timeout "$limit" "$@" >>"$OUT/$name.log" 2>&1
    rc=$?
    end=$(date +%s)
    if [ $rc -eq 0 ]; then
        STATUS+=("| $name | ok | $((end - start)) s |")
    else
        STATUS+=("| $name | FAILED (rc $rc) | $((end - start)) s |")
        FAILED=$((FAILED + 1))
        echo "    $name failed (rc $rc); last lines:"
        tail -n 5 "$OUT/$name.log" | sed 's/^/    /'
    fi
    return $rc
}

status_table() {
    echo "| step | status | time |"
    echo "|---|---|---|"
    printf '%s\n' "${STATUS[@]}"
}

step system 30 bash -c 'nvidia-smi; uname -a; '"$PYTHON"' --version'
if [ -z "${EXTRA:-}" ]; then
    DRIVER="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
    if [[ "${DRIVER%%.*}" =~ ^[0-9]+$ ]] && [ "${DRIVER%%.*}" -ge 580 ]; then EXTRA=gpu-cu13; else EXTRA=gpu-cu12; fi
    echo "driver ${DRIVER:-unknown}: GPU extra $EXTRA"
fi
PY="$VENV/bin/python"
IP="$VENV/bin/inferpath"
if [ "${INSTALL:-1}" = 1 ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        step venv 120 "$PYTHON" -m venv "$VENV"
    fi
    step install 900 "$PY" -m pip install -e ".[$EXTRA,dev]"
fi
if ! "$PY" -c "import pipeline, onnxruntime, cv2, yaml" >/dev/null 2>&1; then
    # No install (INSTALL=0), or no package index reachable (a lent GPU machine has none): use the
    # machine's own python3, which there already holds numpy, opencv, onnx, onnxruntime, pyyaml, pytest
    # and cuda-bindings, and run the checkout in place. TensorRT must then already be importable by
    # that python (install its wheels there first, e.g. pip install --no-index --find-links DIR
    # tensorrt-cu13); the tensorrt-import check below stops the script with the import error if not.
    echo "no usable $VENV: using $PYTHON with PYTHONPATH=$ROOT"
    PY="$(command -v "$PYTHON")"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    mkdir -p "$WORK/bin"
    printf '#!/bin/sh\nexec "%s" -m pipeline "$@"\n' "$PY" > "$WORK/bin/inferpath"
    chmod +x "$WORK/bin/inferpath"
    IP="$WORK/bin/inferpath"
fi
step pip-freeze 60 "$PY" -m pip freeze
step doctor 60 "$IP" doctor
step doctor-json 60 bash -c "'$IP' doctor --json > '$OUT/doctor.json'"

# Without TensorRT every GPU test would skip and every engine step fail: stop here, loudly.
if ! TRT_OUT="$("$PY" -c 'import tensorrt; print(tensorrt.__version__)' 2>&1)"; then
    echo "$TRT_OUT" >"$OUT/tensorrt-import.log"
    failed tensorrt-import "TensorRT cannot be imported"
    {
        echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ): FAILED, TensorRT cannot be imported by $PY"
        echo
        echo '```'
        echo "$TRT_OUT" | tail -n 5
        echo '```'
        echo
        status_table
    } >"$SUMMARY"
    {
        echo
        echo "FATAL: TensorRT cannot be imported by $PY, so nothing on the GPU can be tested:"
        echo "$TRT_OUT" | tail -n 5 | sed 's/^/    /'
        echo "Install the extra that fits the driver (inferpath doctor says which): pip install -e '.[$EXTRA]'"
    } >&2
    exit 2
fi
echo "tensorrt $TRT_OUT"
step pytest-gpu 900 "$PY" -m pytest -p no:cacheprovider -m gpu -v -rs --require-gpu tests/
step pytest-precision 600 "$PY" -m pytest -q -p no:cacheprovider tests/test_precision.py tests/test_engine_cache.py \
    tests/test_tensorrt_fake.py

# Prepared models (ONNX Runtime on CPU does the calibration and the gate).
step quantize 600 "$IP" quantize --target tensorrt --calib "$VIDEO" --frames 64 --gate-frames 16 -o "$WORK/model.int8.onnx"
step convert-fp16 300 "$IP" convert --fp16 --video "$VIDEO" --gate-frames 16 -o "$WORK/model.fp16.onnx"
step convert-uint8 300 "$IP" convert --uint8-input --video "$VIDEO" --gate-frames 8 -o "$WORK/model.uint8.onnx"

# Engines: FP32 and FP16 from the FP32 ONNX (FP16 by flag on TRT 10, by conversion on TRT 11),
# FP16 from the FP16 ONNX, INT8 from the Q/DQ ONNX; uint8-input FP32. Second run must hit the cache.
M="$("$PY" -c 'from pipeline.model import bundled_model_path; print(bundled_model_path())')"
for spec in "fp32:$M:fp32" "fp16flag:$M:fp16" "fp16onnx:$WORK/model.fp16.onnx:auto" \
            "int8:$WORK/model.int8.onnx:auto" "uint8:$WORK/model.uint8.onnx:auto"; do
    IFS=: read -r tag model prec <<<"$spec"
    step "engine-$tag" 1200 "$IP" build-engine --model "$model" --set backend.name=tensorrt \
        --set "backend.tensorrt.precision=$prec" --set "backend.tensorrt.cache_dir=$WORK/engines" \
        --set backend.max_batch=8
    # build-engine says "cached ..." or "built ..." on stderr: the second run must be a cache hit.
    if step "engine-$tag-cached" 300 "$IP" build-engine --model "$model" --set backend.name=tensorrt \
        --set "backend.tensorrt.precision=$prec" --set "backend.tensorrt.cache_dir=$WORK/engines" \
        --set backend.max_batch=8 && ! grep -q '^cached ' "$OUT/engine-$tag-cached.log"; then
        failed "engine-$tag-cached" "rebuilt instead of loading the cached engine"
    fi
done

# Benchmark: inference-only fps at batch 1 and 8 per engine, plus ORT CPU for reference.
cat >"$WORK/bench.py" <<'EOF'
import json, sys, time
from pathlib import Path

import numpy as np

from pipeline.backends.base import BackendOptions
from pipeline.config import TensorRTConfig
from pipeline.model import bundled_model_path, load_spec
from pipeline.precision import measure_fps, read_frames
from pipeline.preprocess import preprocess

work, video = Path(sys.argv[1]), sys.argv[2]
frames, _ = read_frames(video, 8)
models = {"fp32": (bundled_model_path(), "fp32"), "fp16(flag/convert)": (bundled_model_path(), "fp16"),
          "fp16(onnx)": (work / "model.fp16.onnx", "auto"), "int8": (work / "model.int8.onnx", "auto"),
          "fp32 uint8-input": (work / "model.uint8.onnx", "auto")}
rows = []
for name, (path, prec) in models.items():
    if not Path(path).exists():
        rows.append({"model": name, "error": "missing"})
        continue
    try:
        from pipeline.backends.tensorrt import TensorRTBackend

        cfg = TensorRTConfig(precision=prec, cache_dir=str(work / "engines"))
        be = TensorRTBackend(str(path), BackendOptions(max_batch=8, extra={"tensorrt": cfg}))
        spec = load_spec(Path(path))
        x = np.stack([preprocess(f, spec)[0] for f in frames])
        row = {"model": name, "precision": be.plan.precision}
        for b in (1, 8):
            for _ in range(20):
                be.infer(x[:b])
            n, t0 = 200, time.perf_counter()
            for _ in range(n):
                be.infer(x[:b])
            row[f"fps_b{b}"] = round(n * b / (time.perf_counter() - t0), 1)
        be.close()
    except Exception as exc:  # record and continue
        row = {"model": name, "error": f"{type(exc).__name__}: {exc}"}
    rows.append(row)
    print(row, flush=True)
for name, path in (("ort-cpu fp32", bundled_model_path()), ("ort-cpu int8", work / "model.int8.onnx")):
    if Path(path).exists():
        rows.append({"model": name, "fps_b1": round(measure_fps(path, frames[0], 30, 3), 1)})
(work.parent / "bench.json").write_text(json.dumps(rows, indent=2))
print(json.dumps(rows, indent=2))
EOF
step bench 900 "$PY" "$WORK/bench.py" "$WORK" "$VIDEO"

{
    echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 | head -5
    "$PY" -c 'import tensorrt; print("tensorrt", tensorrt.__version__)' 2>&1 | tail -1
    echo '```'
    echo
    echo "$FAILED failed step(s)"
    echo
    status_table
    echo
    echo "## Benchmark (inference only, TensorRT; ORT CPU for reference)"
    echo
    if [ -f "$OUT/bench.json" ]; then
        "$PY" - "$OUT/bench.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
print("| model | precision | fps batch 1 | fps batch 8 | note |")
print("|---|---|---|---|---|")
for r in rows:
    print(f"| {r['model']} | {r.get('precision', '')} | {r.get('fps_b1', '')} | {r.get('fps_b8', '')} | {r.get('error', '')} |")
EOF
    else
        echo "(no bench.json: see bench.log)"
    fi
    echo
    echo "## Accuracy gates"
    for s in quantize convert-fp16 convert-uint8; do
        echo
        echo "### $s"
        echo '```'
        grep -E "precision|recall|IoU|boxes|frames|size|gate|error" "$OUT/$s.log" 2>/dev/null | head -12
        echo '```'
    done
} >"$SUMMARY"
cat "$SUMMARY"
rm -rf "$WORK/engines"/*.lock 2>/dev/null || true
if [ "$FAILED" -gt 0 ]; then
    echo "GPU check FAILED: $FAILED step(s); see $SUMMARY" >&2
    exit 1
fi
exit 0
