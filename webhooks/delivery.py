"""Webhook delivery: one attempt at a time, a retry schedule that is data, and a loop apart from inference.

One attempt signs afresh (new timestamp, same webhook-id), POSTs with a timeout and never follows a
redirect. 2xx is delivered; 410 means the receiver is gone for good; anything else is retried on the
schedule until it runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from webhooks.outbox import RESPONSE_HEAD_BYTES, AttemptRecord, Delivery, DeliveryState, Outbox

log = logging.getLogger(__name__)

#: Builds the signature headers of one attempt: (delivery, unix timestamp) -> headers.
Signer = Callable[[Delivery, int], Mapping[str, str]]

RETRY_AFTER_MAX_SECONDS = 3600.0


@dataclass(frozen=True)
class RetrySchedule:
    """`delays[0]` is the wait before the first attempt, `delays[n]` the wait after the n-th failure.

    Non-zero delays get +/- `jitter` so that many receivers failing together do not retry together.
    A receiver's Retry-After is honoured, clamped to `retry_after_max`.
    """

    delays: Sequence[float]
    jitter: float = 0.2
    retry_after_max: float = RETRY_AFTER_MAX_SECONDS
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def first_delay(self) -> float:
        return self._jittered(self.delays[0])

    def delay_after(self, attempts_made: int, retry_after: float | None = None) -> float | None:
        """Seconds until the next attempt after `attempts_made` failures, or None when exhausted."""
        if attempts_made >= len(self.delays):
            return None
        delay = self._jittered(self.delays[attempts_made])
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        return delay

    def _jittered(self, delay: float) -> float:
        if delay <= 0 or self.jitter <= 0:
            return max(delay, 0.0)
        return delay * self.rng.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class AttemptOutcome:
    record: AttemptRecord
    delivered: bool
    stop: bool = False  # 410, or `webhook-delivery: abort-message`: the receiver asked us to stop
    throttled: bool = False  # 429 or a timeout: back off at least the throttle delay
    retry_after: float | None = None


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # HTTP-date form: fall back to the schedule


async def attempt(
    client: httpx.AsyncClient, delivery: Delivery, signer: Signer, *, timeout: float, replay: bool = False
) -> AttemptOutcome:
    """Send one attempt. Never raises for anything the receiver or network does."""
    started = time.time()
    clock = time.perf_counter()
    headers = {"content-type": "application/json", "user-agent": "hidream-webhooks/1"}
    headers.update(signer(delivery, int(started)))
    try:
        async with client.stream(
            "POST", delivery.url, content=delivery.body, headers=headers, timeout=timeout, follow_redirects=False
        ) as response:
            head_bytes = await _read_head(response)
    except httpx.HTTPError as exc:
        latency = (time.perf_counter() - clock) * 1000
        failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return AttemptOutcome(
            AttemptRecord(started, latency, error=failure, replay=replay),
            delivered=False,
            throttled=isinstance(exc, httpx.TimeoutException),
        )
    latency = (time.perf_counter() - clock) * 1000
    code = response.status_code
    delivered = 200 <= code < 300
    error: str | None = None
    if not delivered:
        error = f"HTTP {code}"
        if 300 <= code < 400:
            error += f" redirect to {response.headers.get('location', '?')} (redirects are not followed)"
    abort = response.headers.get("webhook-delivery", "").lower() == "abort-message"
    record = AttemptRecord(
        started,
        latency,
        status_code=code,
        response_head=head_bytes.decode("utf-8", errors="replace"),
        error=error,
        replay=replay,
    )
    return AttemptOutcome(
        record,
        delivered=delivered,
        stop=not delivered and (code == 410 or abort),
        throttled=code == 429,
        retry_after=_parse_retry_after(response.headers.get("retry-after")),
    )


async def _read_head(response: httpx.Response) -> bytes:
    """The first RESPONSE_HEAD_BYTES of the body; the rest is not read (a receiver may send a lot)."""
    head = b""
    async for chunk in response.aiter_bytes():
        head += chunk
        if len(head) >= RESPONSE_HEAD_BYTES:
            break
    return head[:RESPONSE_HEAD_BYTES]


class Deliverer:
    """Sends what the outbox says is due, records every attempt, schedules retries.

    Runs as one asyncio task beside the API (`run_forever`; `wake()` makes it look at the outbox at
    once), or in short bursts from a function that is started when something is due (`run_until_idle`).
    """

    def __init__(
        self,
        outbox: Outbox,
        signers: Mapping[str, Signer],
        schedule: RetrySchedule,
        client: httpx.AsyncClient,
        *,
        timeout: float = 15.0,
        throttle_seconds: float = 60.0,
        max_concurrency: int = 16,
        idle_poll_seconds: float = 1.0,
        blocking: Callable[..., Awaitable[Any]] = asyncio.to_thread,
    ) -> None:
        self._outbox = outbox
        self._signers = signers
        self._schedule = schedule
        self._client = client
        self._timeout = timeout
        self._throttle = throttle_seconds
        self._max_concurrency = max_concurrency
        self._idle_poll = idle_poll_seconds
        self._blocking = blocking  # runs an outbox call off the event loop: a database call
        self._wakeup = asyncio.Event()
        self._in_flight: set[asyncio.Task[bool]] = set()

    def wake(self) -> None:
        self._wakeup.set()

    async def run_forever(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                _, next_due = await self._start_due()
                await self._sleep_until(next_due)
            except Exception:  # the database is unreachable for now: nothing is lost, try again
                log.exception("webhook delivery loop failed; retrying in %.0f s", self._idle_poll)
                await asyncio.sleep(self._idle_poll)

    async def run_until_idle(self, linger: float) -> int:
        """Send what is due, and keep going while the next attempt is due within `linger` seconds
        (short retries wait here; later ones are left to the next run). Returns attempts started."""
        started = 0
        while True:
            count, next_due = await self._start_due()
            started += count
            if self._in_flight:
                await asyncio.wait(set(self._in_flight))
                continue
            if next_due is None or next_due - time.time() > linger:
                return started
            await asyncio.sleep(max(next_due - time.time(), 0.0))

    async def abandon_in_flight(self) -> None:
        """Stop attempts in flight, at shutdown. Their rows stay claimed; the next start resends them."""
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _start_due(self) -> tuple[int, float | None]:
        """Start the due deliveries there is room for; returns how many, and when the next is due.
        Outbox calls are database calls: made off the event loop (which serves the API too), in one
        thread hop per wake-up."""
        due, next_due = await self._blocking(self._claim, self._max_concurrency - len(self._in_flight))
        for delivery in due:
            task = asyncio.create_task(self._deliver(delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
        return len(due), next_due

    def _claim(self, free: int) -> tuple[list[Delivery], float | None]:
        # The claim outlives the attempt's timeout, so a crash mid-attempt only delays a retry.
        due = self._outbox.claim_due(time.time(), claim_seconds=self._timeout + 30, limit=free) if free > 0 else []
        return due, self._outbox.next_due_at()

    def _finished(self, task: asyncio.Task[bool]) -> None:
        was_full = len(self._in_flight) >= self._max_concurrency
        self._in_flight.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("webhook delivery task failed", exc_info=task.exception())
            self._wakeup.set()
        elif was_full or task.result():
            # Look again only when this attempt made room for a delivery left waiting, or scheduled a
            # retry: the loop's next sleep must end by then. Otherwise nothing new can be due.
            self._wakeup.set()

    async def _sleep_until(self, next_due: float | None) -> None:
        wait = self._idle_poll if next_due is None else min(max(next_due - time.time(), 0.0), self._idle_poll)
        if wait <= 0 and len(self._in_flight) < self._max_concurrency:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=max(wait, 0.01))

    async def _deliver(self, delivery: Delivery) -> bool:
        """One attempt, recorded; True when it scheduled a retry."""
        signer = self._signers.get(delivery.signer)
        if signer is None:
            record = AttemptRecord(time.time(), 0.0, error=f"no signer named {delivery.signer!r}")
            await self._blocking(
                self._outbox.record_attempt, delivery.id, record, state=DeliveryState.FAILED, next_attempt_at=None
            )
            return False
        outcome = await attempt(self._client, delivery, signer, timeout=self._timeout)
        attempts_made = delivery.attempts + 1
        state, next_at = self._next_step(outcome, attempts_made, retry=not delivery.single_attempt)
        await self._blocking(
            self._outbox.record_attempt, delivery.id, outcome.record, state=state, next_attempt_at=next_at
        )
        log.info(
            "webhook %s attempt %d to %s: %s",
            delivery.id,
            attempts_made,
            delivery.url,
            outcome.record.status_code or outcome.record.error,
        )
        return state is DeliveryState.PENDING

    def _next_step(
        self, outcome: AttemptOutcome, attempts_made: int, *, retry: bool
    ) -> tuple[DeliveryState, float | None]:
        if outcome.delivered:
            return DeliveryState.DELIVERED, None
        if outcome.stop or not retry:
            return DeliveryState.FAILED, None
        delay = self._schedule.delay_after(attempts_made, outcome.retry_after)
        if delay is None:
            return DeliveryState.FAILED, None
        if outcome.throttled:
            delay = max(delay, self._throttle)
        return DeliveryState.PENDING, time.time() + delay

    async def replay(self, delivery: Delivery) -> AttemptOutcome:
        """Send a stored delivery once more, now: same body and webhook-id, a fresh signature.

        The retry schedule is left alone; a success marks the delivery delivered."""
        signer = self._signers[delivery.signer]
        outcome = await attempt(self._client, delivery, signer, timeout=self._timeout, replay=True)
        await self._blocking(self._outbox.record_replay, delivery.id, outcome.record, delivered=outcome.delivered)
        return outcome
