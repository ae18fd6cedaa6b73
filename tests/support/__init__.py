"""What the test tiers and the benchmarks share to run a router.

    config.py     serve_toml(): the one writer of a `messplus serve` TOML (tests' and bench's variants are arguments)
    target.py     Target: the client side of a running router (address, channels, health, readiness)
    procs.py      ServerProcess: a server in a process of its own (port file, health readiness, SIGTERM/SIGKILL)
    inprocess.py  AppThread: `async with App(cfg)` in a thread of this process (real gRPC server on a free port)
    metrics.py    a Prometheus scrape and a percentile, for the tests that read what a router measured
    fixtures.py   the pytest fixtures both test tiers use (registered by tests/conftest.py)

Only fixtures.py imports pytest; the benchmarks import procs.py and config.py.
"""
