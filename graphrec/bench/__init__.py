"""Benchmarks that print tables and write JSON: ``python -m graphrec.bench <what>`` (never timed tests)."""
