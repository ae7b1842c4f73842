"""Benchmarks of the marketplace: the price of reliability and telemetry, and the domain's speed.

Run ``python -m bench.run`` (``--help`` for sizes); results print as a table and go to ``bench/results/``.
Benchmarks report figures; they never pass or fail on time.
"""
