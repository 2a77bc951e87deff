"""pytest fixtures for code that uses quorate, registered through the ``pytest11``
entry point when the package is installed (or add
``pytest_plugins = ["quorate.testing.pytest_plugin"]`` to a ``conftest.py``).

- ``quorate_fake``: a fresh :class:`~quorate.testing.FakeCluster` per test. Its
  seed is the ``quorate_fake_config`` fixture (``None``: no policies, default limit
  10); override that fixture to return the path of your ``cluster.toml``.
- ``quorate_client`` / ``quorate_async_client``: fake clients on that cluster.

Move time with ``quorate_fake.advance(seconds)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ._client import FakeAsyncClient, FakeClient
from ._cluster import FakeCluster


@pytest.fixture
def quorate_fake_config() -> str | Path | None:
    """The ``cluster.toml`` that seeds ``quorate_fake`` (override to give one)."""
    return None


@pytest.fixture
def quorate_fake(quorate_fake_config: str | Path | None) -> FakeCluster:
    if quorate_fake_config is None:
        return FakeCluster()
    return FakeCluster.from_config(quorate_fake_config)


@pytest.fixture
def quorate_client(quorate_fake: FakeCluster) -> Iterator[FakeClient]:
    with quorate_fake.client() as c:
        yield c


@pytest.fixture
def quorate_async_client(quorate_fake: FakeCluster) -> FakeAsyncClient:
    return quorate_fake.async_client()
