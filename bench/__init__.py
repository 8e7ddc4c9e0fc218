"""Benchmarks and reliability scenarios: ``python -m bench.NAME`` (``--smoke`` for CI scale)."""
