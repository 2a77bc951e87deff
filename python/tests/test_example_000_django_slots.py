"""Seed 000 end to end: concurrency slots per organisation plus a global cap, held by
background jobs of a Django app (``examples/000_django_slots``), released on every
path. A full org waits its turn (FIFO across two worker processes) and is answered
429 only when its wait ends; a leader kill admits nobody extra."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest
from apps import App, Workers, app_env, spread, statuses
from quorate_cluster import Cluster, poll

import quorate

EXAMPLE = "000_django_slots"
ARGS = ["serve"]


def env(urls: list[str], uid: str, wait: float = 0.5, **extra: object) -> dict[str, str]:
    """The app's environment; ``wait`` is its EXECUTION_WAIT (short by default, so a
    full org's 429 comes quickly, after a real wait)."""
    return app_env(urls, GLOBAL_KEY=f"global-{uid}", LEASE_TTL=5, EXECUTION_WAIT=wait, **extra)


def start(c: httpx.Client, org: str) -> httpx.Response:
    return c.post(f"/orgs/{org}/executions")


def finish_all(app: App, responses: list[httpx.Response], fail: bool = False) -> None:
    for r in responses:
        if r.status_code == 202:
            eid = r.json()["execution_id"]
            app.http.post(f"/executions/{eid}/finish", params={"fail": "1" if fail else "0"})


def used(client: quorate.Client, key: str) -> int:
    return client.slots(key).used


def wait_used(client: quorate.Client, key: str, n: int) -> None:
    poll(f"{key} used == {n}", lambda: True if used(client, key) == n else None, deadline=15)


def test_org_and_global_limits_and_release_paths(cluster: Cluster, uid: str, apps: Workers) -> None:
    glob = f"global-{uid}"
    with quorate.Client(cluster.urls) as client:
        # The seed's global cap is 50 (policy "global"); this test's private global key
        # gets the same cap as an override, the way an operator would set it.
        client.set_limit(glob, 50)
        (app,) = apps.start(env(cluster.urls, uid))
        org = f"a{uid}"
        first = [start(app.http, org) for _ in range(6)]
        assert [r.status_code for r in first] == [202] * 5 + [429]
        denied = first[5]
        assert int(denied.headers["retry-after"]) >= 1
        # It waited, first in line, then gave up; blocked_by names every key it
        # waited on (the org is full, the global key has room).
        assert denied.json()["blocked_by"] == [f"org:{org}", glob]
        assert denied.json()["usage"][f"org:{org}"] == {"used": 5, "limit": 5}
        assert denied.json()["queue_position"] == 1
        assert all(r.json()["waited"] == 0 for r in first[:5])
        assert used(client, f"org:{org}") == 5
        assert used(client, glob) == 5

        # Completion frees a slot; so does failure; a failed hand-off never holds one.
        finish_all(app, first[:1])
        wait_used(client, f"org:{org}", 4)
        finish_all(app, first[1:2], fail=True)
        wait_used(client, f"org:{org}", 3)
        state = app.http.get(f"/executions/{first[1].json()['execution_id']}").json()["state"]
        assert state == "failed"
        broken = app.http.post(f"/orgs/{org}/executions", params={"enqueue_fail": "1"})
        assert broken.status_code == 500
        assert used(client, f"org:{org}") == 3
        # A retried request with the same execution id does not take a second slot.
        eid = f"exec-{uid}"
        r1 = app.http.post(f"/orgs/{org}/executions", params={"execution_id": eid})
        assert r1.status_code == 202
        assert used(client, f"org:{org}") == 4

        # The global cap: 10 more orgs x 5 wanted, only 50 - 4 fit.
        more = [start(app.http, f"o{i}{uid}") for i in range(10) for _ in range(5)]
        assert statuses(more)[202] == 46
        assert used(client, glob) == 50
        denials = [r.json() for r in more if r.status_code == 429]
        assert len(denials) == 4
        assert all(d["usage"][glob] == {"used": 50, "limit": 50} for d in denials)
        assert all(glob in d["blocked_by"] and d["queue_position"] == 1 for d in denials)

        # Per-org override, like the seed's set_org_rate_limit command.
        client.set_limit(f"org:{org}", 6)
        assert client.get_limit(f"org:{org}").source == "override"
        rows = {r.key: r for r in client.list_limits(f"org:{org}").limits}
        assert rows[f"org:{org}"].used == 4
        assert client.delete_limit(f"org:{org}")

        finish_all(app, [*first[2:5], r1, *more])
        wait_used(client, glob, 0)


