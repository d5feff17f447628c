"""Metrics: bounded series."""

from __future__ import annotations

import numpy as np

from pipeline.metrics import Series


def test_metrics_series_memory_is_bounded():
    s = Series(capacity=1000)
    for i in range(5000):
        s.add(i / 1e3, float(i))
    assert len(s) == 1000 and s.count == 5000 and s._values.nbytes == 4000
    np.testing.assert_allclose(s.values(), np.arange(4000, 5000) / 1e3, rtol=1e-6)  # the most recent, in order
    assert s.values(since=4990).size == 10
