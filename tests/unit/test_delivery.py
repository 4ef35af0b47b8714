"""One attempt and the delivery loop, against the SQL outbox on SQLite. Outbound HTTP goes through
`httpx.MockTransport`: these cases need a public receiver (whose answers are kept), or one that holds
its answer until the test lets go, which no local peer can stand in for deterministically."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import httpx
import pytest

from tests.sql_stores import migrated
from webhooks import outbox as sql_outbox
from webhooks.delivery import (
    AttemptOutcome,
    Deliverer,
    RetrySchedule,
    Signer,
    attempt,
    destination,
    destination_prefixes,
)
from webhooks.outbox import Delivery, DeliveryState, OutboxMessage, SqlOutbox
from webhooks.ssrf import PRIVATE_ADDRESS

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def unsigned(delivery: Delivery, timestamp: int) -> Mapping[str, str]:
    return {"webhook-id": delivery.id}


def delivery(url: str = "https://receiver.example/hook") -> Delivery:
    return Delivery("msg_1", url, b"{}", "standard", "", "job", False, DeliveryState.PENDING, 0, 0.0, 0.0, None, None)


def send(handler: Handler, target: Delivery, signer: Signer = unsigned) -> AttemptOutcome:
    async def run() -> AttemptOutcome:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await attempt(client, target, signer, timeout=1.0)

    return asyncio.run(run())


def answering(status: int, *, private: bool | None, **headers: str) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        extensions = {} if private is None else {PRIVATE_ADDRESS: private}
        return httpx.Response(status, headers=headers, content=b"receiver says hi", extensions=extensions)

    return handler


def test_a_public_receiver_s_answer_is_kept() -> None:
    outcome = send(answering(500, private=False), delivery())

    assert outcome.record.status_code == 500 and outcome.record.response_head == "receiver says hi"


@pytest.mark.parametrize("private", [True, None])  # None: a response the guard did not mark
def test_a_private_receiver_s_answer_and_redirect_target_are_not_kept(private: bool | None) -> None:
    outcome = send(answering(302, private=private, location="http://10.0.0.9/admin"), delivery())

    assert outcome.record.status_code == 302 and outcome.record.response_head is None
    assert outcome.record.error is not None and "10.0.0.9" not in outcome.record.error


def test_an_error_that_is_not_http_is_a_failed_attempt() -> None:
    def broken_signer(delivery: Delivery, timestamp: int) -> Mapping[str, str]:
        raise LookupError("no key for this tenant")

    bad_url = send(answering(200, private=False), delivery("http://receiver.example/a\x00b"))
    bad_signer = send(answering(200, private=False), delivery(), broken_signer)

    assert not bad_url.delivered and bad_url.record.error is not None
    assert bad_url.record.error.startswith("InvalidURL")
    assert not bad_signer.delivered and bad_signer.record.error == "LookupError: no key for this tenant"


def test_destinations_are_host_and_port_in_every_spelling() -> None:
    assert (
        destination("https://Example.COM/hook")
        == destination("https://example.com.:443/x?y")
        == ("https://example.com:443")
    )
    assert destination("http://[::1]:9/hook") == "http://[::1]:9"
    assert destination("http://[::1/hook") == "http://[::1/hook"  # unparseable: counts on its own
    assert destination_prefixes("http://example.com:80") == [
        "http://example.com:80/",
        "http://example.com.:80/",
        "http://example.com/",
        "http://example.com./",
    ]
    assert destination_prefixes("http://[::1]:9") == ["http://[::1]:9/"]


def test_a_slow_destination_holds_its_share_of_slots_and_the_others_go_out(tmp_path: Path) -> None:
    db = migrated(f"sqlite:///{tmp_path}/o.db")
    outbox = SqlOutbox(db)
    now = time.time()
    with db.write() as tx:
        for n in range(6):  # the slow host's deliveries are due first
            message = OutboxMessage(f"slow_{n}", f"http://slow.example/{n}", b"{}", "standard")
            sql_outbox.enqueue(tx, message, now - 10 + n)
        sql_outbox.enqueue(tx, OutboxMessage("other", "http://other.example/", b"{}", "standard"), now)
    claims = 0
    claim_due = outbox.claim_due

    def counting_claim_due(*args: object, **kwargs: object) -> list[Delivery]:
        nonlocal claims
        claims += 1
        return claim_due(*args, **kwargs)  # type: ignore[arg-type]

    outbox.claim_due = counting_claim_due  # type: ignore[method-assign]

    async def scenario() -> tuple[list[str], int]:
        release = asyncio.Event()
        sent: list[str] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            sent.append(request.url.host)
            if request.url.host == "slow.example":
                await release.wait()
            return httpx.Response(200, extensions={PRIVATE_ADDRESS: False})

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            deliverer = Deliverer(
                outbox, {"standard": unsigned}, RetrySchedule([0]), client, max_concurrency=4, max_per_destination=2
            )
            loop = asyncio.create_task(deliverer.run_forever())
            async with asyncio.timeout(10):
                while "other.example" not in sent:
                    await asyncio.sleep(0.01)
            sent_before_release = list(sent)
            claims_before = claims
            # A slot is free and the slow host's backlog is due, but it has no room: nothing to spin on.
            await asyncio.sleep(0.5)
            idle_claims = claims - claims_before
            release.set()
            async with asyncio.timeout(10):
                while len(sent) < 7 or outbox.next_due_at() is not None:
                    await asyncio.sleep(0.01)
            loop.cancel()
            await deliverer.abandon_in_flight()
        return sent_before_release, idle_claims

    sent_before_release, idle_claims = asyncio.run(scenario())

    assert sent_before_release == ["slow.example", "slow.example", "other.example"]
    assert idle_claims <= 3
    assert all(outbox.get(f"slow_{n}").state is DeliveryState.DELIVERED for n in range(6))  # type: ignore[union-attr]
    outbox.close()
