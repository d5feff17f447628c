# Shared by demo.sh and test.sh: system libraries, then a project virtual environment.
# Usage: source scripts/_venv.sh EXTRAS   (EXTRAS: "" or "dev" ...)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INFERPATH_VENV:-$REPO/.venv}"
if [ -z "${1:-}" ]; then
    bash "$REPO/scripts/install_system_deps.sh" --core
else
    bash "$REPO/scripts/install_system_deps.sh"
fi
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
extras="${1:-}"
target="$REPO"
[ -n "$extras" ] && target="$REPO[$extras]"
stamp="$VENV/.inferpath-installed-$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)-${extras:-core}"
if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$target"
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
