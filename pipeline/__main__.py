"""``python -m pipeline`` is the ``inferpath`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
