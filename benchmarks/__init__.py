"""Benchmarks and studies (``pytest benchmarks/ --benchmark-only``, scripts run as ``python benchmarks/<name>.py``).

A package so that the benchmark files share helpers by import: ``from benchmarks.common import ...``.
"""
