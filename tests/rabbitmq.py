"""``rabbitmqctl`` for the tests that make RabbitMQ virtual hosts of their own (the machine's RabbitMQ, which every
machine of this project runs; ``.ci/run`` starts it when it is down)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

__all__ = ["rabbitmqctl"]


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl -q ARGS``, fail the test with its output when it fails, return what it printed."""
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        pytest.fail("rabbitmqctl not found: RabbitMQ runs on every machine of this project (.ci/run starts it)")
    result = subprocess.run([binary, "-q", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout
