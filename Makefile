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

protos: setup-dev
	.venv/bin/python scripts/gen_protos.py
