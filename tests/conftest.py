"""The fixtures of every tier live in tests/support/fixtures.py (real Triton, the ONNX predictor, routers in
this process or in processes of their own) and tests/support/pg_fixtures.py (a real PostgreSQL); tests/support/
holds the harness the benchmarks use too."""

pytest_plugins = ["tests.support.fixtures", "tests.support.pg_fixtures"]
