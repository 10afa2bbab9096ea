# Sourced by scripts/run and scripts/test: make .venv exist and match requirements.txt
# (and requirements-ray.txt when WITH_RAY=1). Installs only when a file changed since
# its last install (stamps in .venv).
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
if [ "${WITH_RAY:-0}" = 1 ]; then
    RAY_STAMP="$VENV/.requirements-ray.sha256"
    want_ray="$(sha256sum requirements-ray.txt | cut -d' ' -f1)"
    if [ "$(cat "$RAY_STAMP" 2>/dev/null || true)" != "$want_ray" ]; then
        echo "setup: installing Ray Serve (requirements-ray.txt)" >&2
        "$VENV/bin/python" -m pip install -q -r requirements.txt -r requirements-ray.txt >&2  # one resolve: the pins hold
        echo "$want_ray" > "$RAY_STAMP"
    fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
