"""The accuracy gate's numbers on constructed cases whose answers are known by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline import precision as P
from pipeline.config import Config
from pipeline.frame import Detections


def det(*boxes: tuple[float, float, float, float, float, int]) -> Detections:
    """Detections from (x1, y1, x2, y2, score, class) tuples."""
    if not boxes:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    a = np.asarray(boxes, np.float64)
    return Detections(a[:, :4].astype(np.float32), a[:, 4].astype(np.float32), a[:, 5].astype(np.int64))


A = (0, 0, 10, 10)
B = (20, 20, 30, 30)
C = (40, 0, 50, 10)
A_SHIFTED = (1, 0, 11, 10)  # IoU with A = 90/110 = 0.818
A_FAR = (5, 0, 15, 10)  # IoU with A = 50/150 = 0.333: not a match


def test_map_of_a_model_against_itself_is_one():
    frames = [det((*A, 0.9, 0), (*B, 0.5, 1)), det((*C, 0.7, 0)), det()]
    assert P.pseudo_map(frames, frames)[0] == 1.0


def test_map_ranks_by_score():
    truth = [det((*A, 0.9, 0), (*B, 0.9, 0))]
    # a false positive ranked above the one true positive; B is missed:
    # ranks: FP (precision 0, recall 0), TP (precision 1/2, recall 1/2) -> AP = 1/2 * 1/2
    pred = [det((*C, 0.8, 0), (*A_SHIFTED, 0.6, 0))]
    assert P.pseudo_map(truth, pred)[0] == pytest.approx(0.25)
    # the same boxes with the true positive ranked first: AP = 1/2 (recall stops at 1/2)
    pred = [det((*C, 0.5, 0), (*A_SHIFTED, 0.6, 0))]
    assert P.pseudo_map(truth, pred)[0] == pytest.approx(0.5)


def test_map_is_per_class_and_averaged_over_classes_with_truth():
    truth = [det((*A, 0.9, 0), (*B, 0.9, 1))]
    pred = [det((*A, 0.9, 0), (*B, 0.9, 2))]  # class 1's box predicted as class 2
    m, per_class = P.pseudo_map(truth, pred)
    assert per_class == {0: 1.0, 1: 0.0}
    assert m == 0.5
    assert P.pseudo_map(truth, [det((*A_FAR, 0.9, 0), (*B, 0.9, 1))])[1] == {0: 0.0, 1: 1.0}  # IoU < 0.5
    assert P.pseudo_map([det()], [det()])[0] == 1.0
    assert P.pseudo_map([det()], [det((*A, 0.9, 0))])[0] == 0.0


def test_one_prediction_matches_one_truth_box():
    truth = [det((*A, 0.9, 0))]
    pred = [det((*A, 0.9, 0), (*A_SHIFTED, 0.8, 0))]  # the duplicate is a false positive after recall 1
    assert P.pseudo_map(truth, pred)[0] == 1.0
    assert P.agreement(pred, truth, 0.5, 0.5)[:2] == (1, 2)


def test_agreement_uses_the_margin_both_ways():
    # FP32 box at 0.36 is below conf+margin (0.40): not judged. FP32 0.50 found at 0.32 (>= 0.30).
    fp32 = [det((*A, 0.50, 0), (*B, 0.36, 0)), det((*C, 0.45, 1))]
    int8 = [det((*A_SHIFTED, 0.32, 0), (*B, 0.34, 0)), det((*C, 0.29, 1))]  # C at 0.29: lost
    found, judged, ious = P.agreement(fp32, int8, 0.40, 0.30)
    assert (found, judged) == (2 - 1, 2)
    assert ious == [pytest.approx(90 / 110)]
    assert P.agreement(int8, fp32, 0.40, 0.30)[:2] == (0, 0)  # no INT8 box reaches 0.40


def _cfg(**gate) -> Config:
    cfg = Config()
    return dataclasses.replace(cfg, precision=dataclasses.replace(
        cfg.precision, gate=dataclasses.replace(cfg.precision.gate, **gate)))


def test_judge_reports_known_numbers_and_a_weak_verdict():
    cfg = _cfg()  # conf 0.35, margin 0.05, min_map 0.85, min_agreement 0.9
    fp32 = [det((*A, 0.90, 0), (*B, 0.80, 0), (*C, 0.20, 0)) for _ in range(10)]
    int8 = [det((*A, 0.88, 0), (*B, 0.33, 0), (*C, 0.36, 0)) for _ in range(10)]
    r = P.judge(fp32, int8, cfg)
    assert r.reference_boxes == 20 and r.candidate_boxes == 20  # at 0.35: A, B / A, C
    assert r.found == 1.0 and r.found_judged == 20  # B found at 0.33 >= 0.30
    assert r.kept == 1.0 and r.kept_judged == 10  # C (0.36) is below 0.40: only A is judged
    # mAP: 10 A (TP, 0.88), then 10 C (FP, 0.36), then 10 B (TP, 0.33):
    # recall 1/2 at precision 1, then recall 1 at precision 20/30
    assert r.map50 == pytest.approx(0.5 + 0.5 * 20 / 30)
    assert r.failures == [f"pseudo-mAP@0.5 {r.map50:.3f} < 0.85"] and r.weak


def test_judge_fails_a_model_that_lost_boxes_and_marks_few_boxes_weak():
    cfg = _cfg()
    fp32 = [det((*A, 0.90, 0), (*B, 0.80, 1)) for _ in range(60)]
    good = [det((*A, 0.85, 0), (*B, 0.70, 1)) for _ in range(60)]
    lost = [det((*A, 0.85, 0)) for _ in range(60)]
    r = P.judge(fp32, good, cfg)
    assert r.passed and not r.weak and r.map50 == 1.0 and r.reference_boxes == 120
    r = P.judge(fp32, lost, cfg)
    assert not r.passed and r.found == 0.5 and r.map50 == 0.5
    assert any("found 0.500 < 0.9" in f for f in r.failures)
    few = P.judge(fp32[:10], good[:10], cfg)
    assert few.passed and few.weak and "weak verdict: only 20 FP32 boxes" in few.table()
