#!/usr/bin/env bash
# One entry point for a fresh machine:
#   ./workbench.sh up     set up .venv, then start the stack and the dashboard (python manage.py up)
#   ./workbench.sh test   set up .venv (+ test tools, + Chromium when root), then run the test suite
#   ./workbench.sh down | status   pass through to manage.py
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

setup_venv() {
  local want=$1 stamp=.venv/.installed-$1
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
    "$PYTHON" -m venv .venv
  fi
  # Reinstall only when the pinned requirements changed.
  local sum; sum=$(cat requirements*.txt | sha256sum | cut -c1-16)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sum" ]; then
    echo "installing pinned requirements into .venv ..."
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "requirements${want#base}.txt"
    echo "$sum" > "$stamp"
  fi
}

ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium for the browser tests ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
  else
    echo "Chromium is missing: install it (e.g. sudo apt-get install chromium) for the browser tests." >&2
    return 1
  fi
}

cmd=${1:-up}; shift || true
case "$cmd" in
  up)     setup_venv base; exec .venv/bin/python manage.py up "$@" ;;
  # Two pytest workers, each with a stack of its own (tests/settings.py): much of the suite waits on
  # processes and timeouts rather than the CPU. WORKBENCH_TEST_WORKERS=0 runs it in one process.
  test)   setup_venv -test; ensure_chromium
          exec .venv/bin/python -m pytest -n "${WORKBENCH_TEST_WORKERS:-2}" --dist loadfile "$@" ;;
  down|status) exec .venv/bin/python manage.py "$cmd" "$@" ;;
  *) echo "usage: ./workbench.sh up|test|down|status" >&2; exit 2 ;;
esac
