"""The fixtures of every tier live in tests/support/fixtures.py (real Triton, the ONNX predictor, routers in
this process or in processes of their own); tests/support/ holds the harness the benchmarks use too."""

pytest_plugins = ["tests.support.fixtures"]
