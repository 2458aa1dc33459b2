"""Benchmarks of what the monitor costs; run them with `python -m bench` (see bench/__main__.py)."""
