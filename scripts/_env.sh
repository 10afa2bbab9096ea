# Sourced by scripts/run and scripts/test: make .venv hold the project (editable) and the
# versions uv.lock pins, with the extras in EXTRAS (e.g. "ray") and the dev group when
# WITH_DEV=1. Needs only python3 (3.11) and PyPI: it gets uv itself (the version below, into
# .tools/uv), and installs only when uv.lock, pyproject.toml or the wanted set changed since
# the last install (a stamp in .venv).
#   SYNC=exact    remove what the lock does not list (./scripts/test)
#   SYNC=add      keep what is there beyond it, e.g. the test tools (./scripts/run)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
UV_VERSION=0.13.9
UV="$ROOT/.tools/uv/bin/uv"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
export UV_PYTHON_DOWNLOADS=never  # the python3 found here, never one uv downloads

case "$("$UV" --version 2>/dev/null || true)" in
    "uv $UV_VERSION"*) ;;
    *)
        echo "setup: getting uv $UV_VERSION (into .tools/uv)" >&2
        rm -rf "$ROOT/.tools/uv"
        PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --disable-pip-version-check --no-warn-script-location \
            --target "$ROOT/.tools/uv" "uv==$UV_VERSION" >&2
        ;;
esac

want=()
for extra in ${EXTRAS:-}; do want+=(--extra "$extra"); done
if [ "${WITH_DEV:-0}" = 1 ]; then want+=(--group dev); else want+=(--no-dev); fi
# one stamp per wanted set: ./scripts/test's exact sync keeps all that ./scripts/run adds
stamp="$VENV/.uv-sync-$(echo "${want[*]} ${SYNC:-exact}" | sha256sum | cut -c1-12)"
digest="$(cat uv.lock pyproject.toml | sha256sum | cut -d' ' -f1) uv $UV_VERSION"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$digest" ]; then
    [ -x "$VENV/bin/python" ] || { echo "setup: creating $VENV" >&2; "$UV" venv -q --python "$PY" "$VENV" >&2; }
    echo "setup: installing uv.lock into .venv (${want[*]}; the first time: a minute or more)" >&2
    # --locked: a pyproject.toml that no longer matches uv.lock stops here, with uv saying
    # to run `.tools/uv/bin/uv lock`.
    inexact=(); [ "${SYNC:-exact}" = exact ] || inexact=(--inexact)
    UV_PROJECT_ENVIRONMENT="$VENV" "$UV" sync -q --locked "${want[@]}" "${inexact[@]}" >&2
    echo "$digest" > "$stamp"
    echo "setup: .venv ready ($SECONDS s)" >&2
fi
