"""Fixtures of the health tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import redis_url


@pytest.fixture(scope="module")
def redis() -> Iterator[str]:
    """A Redis URL: a shared server, or a private one started for these tests."""
    with redis_url() as url:
        yield url
