"""Webhook delivery: one attempt at a time, a retry schedule that is data, and a loop apart from inference.

One attempt signs afresh (new timestamp, same webhook-id), POSTs with a timeout and never follows a
redirect. 2xx is delivered; 410 means the receiver is gone for good; anything else, an error of ours
included (a URL the client cannot send to, say), is a failed attempt retried on the schedule until it
runs out.

The loop shares its slots between destinations: at most `max_per_destination` attempts go to one
host and port at a time, so one tenant's slow receiver holds a few slots, never all of them, and the
others' webhooks keep flowing. Replays run beside the loop, one per delivery at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from webhooks.outbox import RESPONSE_HEAD_BYTES, AttemptRecord, Delivery, DeliveryState, Outbox
from webhooks.ssrf import BlockedRequest, BlockedURL, from_private_address

log = logging.getLogger(__name__)

#: Builds the signature headers of one attempt: (delivery, unix timestamp) -> headers.
Signer = Callable[[Delivery, int], Mapping[str, str]]

RETRY_AFTER_MAX_SECONDS = 3600.0
#: How many due deliveries one claim looks through per free slot: room to pass over the deliveries
#: of a destination that fills up within the claim, to those of others.
CLAIM_WINDOW_FACTOR = 4
_DEFAULT_PORTS = {"http": 80, "https": 443}


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
    timed_out: bool = False
    blocked: bool = False  # the address guard refused the URL: nothing was sent

    @property
    def kind(self) -> str:
        """The attempt's outcome in a word from a fixed set: "2xx" ... "5xx", "timeout", "blocked", "error"."""
        code = self.record.status_code
        if code is not None:
            return f"{code // 100}xx" if 100 <= code < 600 else "error"
        return "timeout" if self.timed_out else "blocked" if self.blocked else "error"


