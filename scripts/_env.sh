# Sourced by scripts/run and scripts/test: make .venv exist and match requirements.txt.
# Installs only when requirements.txt changed since the last install (stamp in .venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
    echo "setup: installing requirements (first time: a few minutes)" >&2
    "$VENV/bin/python" -m pip install -q -U pip >&2
    "$VENV/bin/python" -m pip install -q -r requirements.txt >&2
    echo "$want" > "$STAMP"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
