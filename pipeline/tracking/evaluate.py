"""Scoring the tracker on MOTChallenge ground truth (tests and ``scripts/bench.py``).

The ground truth is the one the ``motmetrics`` wheel ships (TUD-Campus, TUD-Stadtmitte). A
detector's output is simulated from it, seeded: a share of the boxes dropped, the rest jittered,
confidences spread, and false positives on some frames. ``motmetrics`` 1.4.0 still calls
``np.asfarray``, which numpy 2 removed; :func:`import_motmetrics` puts it back first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError


def import_motmetrics():
    """``motmetrics``, with the ``np.asfarray`` it needs on numpy 2."""
    if not hasattr(np, "asfarray"):
        np.asfarray = lambda a, dtype=np.float64: np.asarray(a, dtype=dtype)  # type: ignore[attr-defined]
    try:
        import motmetrics
    except ImportError:
        raise ConfigError("scoring needs motmetrics; pip install 'inferpath[track]' motmetrics") from None
    return motmetrics


def ground_truth_path(sequence: str) -> Path:
    """``gt.txt`` of a sequence shipped in the motmetrics wheel (``TUD-Campus``, ``TUD-Stadtmitte``)."""
    mm = import_motmetrics()
    path = Path(mm.__file__).parent / "data" / sequence / "gt.txt"
    if not path.is_file():
        raise ConfigError(f"{path}: no ground truth for {sequence!r} in the motmetrics package")
    return path


def degrade(gt: np.ndarray, seed: int = 0, drop: float = 0.25, jitter: float = 0.06, fp_frames: float = 0.15,
            size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """Detections a real detector might give for ground truth rows (frame, id, x, y, w, h, ...).

    Each box is dropped with probability ``drop``; a kept box has its centre moved and its size
    scaled with a Gaussian of sigma ``jitter`` times its size, and a confidence ~ N(0.8, 0.15)
    clipped to [0.3, 1]. On a ``fp_frames`` share of the frames one false positive appears (a
    ground-truth-sized box anywhere in the ``size`` frame, confidence uniform in [0.3, 0.75]).
    Returns MOTChallenge detection rows: frame, -1, x, y, w, h, conf.
    """
    rng = np.random.default_rng(seed)
    w_img, h_img = size
    rows = []
    frames = gt[:, 0].astype(int)
    for f in np.unique(frames):
        for r in gt[frames == f]:
            if rng.random() < drop:
                continue
            x, y, w, h = r[2:6]
            cx, cy = x + w / 2 + rng.normal(0, jitter * w), y + h / 2 + rng.normal(0, jitter * h)
            w2, h2 = w * (1 + rng.normal(0, jitter)), h * (1 + rng.normal(0, jitter))
            conf = float(np.clip(rng.normal(0.8, 0.15), 0.3, 1.0))
            rows.append([f, -1, cx - w2 / 2, cy - h2 / 2, w2, h2, conf])
        if rng.random() < fp_frames:
            w, h = gt[rng.integers(len(gt)), 4:6]
            rows.append([f, -1, rng.uniform(0, w_img - w), rng.uniform(0, h_img - h), w, h,
                         float(rng.uniform(0.3, 0.75))])
    return np.array(rows, np.float64).reshape(-1, 7)


def score(gt: np.ndarray, results: np.ndarray, iou: float = 0.5) -> dict[str, float]:
    """MOTA, IDF1, ID switches, false positives and misses of ``results`` against ``gt`` (MOT rows)."""
    mm = import_motmetrics()
    acc = mm.MOTAccumulator(auto_id=False)
    gt_frames = gt[:, 0].astype(int)
    res_frames = results[:, 0].astype(int) if len(results) else np.zeros(0, int)
    for f in np.unique(np.r_[gt_frames, res_frames]):
        g, h = gt[gt_frames == f], results[res_frames == f]
        dist = mm.distances.iou_matrix(g[:, 2:6], h[:, 2:6], max_iou=1 - iou)
        acc.update(g[:, 1].astype(int).tolist(), h[:, 1].astype(int).tolist(), dist, frameid=int(f))
    names = ["mota", "idf1", "num_switches", "num_false_positives", "num_misses"]
    row = mm.metrics.create().compute(acc, metrics=names, name="seq").iloc[0]
    return {"mota": float(row["mota"]), "idf1": float(row["idf1"]), "id_switches": int(row["num_switches"]),
            "false_positives": int(row["num_false_positives"]), "misses": int(row["num_misses"])}
