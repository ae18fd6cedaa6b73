# The two commands: `make serve` (set up, then run the router with a local Triton and the demo zoo)
# and `make test` (set up, then run the whole test suite). Both work on a fresh clone.
.PHONY: serve test setup-demo setup-dev protos bench

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

protos: setup-dev
	.venv/bin/python scripts/gen_protos.py
