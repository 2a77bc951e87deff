"""The exchange's routing without a cluster: which node each attempt goes to as the
answers name a leader (``x-quorate-leader``), and which hints are followed at all.
Answers are made by hand; test_client.py shows the same against a real cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import quorate
from quorate import AsyncClient, Client
from quorate import _calls as calls
from quorate._exchange import LEADER_HEADER, Exchange, Nodes, parse_hint
from quorate.failure import Failures

A, B, C = "http://10.0.0.1:7101", "http://10.0.0.2:7101", "http://10.0.0.3:7101"
#: A leader the client was not configured with (advertised under another name).
ELSEWHERE = "http://q4.example:7101"
PATH = calls.cluster().path


def nodes(*urls: str) -> Nodes:
    return Nodes(list(urls), timeout=1.0, deadline=30.0, backoff=0.01, max_backoff=0.02)


def exchange(n: Nodes) -> Exchange[Any]:
    return Exchange(n, Failures(), calls.cluster(), None)


def answer(status: int, leader: str | None) -> httpx.Response:
    headers = {LEADER_HEADER: leader} if leader else {}
    return httpx.Response(status, headers=headers, json={})


def refused() -> httpx.ConnectError:
    return httpx.ConnectError("connection refused")


def target(x: Exchange[Any]) -> str:
    url, _ = x.next()
    assert url.endswith(PATH)
    return url[: -len(PATH)]


def test_attempts_go_to_the_hinted_leader_and_follow_it() -> None:
    n = nodes(A, B, C)
    # No hint yet: the first configured node; its answer names B.
    x = exchange(n)
    assert target(x) == A
    x.answered(answer(200, B))
    assert x.done and n.leader == B and n.preferred == 0

    # The next call goes straight to B, whose answer names a new leader: followed.
    x = exchange(n)
    assert target(x) == B
    x.answered(answer(200, C))
    assert x.done and n.leader == C
    assert n.preferred == 0, "an answer from a hint does not move the node rotation"

    # Even to a node the client was not configured with (as the Rust client).
    x = exchange(n)
    assert target(x) == C
    x.answered(answer(200, ELSEWHERE))
    x = exchange(n)
    assert target(x) == ELSEWHERE
    x.answered(answer(200, None))  # no header: the hint stays
    assert n.leader == ELSEWHERE


def test_a_failed_hint_is_dropped_and_the_nodes_tried_in_turn() -> None:
    n = nodes(A, B, C)
    n.leader = C
    x = exchange(n)
    assert target(x) == C
    x.unreachable(refused())
    assert n.leader is None and not x.done and x.wait == 0
    # The configured nodes, from the preferred one; a stale answer naming the dead
    # leader again is not retried in this round.
    assert target(x) == A
    x.answered(answer(503, C))
    assert n.leader == C
    assert target(x) == B
    x.answered(answer(200, B))  # B was elected
    assert x.done and n.leader == B and n.preferred == 1
    assert target(exchange(n)) == B


def test_a_hint_answering_503_is_dropped_but_a_new_name_in_it_is_followed() -> None:
    n = nodes(A, B, C)
    n.leader = A
    x = exchange(n)
    assert target(x) == A
    x.answered(answer(503, B))  # A stepped down and names B
    assert n.leader == B
    assert target(x) == B
    x.answered(answer(200, B))
    assert x.done and n.leader == B


def test_a_dead_hint_is_tried_again_each_round_only() -> None:
    n = nodes(A, B)
    n.leader = C
    x = exchange(n)
    seen = []
    for _ in range(6):
        seen.append(target(x))
        x.answered(answer(503, C))
        assert not x.done
    # Each round: the hint once, then every configured node; then back off.
    assert seen == [C, A, B, C, A, B]
    assert x.attempt == 4


def test_only_bare_base_urls_are_followed_and_https_is_never_downgraded() -> None:
    assert parse_hint("http://127.0.0.1:7102", False) == "http://127.0.0.1:7102"
    assert parse_hint("https://q2.example:8443/", True) == "https://q2.example:8443"
    assert parse_hint("http://[::1]:7101", False) == "http://[::1]:7101"
    assert parse_hint("http://127.0.0.1:7102", True) is None
    for bad in [
        None,
        "",
        "127.0.0.1:7102",
        "ftp://h:1",
        "http://h:1/path",
        "http://h:1/?q=1",
        "http://h:1#f",
        "http://user:pw@h:1",
        "http://h:99999",
        "http://",
        "http://h 1:2",
    ]:
        assert parse_hint(bad, False) is None, bad
    # A client with an https node ignores an http hint.
    n = nodes("https://10.0.0.1:7101", A)
    n.follow(httpx.Headers({LEADER_HEADER: B}))
    assert n.leader is None
    n.follow(httpx.Headers({LEADER_HEADER: "https://10.0.0.2:7101"}))
    assert n.leader == "https://10.0.0.2:7101"


CLUSTER_JSON = {"node_id": 1, "leader_id": 2, "term": 3, "members": []}


def test_both_clients_send_to_the_leader_the_answers_name() -> None:
    """The clients' I/O loops pass every answer's headers to the exchange."""
    sent: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.url.scheme}://{request.url.netloc.decode()}")
        return httpx.Response(200, headers={LEADER_HEADER: B + "/"}, json=CLUSTER_JSON)

    with Client([A, B, C], transport=httpx.MockTransport(handle)) as c:
        assert c.leader_hint is None
        c.cluster()
        assert c.leader_hint == B
        c.cluster()
    assert sent == [A, B]

    async def run() -> None:
        async with AsyncClient([A, B, C], transport=httpx.MockTransport(handle)) as c:
            await c.cluster()
            assert c.leader_hint == B
            await c.cluster()

    sent.clear()
    asyncio.run(run())
    assert sent == [A, B]


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_proxy_error_from_the_hint_moves_on(status: int) -> None:
    n = nodes(A, B)
    n.leader = B
    x = exchange(n)
    assert target(x) == B
    x.answered(answer(status, None))
    assert n.leader is None
    assert target(x) == A


# -- a waiting acquire is one long request ------------------------------------------------


def acquire_call(wait: float | None) -> calls.Call[Any]:
    def undecided(exc: Exception) -> Any:
        raise exc

    return calls.acquire(["org:w"], 30, "lease-w", "me", undecided, wait)


def test_a_waiting_acquire_gets_the_wait_on_top_of_its_budget() -> None:
    n = Nodes([A, B], timeout=1.0, deadline=5.0, backoff=0.01, max_backoff=0.02)
    plain = Exchange(n, Failures(), acquire_call(None), None)
    _, timeout = plain.next()
    assert timeout == pytest.approx(1.0, abs=0.05)
    assert plain.body is not None and "wait_ms" not in plain.body

    x = Exchange(n, Failures(), acquire_call(30), None)
    url, timeout = x.next()
    # One request that may last the whole wait, not a poll: the read timeout covers
    # the wait plus the usual per-attempt timeout, and the call's deadline both.
    assert timeout == pytest.approx(31.0, abs=0.05)
    assert x.http_timeout.read == timeout
    assert x.http_timeout.connect == 1.0, "a dead node still fails fast"
    assert x.deadline - x.hold_until == pytest.approx(5.0, abs=0.05)
    assert x.body is not None and x.body["wait_ms"] == 30_000
    assert x.body["lease_id"] == "lease-w"

    # The node dies mid-wait: the retry goes to the next node with the same lease id
    # (so the waiter keeps its place) and asks only for what is left of the wait.
    x.hold_until -= 12.0  # as if 12 s of the wait had passed
    x.unreachable(refused())
    assert not x.done
    url2, timeout2 = x.next()
    assert url2.startswith(B) and url.startswith(A)
    assert x.body is not None and x.body["lease_id"] == "lease-w"
    assert 17_900 <= x.body["wait_ms"] <= 18_000
    assert timeout2 == pytest.approx(19.0, abs=0.1)

    # With the wait spent, a retry still asks (1 ms) rather than acquiring afresh.
    x.hold_until -= 60.0
    x.unreachable(refused())
    x.next()
    assert x.body is not None and x.body["wait_ms"] == 1


def test_a_wait_that_ends_ungranted_raises_with_the_queue_position() -> None:
    x = Exchange(nodes(A), Failures(), acquire_call(5), None)
    x.next()
    body = {
        "error": "limit_exceeded",
        "message": "no free slot on org:w",
        "blocked_by": ["org:w"],
        "slots": [{"key": "org:w", "used": 1, "limit": 1}],
        "retry_after_ms": 900,
        "queue_position": 3,
    }
    x.answered(httpx.Response(429, headers={"retry-after": "1"}, json=body))
    with pytest.raises(quorate.LimitExceeded) as e:
        x.outcome()
    assert (e.value.queue_position, e.value.blocked_by, e.value.retry_after) == (3, ["org:w"], 0.9)

    granted = Exchange(nodes(A), Failures(), acquire_call(5), None)
    granted.next()
    lease = {"lease_id": "lease-w", "fencing_token": 7, "expires_at_ms": 1, "waited_ms": 2500}
    granted.answered(httpx.Response(200, json=lease))
    assert granted.outcome().waited == 2.5
