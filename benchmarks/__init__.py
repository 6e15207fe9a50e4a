"""Benchmarks writing JSON (results in ``benchmarks/results/``). Each runs as a script,
``python benchmarks/NAME.py ...``; the tests import them as ``benchmarks.NAME``."""
