"""Inferpath benchmarks, one module per mode (``python scripts/bench.py --modes ...``).

``cli.py`` is the command line; ``common.py`` what the modes share; ``report.py`` the
``--report`` markdown and plots; every other module is one mode with ``run(args, work)``.
Importing the package puts the checkout on ``sys.path`` so it runs without installing.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
