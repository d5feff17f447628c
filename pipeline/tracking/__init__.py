"""Object tracking and counting: stable ids per stream, line crossings, zone occupancy.

- :mod:`pipeline.tracking.tracker`: one stream's tracker (Roboflow ``trackers``, an extra:
  ``pip install 'inferpath[track]'``), fed with stream time so dropped frames are predicted across.
- :mod:`pipeline.tracking.counting`: line and zone geometry and counters (numpy only).
- :mod:`pipeline.tracking.stream`: the per-stream state the pipeline's sink stage drives.
- :mod:`pipeline.tracking.mot`: MOTChallenge detections in, results out (``inferpath track``).

Nothing here imports the tracker library until a tracker is made.
"""

from __future__ import annotations

from pipeline.tracking.tracker import INSTALL_HINT

__all__ = ["INSTALL_HINT"]
