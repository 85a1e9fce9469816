#!/usr/bin/env bash
# One-step setup: a virtual environment in .venv with sdlora and its dependencies.
# torch goes in first, pinned to 2.13.0, only when the environment has no torch yet: on a CPU
# machine that pin avoids gigabytes of CUDA wheels; on a GPU machine a torch you installed
# into .venv beforehand (or SDLORA_PYTHON's environment) is kept.
# SDLORA_PYTHON=/path/to/python installs into that interpreter's environment instead of .venv.
# --browser also installs Debian's chromium (for the browser test), through apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "The browser test needs chromium: install it (e.g. sudo apt-get install chromium) and run again." >&2
    exit 1
  fi
fi

if [ -n "${SDLORA_PYTHON:-}" ]; then
  py="$SDLORA_PYTHON"
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=.venv/bin/python
fi

"$py" -m pip install -q --upgrade pip
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  "$py" -m pip install -q "torch==2.13.0"
fi
"$py" -m pip install -q -e ".[dev]"
echo "sdlora installed in $("$py" -c 'import sys; print(sys.prefix)')"
