# The two commands: `make serve` (set up, then run the router with a local Triton and the demo zoo)
# and `make test` (set up, then run the whole test suite). Both work on a fresh clone; the set-up runs pip only
# when pyproject.toml, constraints.txt or scripts/setup.sh changed since it last ran.
.PHONY: serve test setup-demo setup-dev protos bench bench-gpu bench-gpu-device constraints

serve: setup-demo
	.venv/bin/messplus serve

test: setup-dev
	.venv/bin/python -m pytest -q

setup-demo:
	./scripts/setup.sh demo

setup-dev:
	./scripts/setup.sh dev

# The benchmark suite (< 10 minutes): load tests against this host's ceilings, kernels, memory; rewrites
# docs/BENCHMARKS.md and the README's speed table.
bench: setup-dev
	.venv/bin/python -m bench.run_all

# The whole Route path on a GPU (under 10 minutes; needs ONNX Runtime's CUDA provider): a Route-only router on
# CUDA under load at 1 to 1,024 clients beside the echo and encoder ceilings; writes docs/bench/gpu_route.json
# and docs/BENCHMARKS.md's GPU section. On a lent GPU box: `.venv/bin/python scripts/gpu_payload.py` here, then
# `make bench-gpu-device` there, once per payload part (the script prints the calls).
bench-gpu: setup-dev
	.venv/bin/python -m bench.gpu_route

bench-gpu-device:
	bash scripts/gpu_device.sh

protos: setup-dev
	.venv/bin/python scripts/gen_protos.py

# After changing a dependency in pyproject.toml: install what its ranges now need into .venv, unpinned (pip keeps
# the installed versions that still fit), and re-pin constraints.txt (what the image and scripts/setup.sh install)
# to the versions installed; then run `make test` and commit both files.
constraints:
	.venv/bin/python -m pip install --quiet -e ".[dev]"
	.venv/bin/python scripts/constraints.py
