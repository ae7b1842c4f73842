"""Fixtures of the message-path tests: a TCP proxy in front of the test Redis, which a test freezes or cuts."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import TEST_REDIS_URL
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A proxy to the test Redis; point a process at ``proxy.url(TEST_REDIS_URL)``. Cut at teardown."""
    target = TcpProxy(target_port=urlsplit(TEST_REDIS_URL).port or 6379)
    target.start()
    yield target
    target.cut()
