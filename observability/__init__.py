"""Reliability and telemetry for every task: the base task, the error taxonomy, dead letters and logging."""
