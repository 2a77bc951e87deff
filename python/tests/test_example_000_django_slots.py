"""Seed 000 end to end: concurrency slots per organisation plus a global cap, held by
background jobs of a Django app (``examples/000_django_slots``), released on every
path. Two worker processes share the limits; a leader kill admits nobody extra."""

from __future__ import annotations

import httpx
from apps import App, Workers, app_env, spread, statuses
from quorate_cluster import Cluster, poll

import quorate

EXAMPLE = "000_django_slots"
ARGS = ["serve"]


def env(urls: list[str], uid: str, **extra: object) -> dict[str, str]:
    return app_env(urls, GLOBAL_KEY=f"global-{uid}", LEASE_TTL=5, **extra)


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
        assert denied.json()["blocked_by"] == [f"org:{org}"]
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
        blocked = [r.json()["blocked_by"] for r in more if r.status_code == 429]
        assert all(b == [glob] for b in blocked)

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


def test_leader_kill_admits_nobody_extra(chaos_cluster: Cluster, uid: str, apps: Workers) -> None:
    c = chaos_cluster
    workers = apps.start(env(c.urls, uid), n=2)
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
    closed, opened = apps.start_closed_and_open(env(c.urls, uid, QUORATE_DEADLINE=1.5))
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
