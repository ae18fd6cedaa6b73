"""Benchmarks of messplus: load tests of the gRPC service against the ceilings of this host, the predictor alone,
the kernels, memory. `python -m bench.run_all` runs the whole suite and regenerates docs/BENCHMARKS.md."""