#: Hears every attempt once it is recorded: (the delivery as claimed, its outcome). Never raises.
AttemptObserver = Callable[[Delivery, AttemptOutcome], None]


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
    """Send one attempt. Never raises: whatever goes wrong is the attempt's recorded error."""
    started = time.time()
    clock = time.perf_counter()
    try:
        headers = {"content-type": "application/json", "user-agent": "hidream-webhooks/1"}
        headers.update(signer(delivery, int(started)))
        async with client.stream(
            "POST", delivery.url, content=delivery.body, headers=headers, timeout=timeout, follow_redirects=False
        ) as response:
            head_bytes = await _read_head(response)
    except Exception as exc:  # httpx.InvalidURL, UnicodeError, a signer's error: a failed attempt like any other
        latency = (time.perf_counter() - clock) * 1000
        failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return AttemptOutcome(
            AttemptRecord(started, latency, error=failure, replay=replay),
            delivered=False,
            throttled=isinstance(exc, httpx.TimeoutException),
            timed_out=isinstance(exc, httpx.TimeoutException),
            blocked=isinstance(exc, BlockedURL | BlockedRequest),
        )
    latency = (time.perf_counter() - clock) * 1000
    code = response.status_code
    delivered = 200 <= code < 300
    # What a private host answered stays with the operator: a caller who may name such a URL must
    # not read the operator's network through the delivery log.
    private = from_private_address(response)
    error: str | None = None
    if not delivered:
        error = f"HTTP {code}"
        if 300 <= code < 400:
            location = "" if private else f" to {response.headers.get('location', '?')}"
            error += f" redirect{location} (redirects are not followed)"
    abort = response.headers.get("webhook-delivery", "").lower() == "abort-message"
    record = AttemptRecord(
        started,
        latency,
        status_code=code,
        response_head=None if private else head_bytes.decode("utf-8", errors="replace"),
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


def destination(url: str) -> str:
    """The scheme, host and port a URL is sent to (`http://example.com:80`): what the per-destination
    limit counts. A URL that does not parse counts on its own (no attempt of it gets far)."""
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").rstrip("."), parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return url
    return f"{scheme}://{_bracketed(host)}:{port or _DEFAULT_PORTS[scheme]}"


def destination_prefixes(key: str) -> list[str]:
    """Lowercased beginnings of the URLs that reach one destination, for the outbox to pass over:
    with the port and without it when it is the default, with and without a trailing dot. Rarer
    spellings (`:080`) are not listed; the sender still counts them by `destination`."""
    scheme, separator, netloc = key.partition("://")
    host, _, port = netloc.rpartition(":")
    if not separator or scheme not in _DEFAULT_PORTS or not host or not port.isdigit():
        return []
    hosts = [host] if host.startswith("[") else [host, f"{host}."]
    netlocs = [f"{name}:{port}" for name in hosts]
    if int(port) == _DEFAULT_PORTS[scheme]:
        netlocs += hosts
    return [f"{scheme}://{name}/" for name in netlocs]


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Deliverer:
    """Sends what the outbox says is due, records every attempt, schedules retries.

    Runs as one asyncio task beside the API (`run_forever`; `wake()` makes it look at the outbox at
    once), or in short bursts from a function that is started when something is due (`run_until_idle`).
    At most `max_concurrency` attempts are in flight, and at most `max_per_destination` of them to one
    host and port: a destination with no room is passed over, and its deliveries wait for its own
    attempts to finish while everyone else's go out.
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
        max_per_destination: int = 4,
        idle_poll_seconds: float = 1.0,
        blocking: Callable[..., Awaitable[Any]] = asyncio.to_thread,
        on_attempt: AttemptObserver = lambda delivery, outcome: None,
    ) -> None:
        self._outbox = outbox
        self._signers = signers
        self._schedule = schedule
        self._client = client
        self._timeout = timeout
        self._throttle = throttle_seconds
        self._max_concurrency = max_concurrency
        self._max_per_destination = max_per_destination
        self._idle_poll = idle_poll_seconds
        self._blocking = blocking  # runs an outbox call off the event loop: a database call
        self._on_attempt = on_attempt
        self._wakeup = asyncio.Event()
        self._in_flight: dict[asyncio.Task[bool], str] = {}  # the loop's attempts, by destination
        self._replays: dict[str, asyncio.Task[None]] = {}  # by delivery id: one replay of each at a time
        self._load: Counter[str] = Counter()  # attempts in flight per destination, replays included

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
                # Any attempt that ends makes room, for its destination too: look again then.
                await asyncio.wait(set(self._in_flight), return_when=asyncio.FIRST_COMPLETED)
                continue
            if next_due is None or next_due - time.time() > linger:
                return started
            await asyncio.sleep(max(next_due - time.time(), 0.0))

    async def abandon_in_flight(self) -> None:
        """Stop attempts and replays in flight, at shutdown. Their rows stay claimed; the next start
        resends them (a replay is simply not made)."""
        tasks: list[asyncio.Task[Any]] = [*self._in_flight, *self._replays.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _start_due(self) -> tuple[int, float | None]:
        """Start the due deliveries there is room for; returns how many, and when the next is due.
        Outbox calls are database calls: made off the event loop (which serves the API too), in one
        thread hop per wake-up."""
        free = self._max_concurrency - len(self._in_flight)
        due, next_due = await self._blocking(self._claim, free, Counter(self._load))
        for delivery in due:
            key = destination(delivery.url)
            task = asyncio.create_task(self._deliver(delivery))
            self._in_flight[task] = key
            self._load[key] += 1
            task.add_done_callback(self._finished)
        return len(due), next_due

    def _claim(self, free: int, load: Counter[str]) -> tuple[list[Delivery], float | None]:
        """Runs in a thread, on its own copy of the load per destination."""
        held_back = False

        def room_for(url: str) -> bool:
            nonlocal held_back
            key = destination(url)
            if load[key] >= self._max_per_destination:
                held_back = True
                return False
            load[key] += 1
            return True

        now = time.time()
        due: list[Delivery] = []
        if free > 0:
            # The claim outlives the attempt's timeout, so a crash mid-attempt only delays a retry.
            due = self._outbox.claim_due(
                now,
                claim_seconds=self._timeout + 30,
                limit=free,
                accept=room_for,
                window=free * CLAIM_WINDOW_FACTOR,
                skip_prefixes=self._full_destinations(load),
            )
        # What waits for a full destination is not due for this loop: its attempts ending wake it.
        next_due = self._outbox.next_due_at(skip_prefixes=self._full_destinations(load))
        if held_back and not due and next_due is not None and next_due <= now:
            next_due = None  # only held-back deliveries (spelt past the prefixes) are due: wait for a wake-up
        return due, next_due

    def _full_destinations(self, load: Counter[str]) -> list[str]:
        return [
            prefix
            for key, count in load.items()
            if count >= self._max_per_destination
            for prefix in destination_prefixes(key)
        ]

    def _release(self, key: str) -> bool:
        """One attempt to `key` ended; True when that made room the loop may be waiting for."""
        was_full = self._load[key] >= self._max_per_destination
        self._load[key] -= 1
        if self._load[key] <= 0:
            del self._load[key]
        return was_full

    def _finished(self, task: asyncio.Task[bool]) -> None:
        was_full = len(self._in_flight) >= self._max_concurrency
        destination_was_full = self._release(self._in_flight.pop(task))
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("webhook delivery task failed", exc_info=task.exception())
            self._wakeup.set()
        elif was_full or destination_was_full or task.result():
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
        self._on_attempt(delivery, outcome)
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

    def start_replay(self, delivery: Delivery) -> bool:
        """Send a stored delivery once more, in the background: same body and webhook-id, a fresh
        signature, the attempt recorded as a replay (a slow receiver holds no caller). False when a
        replay of it is already on its way. It takes no slot of the loop's; it counts towards its
        destination's load, so the loop sends no more there while it lasts."""
        if delivery.id in self._replays:
            return False
        key = destination(delivery.url)
        task = asyncio.create_task(self.replay(delivery))
        self._replays[delivery.id] = task
        self._load[key] += 1
        task.add_done_callback(lambda done: self._replay_finished(delivery.id, key, done))
        return True

    def _replay_finished(self, delivery_id: str, key: str, task: asyncio.Task[None]) -> None:
        self._replays.pop(delivery_id, None)
        if self._release(key):
            self._wakeup.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook replay of %s failed", delivery_id, exc_info=task.exception())

    async def replay(self, delivery: Delivery) -> None:
        """One attempt now, recorded as a replay. The retry schedule is left alone; a success marks
        the delivery delivered."""
        signer = self._signers.get(delivery.signer) or _no_signer(delivery.signer)
        outcome = await attempt(self._client, delivery, signer, timeout=self._timeout, replay=True)
        await self._blocking(self._outbox.record_replay, delivery.id, outcome.record, delivered=outcome.delivered)
        self._on_attempt(delivery, outcome)
        log.info(
            "webhook %s replayed to %s: %s",
            delivery.id,
            delivery.url,
            outcome.record.status_code or outcome.record.error,
        )


def _no_signer(name: str) -> Signer:
    def refuse(delivery: Delivery, timestamp: int) -> Mapping[str, str]:
        raise LookupError(f"no signer named {name!r}")

    return refuse