def test_two_workers_share_the_org_limit(cluster: Cluster, uid: str, apps: Workers) -> None:
    workers = apps.start(env(cluster.urls, uid), n=2)
    org = f"b{uid}"
    responses = spread(workers, 16, lambda c, _i: start(c, org), threads=8)
    counts = statuses(responses)
    assert counts[202] == 5, counts
    assert counts[429] == 11, counts
    assert len({r.json()["pid"] for r in responses if r.status_code == 202}) >= 1
    with quorate.Client(cluster.urls) as client:
        assert used(client, f"org:{org}") == 5
        for a in workers:  # each worker finishes the jobs it runs
            finish_all(a, responses)
        wait_used(client, f"org:{org}", 0)


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


def test_two_workers_take_turns_in_fifo_order(
    cluster: Cluster, uid: str, apps: Workers, background: ThreadPoolExecutor
) -> None:
    """Limit 1: A runs; B (on worker 1) and then C (on worker 2) wait in that order,
    each in a request held open by its worker; A finishes -> B runs, B finishes -> C
    runs. The order is the queue's, not whoever polls first."""
    one, two = apps.start(env(cluster.urls, uid, wait=60), n=2)
    org = f"f{uid}"
    key = f"org:{org}"
    a, b, c = (f"{x}-{uid}" for x in "abc")

    def start_as(app: App, eid: str) -> Future[httpx.Response]:
        def send() -> httpx.Response:
            with httpx.Client(base_url=app.url, timeout=90.0, trust_env=False) as http:
                return http.post(f"/orgs/{org}/executions", params={"execution_id": eid})

        return background.submit(send)

    def state(app: App, eid: str) -> str:
        return str(app.http.get(f"/executions/{eid}").json()["state"])

    with quorate.Client(cluster.urls) as client:
        client.set_limit(key, 1)

        def waiting() -> list[str | None]:
            return [w.lease_id for w in client.slots(key).queue.waiters]

        def queue_is(ids: list[str]) -> None:
            poll(f"queue of {key} == {ids}", lambda: True if waiting() == ids else None, 15)

        ra = start_as(one, a).result(timeout=30)
        assert ra.status_code == 202 and ra.json()["waited"] == 0
        poll("A running", lambda: True if state(one, a) == "running" else None, 15)
        rb = start_as(one, b)
        queue_is([b])  # B waits before C asks
        rc = start_as(two, c)
        queue_is([b, c])
        assert not rb.done() and not rc.done()
        assert used(client, key) == 1

        finish_all(one, [ra])
        got_b = rb.result(timeout=30)
        assert got_b.status_code == 202, got_b.text
        assert got_b.json()["waited"] > 0
        poll("B running", lambda: True if state(one, b) == "running" else None, 15)
        assert state(one, a) == "completed"
        assert waiting() == [c] and not rc.done(), "C still waits its turn"
        assert used(client, key) == 1

        finish_all(one, [got_b])
        got_c = rc.result(timeout=30)
        assert got_c.status_code == 202, got_c.text
        assert got_c.json()["waited"] > 0
        tokens = [r.json()["fencing_token"] for r in (ra, got_b, got_c)]
        assert tokens == sorted(tokens), "granted in the order they asked"
        poll("C running", lambda: True if state(two, c) == "running" else None, 15)
        assert state(one, b) == "completed"
        assert waiting() == [] and used(client, key) == 1
        finish_all(two, [got_c])
        wait_used(client, key, 0)
        client.delete_limit(key)


def test_leader_kill_admits_nobody_extra(chaos_cluster: Cluster, uid: str, apps: Workers) -> None:
    c = chaos_cluster
    # No waiting here: this test is about admissions through an election.
    workers = apps.start(env(c.urls, uid, wait=0), n=2)
    org = f"c{uid}"
    with quorate.Client(c.urls, deadline=15) as client:
        client.set_limit(f"global-{uid}", 50)
        before = [start(workers[i % 2].http, org) for i in range(3)]
        assert statuses(before)[202] == 3
        c.kill(c.leader_id())
        during = spread(workers, 10, lambda cl, _i: start(cl, org), threads=5)
        counts = statuses(during)
        assert counts[202] <= 2, counts  # never more than the 5 in total
        assert counts[503] <= 3, counts  # bounded errors through the election
        assert c.leader_id() in c.running()
        assert used(client, f"org:{org}") == 3 + counts[202]
        for a in workers:
            finish_all(a, before + during)
        wait_used(client, f"org:{org}", 0)


def test_fail_closed_and_fail_open_when_cluster_down(
    chaos_cluster: Cluster, uid: str, apps: Workers
) -> None:
    c = chaos_cluster
    closed, opened = apps.start_closed_and_open(env(c.urls, uid, 0, QUORATE_DEADLINE=1.5))
    for nid in list(c.running()):
        c.kill(nid)
    r = start(closed.http, f"d{uid}")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    admitted = [start(opened.http, f"d{uid}") for _ in range(7)]
    # Fail-open runs the work without a lease -- over the org limit of 5, by choice.
    assert [a.status_code for a in admitted] == [202] * 7
    assert all(a.json()["degraded"] for a in admitted)
    finish_all(opened, admitted)
