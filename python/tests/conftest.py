"""Shared fixtures: one healthy session-wide cluster, one cluster for faults.

Example tests get ``apps``: the workers of their module's ``EXAMPLE`` (started with
its ``ARGS``, if any), stopped at the end of each test.

Most tests share ``cluster`` (started once per session; tests use unique keys so they
do not see each other's slots or buckets). Tests that kill nodes use ``chaos_cluster``,
a second cluster that is healed (every node started, a leader agreed) before each
such test, so a failed kill test cannot break the others.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from apps import Workers
from quorate_cluster import Cluster, find_binary


@pytest.fixture(scope="session")
def quorate_bin() -> Path:
    return find_binary()


def _started(request: pytest.FixtureRequest, c: Cluster) -> Iterator[Cluster]:
    failed_before = request.session.testsfailed
    try:
        c.start()
        yield c
    finally:
        if request.session.testsfailed > failed_before:
            print(c.tails(40))
        c.close()


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, quorate_bin: Path) -> Iterator[Cluster]:
    yield from _started(request, Cluster(quorate_bin, name="shared"))


@pytest.fixture(scope="session")
def _chaos_cluster(request: pytest.FixtureRequest, quorate_bin: Path) -> Iterator[Cluster]:
    yield from _started(request, Cluster(quorate_bin, name="chaos", request_timeout_ms=1500))


@pytest.fixture
def chaos_cluster(_chaos_cluster: Cluster) -> Iterator[Cluster]:
    _chaos_cluster.heal()
    yield _chaos_cluster
    _chaos_cluster.heal()


@pytest.fixture
def uid() -> str:
    """A short unique suffix for keys, so tests sharing a cluster never collide."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def apps(request: pytest.FixtureRequest) -> Iterator[Workers]:
    """Starts the workers of the test module's ``EXAMPLE``; stops them afterwards."""
    workers = Workers(request.module.EXAMPLE, getattr(request.module, "ARGS", ()))
    try:
        yield workers
    finally:
        workers.stop()
