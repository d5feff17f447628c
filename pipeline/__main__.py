"""``python -m pipeline`` is the ``inferpath`` command."""

from pipeline.cli import entry

entry()
