"""Test and benchmark tooling, not shipped in the package: a real tritonserver started on
loopback (``localtriton``) and free-running cameras (``camerasim``), for the tests, the
benchmarks and examples/03. Runs from a checkout (the repository root on ``sys.path``)."""
