"""The accuracy gate: a prepared model against FP32 on held-out frames, as a user would see it.

Both models run through the deployment's real backend (:mod:`pipeline.backends`) with the
pipeline's own preprocessing and decoding (the caller passes the run's backend factory and format
resolution as :class:`Backends`, so this package never imports the runtime that builds runs;
:func:`~pipeline.preprocess.preprocess`, :func:`~pipeline.postprocess.postprocess`), so what is
judged is what ``inferpath run`` emits.

A single hard threshold makes a poor judge: a box FP32 scores 0.36 and INT8 scores 0.34 is the
same detection, yet at 0.35 it counts as lost. So the gate reports two threshold-robust numbers:

* **pseudo-mAP@0.5**: FP32's boxes at the deployment threshold are the ground truth; the
  prepared model's boxes, down to a low floor, are ranked by score (COCO-style all-point AP per
  class, averaged over the classes FP32 found). FP32 against itself scores exactly 1.
* **agreement with a margin**: FP32 boxes scoring at least ``conf + margin`` that the prepared
  model finds at ``conf - margin`` or more (same class, IoU >= 0.5, one-to-one), and the reverse.

It also says how many boxes it judged; below ``precision.gate.weak_below_boxes`` the verdict is
marked weak (a few boxes more or less swing the numbers).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import Config
from pipeline.errors import AccuracyGateError, BackendUnavailableError
from pipeline.frame import Detections
from pipeline.model import ModelSpec, fit_spec_to_input, load_spec
from pipeline.onnx_tools import model_precision, model_size_mb
from pipeline.postprocess import box_iou, postprocess
from pipeline.preprocess import preprocess
from pipeline.tables import render_table

if TYPE_CHECKING:
    from pipeline.backends.base import Backend
    from pipeline.config import GateConfig

log = logging.getLogger(__name__)

IOU_MATCH = 0.5


# --------------------------------------------------------------------------------------------
# The numbers (pure functions over Detections; tested on constructed cases)


def match_detections(ref: Detections, cand: Detections, iou_threshold: float = IOU_MATCH) -> list[float]:
    """IoUs of greedy one-to-one matches (same class, IoU >= threshold), best pairs first."""
    if len(ref) == 0 or len(cand) == 0:
        return []
    ious = box_iou(ref.xyxy.astype(np.float64), cand.xyxy.astype(np.float64))
    ious = np.where(ref.class_id[:, None] == cand.class_id[None, :], ious, 0.0)
    pairs = np.argwhere(ious >= iou_threshold)
    order = np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_r, used_c, matched = set(), set(), []
    for r, c in pairs[order]:
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        matched.append(float(ious[r, c]))
    return matched


def above(det: Detections, score: float) -> Detections:
    """The detections scoring at least ``score``."""
    keep = det.confidence >= score
    return Detections(det.xyxy[keep], det.confidence[keep], det.class_id[keep])


def agreement(
    a: Sequence[Detections], b: Sequence[Detections], hi: float, lo: float
) -> tuple[int, int, list[float]]:
    """Boxes of ``a`` scoring >= ``hi`` that ``b`` finds at >= ``lo``: (found, judged, matched IoUs)."""
    found, judged, ious = 0, 0, []
    for da, db in zip(a, b, strict=True):
        sa = above(da, hi)
        judged += len(sa)
        m = match_detections(sa, above(db, lo))
        found += len(m)
        ious.extend(m)
    return found, judged, ious


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP (the area under the precision envelope), as COCO/VOC 2010+."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def pseudo_map(
    truth: Sequence[Detections], pred: Sequence[Detections], iou_threshold: float = IOU_MATCH
) -> tuple[float, dict[int, float]]:
    """mAP@``iou_threshold`` of ``pred`` (ranked by score) against ``truth`` (all boxes count).

    Per frame and class, predictions in descending score take the best unmatched truth box with
    IoU >= threshold (COCO's rule). AP per class with any truth box; mAP is their mean (1.0 when
    there is no truth box and no prediction, 0.0 when only predictions exist).
    """
    classes = sorted({int(c) for t in truth for c in t.class_id})
    if not classes:
        return (1.0 if not any(len(p) for p in pred) else 0.0), {}
    per_class: dict[int, float] = {}
    for cls in classes:
        scores, hits, n_truth = [], [], 0
        for t, p in zip(truth, pred, strict=True):
            tb = t.xyxy[t.class_id == cls].astype(np.float64)
            pm = p.class_id == cls
            pb, ps = p.xyxy[pm].astype(np.float64), p.confidence[pm]
            n_truth += len(tb)
            order = np.argsort(-ps, kind="stable")
            ious = box_iou(pb[order], tb) if len(tb) and len(pb) else np.zeros((len(pb), len(tb)))
            used = np.zeros(len(tb), bool)
            for k, i in enumerate(order):
                scores.append(float(ps[i]))
                cand = np.where(used, -1.0, ious[k]) if len(tb) else np.zeros(0)
                j = int(np.argmax(cand)) if len(cand) else -1
                ok = j >= 0 and cand[j] >= iou_threshold
                if ok:
                    used[j] = True
                hits.append(ok)
        order = np.argsort(-np.asarray(scores), kind="stable")
        tp = np.cumsum(np.asarray(hits, bool)[order]) if hits else np.zeros(0)
        fp = np.cumsum(~np.asarray(hits, bool)[order]) if hits else np.zeros(0)
        recall = tp / n_truth
        precision = tp / np.maximum(tp + fp, 1)
        per_class[cls] = average_precision(recall, precision)
    return float(np.mean(list(per_class.values()))), per_class


# --------------------------------------------------------------------------------------------
# Running a model as the pipeline does


@dataclass(frozen=True)
class Backends:
    """How a model is opened as a run opens it, passed in by the caller (the CLI passes
    ``Backends(runtime.make_backend, runtime.resolve_format)``): the backend the config names, and
    the output format of the model on it."""

    make: Callable[[Config, Path], Backend]  # make_backend(cfg, model_path)
    output_format: Callable[[Config, ModelSpec, Backend, Path], str]  # resolve_format(cfg, spec, backend, path)


class Detector:
    """A model on the deployment's backend, with the pipeline's preprocess and postprocess.

    ``detect(frames, conf)`` returns one :class:`Detections` per frame in frame pixels. Batches
    are as large as the backend takes (``backend.max_batch``), as the pipeline's batcher makes.
    """

    def __init__(self, cfg: Config, model_path: str | Path, spec: ModelSpec | None = None, *,
                 backends: Backends) -> None:
        make_backend, resolve_format = backends.make, backends.output_format

        self.path = Path(model_path)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(self.path)))
        self.spec = spec or load_spec(self.path)
        # The gate knows what it judges: no "TensorRT form on a CPU" line for each model it loads.
        ort_log = logging.getLogger("pipeline.backends.onnxruntime")
        level = ort_log.level
        ort_log.setLevel(logging.ERROR)
        try:
            self.backend = make_backend(cfg, self.path)
        except BackendUnavailableError as exc:
            if cfg.backend.name == "onnxruntime":
                raise
            log.warning("accuracy gate: %s; judging on onnxruntime instead", exc)
            cfg = dataclasses.replace(cfg, backend=dataclasses.replace(cfg.backend, name="onnxruntime"))
            self.backend = make_backend(cfg, self.path)
        finally:
            ort_log.setLevel(level)
        self.cfg = cfg
        try:
            info = self.backend.inputs[0]  # as the run: a model without a spec takes its input from the ONNX
            self.spec = fit_spec_to_input(self.spec, info.shape, np.dtype(info.dtype).name, str(self.path))
            self.fmt = resolve_format(cfg, self.spec, self.backend, self.path)
        except BaseException:
            self.backend.close()
            raise

    def detect(self, frames: Sequence[np.ndarray], conf: float) -> list[Detections]:
        mc = self.cfg.model
        step = max(1, self.backend.max_batch)
        out: list[Detections] = []
        for i in range(0, len(frames), step):
            items = [preprocess(f, self.spec) for f in frames[i : i + step]]
            raw = self.backend.infer(np.stack([t for t, _ in items]))
            out.extend(postprocess(raw, [lb for _, lb in items], self.fmt, conf, mc.iou_threshold,
                                   mc.max_detections, mc.classes))
        return out

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# The verdict


@dataclass(frozen=True)
class GateReport:
    """A prepared model vs FP32 on held-out frames (FP32's boxes stand in for ground truth)."""

    frames: int
    reference_boxes: int  # FP32 boxes at the deployment threshold (the pseudo ground truth)
    candidate_boxes: int  # prepared model's boxes at the deployment threshold
    map50: float
    found: float  # FP32 boxes >= conf + margin found by the prepared model at >= conf - margin
    found_judged: int
    kept: float  # the reverse: prepared boxes >= conf + margin that FP32 has at >= conf - margin
    kept_judged: int
    mean_iou: float
    gate: GateConfig
    conf: float
    reference_mb: float
    candidate_mb: float
    candidate_precision: str = "?"
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def weak(self) -> bool:
        return self.reference_boxes < self.gate.weak_below_boxes

    @property
    def agreement(self) -> float:
        """The lower of the two agreement directions."""
        return min(self.found, self.kept)

    def table(self) -> str:
        """A small fixed-width table for the CLI."""
        g, m = self.gate, self.gate.margin
        rows = [
            ("pseudo-mAP@0.5 (FP32 boxes as truth)", "n/a" if np.isnan(self.map50) else f"{self.map50:.3f}",
             f">= {g.min_map:g}"),
            (f"FP32 boxes found (>= {self.conf + m:.2f} at >= {self.conf - m:.2f})", f"{self.found:.3f}",
             f">= {g.min_agreement:g} of {self.found_judged}"),
            (f"prepared boxes FP32 has (>= {self.conf + m:.2f} at >= {self.conf - m:.2f})", f"{self.kept:.3f}",
             f">= {g.min_agreement:g} of {self.kept_judged}"),
            ("mean IoU of those matches", f"{self.mean_iou:.3f}", f">= {g.min_mean_iou:g}"),
            (f"boxes at {self.conf:.2f}: FP32 / prepared", f"{self.reference_boxes} / {self.candidate_boxes}", ""),
            ("held-out frames", str(self.frames), ""),
            ("model size MB", f"{self.reference_mb:.2f} -> {self.candidate_mb:.2f}", f"({self.candidate_precision})"),
            ("gate", "PASS" if self.passed else "FAIL", ""),
        ]
        lines = render_table(None, rows, align="lrl", gap=2).splitlines()
        if self.weak:
            lines.append(f"weak verdict: only {self.reference_boxes} FP32 boxes judged (fewer than "
                         f"{g.weak_below_boxes}); a longer or busier clip gives a firmer one")
        return "\n".join(lines)

    @property
    def nothing_to_judge(self) -> bool:
        """FP32 found no object: no verdict either way (and recovery has nothing to chase)."""
        return self.reference_boxes == 0

    @property
    def label(self) -> str:
        """What was judged against FP32: ``INT8``, ``FP16``, or an FP32 graph changed otherwise (``--uint8-input``)."""
        p = self.candidate_precision
        return "the prepared FP32 model (same weights, new input)" if p == "fp32" else p.upper()

    def raise_if_failed(self) -> None:
        if self.nothing_to_judge:
            raise AccuracyGateError(self.failures[0])
        if self.failures:
            raise AccuracyGateError(
                f"accuracy gate failed ({self.label} vs FP32 on {self.frames} held-out frames, "
                f"{self.reference_boxes} FP32 boxes): " + "; ".join(self.failures)
                + " (use --no-gate to keep the model anyway)"
            )


class Gate:
    """FP32's detections on the held-out frames, computed once; :meth:`judge` any prepared model."""

    def __init__(self, cfg: Config, reference: str | Path, frames: Sequence[np.ndarray],
                 reference_spec: ModelSpec | None = None, *, backends: Backends) -> None:
        self.cfg, self.reference, self.frames, self.backends = cfg, Path(reference), list(frames), backends
        conf = cfg.model.conf_threshold
        self.floor = score_floor(cfg)
        with Detector(cfg, reference, reference_spec, backends=backends) as ref:
            self.ref = ref.detect(self.frames, self.floor)
            self.backend_name = ref.cfg.backend.name  # onnxruntime when the deployment's is not installed
        if not any(len(above(d, conf)) for d in self.ref):
            raise AccuracyGateError(nothing_to_judge(len(self.frames), conf))

    def judge(self, candidate: str | Path) -> GateReport:
        with Detector(self.cfg, candidate, backends=self.backends) as cand:
            got = cand.detect(self.frames, self.floor)
        return judge(self.ref, got, self.cfg, self.reference, candidate)


def score_floor(cfg: Config) -> float:
    """The lowest score both models' boxes are kept down to (below the deployment threshold by the
    margin, and by ``map_min_score`` for the pseudo-mAP's ranking): what :func:`judge` is given."""
    g = cfg.precision.gate
    return max(0.0, min(g.map_min_score, cfg.model.conf_threshold - g.margin))


def disagreements(report: GateReport) -> list[str]:
    """The gate's failures of ``report`` but "nothing to judge" (a frame where FP32 found nothing
    disagrees only if the prepared model finds something there)."""
    return report.failures[1:] if report.nothing_to_judge else list(report.failures)


def nothing_to_judge(frames: int, conf: float) -> str:
    """The one line for footage on which FP32 finds nothing: no verdict, and no recovery to chase one."""
    return (f"accuracy gate: FP32 found no objects (at model.conf_threshold {conf:g}) in the {frames} held-out "
            "frames, so there is nothing to judge the prepared model by; gate on footage with objects "
            "(--gate-video / --video) or skip the gate with --no-gate")


def judge(ref: Sequence[Detections], cand: Sequence[Detections], cfg: Config,
          reference: str | Path | None = None, candidate: str | Path | None = None) -> GateReport:
    """The gate's report for detections of FP32 (``ref``) and of the prepared model (``cand``).

    Both lists hold every box down to a low floor; the thresholds come from ``cfg``.
    """
    g, conf = cfg.precision.gate, cfg.model.conf_threshold
    truth = [above(d, conf) for d in ref]
    n_ref = sum(len(d) for d in truth)
    n_cand = sum(len(above(d, conf)) for d in cand)
    # No FP32 box: nothing to judge. A pseudo-mAP then means nothing (0 boxes against 0 is no 0.0).
    map50 = pseudo_map(truth, cand)[0] if n_ref else float("nan")
    f_n, f_judged, ious = agreement(ref, cand, conf + g.margin, conf - g.margin)
    k_n, k_judged, _ = agreement(cand, ref, conf + g.margin, conf - g.margin)
    found = f_n / f_judged if f_judged else 1.0
    kept = k_n / k_judged if k_judged else 1.0  # nothing to judge: a box FP32 lost counts in `found`
    mean_iou = float(np.mean(ious)) if ious else (1.0 if not f_judged else 0.0)
    failures = [] if n_ref else [nothing_to_judge(len(ref), conf)]
    if map50 < g.min_map:
        failures.append(f"pseudo-mAP@0.5 {map50:.3f} < {g.min_map:g}")
    if found < g.min_agreement:
        failures.append(f"FP32 boxes found {found:.3f} < {g.min_agreement:g}")
    if kept < g.min_agreement:
        failures.append(f"prepared boxes FP32 has {kept:.3f} < {g.min_agreement:g}")
    if mean_iou < g.min_mean_iou:
        failures.append(f"mean IoU {mean_iou:.3f} < {g.min_mean_iou:g}")
    return GateReport(
        frames=len(ref), reference_boxes=n_ref, candidate_boxes=n_cand, map50=map50,
        found=found, found_judged=f_judged, kept=kept, kept_judged=k_judged, mean_iou=mean_iou,
        gate=g, conf=conf,
        reference_mb=model_size_mb(reference) if reference else 0.0,
        candidate_mb=model_size_mb(candidate) if candidate else 0.0,
        candidate_precision=model_precision(candidate) if candidate else "?",
        failures=failures,
    )


def run_gate(reference: str | Path, candidate: str | Path, frames: Sequence[np.ndarray],
             cfg: Config | None = None, reference_spec: ModelSpec | None = None, *,
             backends: Backends) -> GateReport:
    """Judge ``candidate`` against the FP32 ``reference`` on ``frames`` (see :class:`Gate`)."""
    return Gate(cfg or Config(), reference, frames, reference_spec, backends=backends).judge(candidate)
