#!/usr/bin/env bash
# Install Inferpath in .venv and run the main job: the bundled model over the bundled sample video.
# Writes outputs/vtest.jsonl, outputs/vtest.mp4 and outputs/summary.json, and prints the summary.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" ""
cd "$REPO"
exec inferpath run configs/sample.yaml "$@"
