#!/usr/bin/env bash
# Install the Debian/Ubuntu system packages Inferpath needs on a bare machine:
#   - shared libs for opencv-python wheels (libGL, glib)
#   - GStreamer + gst-rtsp-server + PyGObject for scripts/rtsp_server.py
#   - headless Chromium for the live view's browser test (tests/test_web.py)
#   - the mosquitto MQTT broker for the event sinks' tests (tests/test_events.py)
# Idempotent: if every package is already installed it runs no apt-get at all.
set -euo pipefail

PKGS=(
  libgl1
  libglib2.0-0
)
# `--core`: only what the pipeline itself needs (the demo); default: also the RTSP test server.
if [[ "${1:-}" != "--core" ]]; then
PKGS+=(
  python3-gi
  gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly
  gstreamer1.0-libav
  gstreamer1.0-tools
  chromium
  mosquitto
)
fi

is_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

# python3-venv only if `python3 -m venv` is unusable (Debian splits ensurepip
# out of the stdlib). Cheap dpkg check first; the real (slower) probe only
# runs when the package is absent, e.g. for a pyenv/non-Debian python3.
if ! is_installed python3-venv && command -v python3 >/dev/null 2>&1; then
  probe="$(mktemp -d)"
  python3 -m venv "$probe/v" >/dev/null 2>&1 || PKGS+=(python3-venv)
  rm -rf "$probe"
fi

missing=()
for p in "${PKGS[@]}"; do
  is_installed "$p" || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install_system_deps: all ${#PKGS[@]} system packages already installed, nothing to do"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "install_system_deps: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0)

echo "install_system_deps: installing ${missing[*]}"

# Refresh package lists first only when they are empty (fresh container).
if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
  "${APT[@]}" update >/dev/null
  "${APT[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
elif ! "${APT[@]}" install --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  # Stale lists (404s / unknown packages): update and retry once.
  "${APT[@]}" update >/dev/null
  "${APT[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
fi
