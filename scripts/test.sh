#!/usr/bin/env bash
# Install Inferpath with its test dependencies (pip + Debian's GStreamer RTSP server) and run the tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" "dev"
cd "$REPO"
ruff check pipeline tests scripts
exec python -m pytest "$@"
