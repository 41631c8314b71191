"""Benchmarks: ``python -m tests.bench`` (``nox -s bench``) prints ours vs a baseline, side by side.

Nothing here is collected by pytest (no ``test_`` modules): timings are reported, never asserted.
"""
