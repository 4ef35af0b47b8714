from __future__ import annotations

import random

from webhooks.delivery import RETRY_AFTER_MAX_SECONDS, RetrySchedule


def schedule(*delays: float, jitter: float = 0.2) -> RetrySchedule:
    return RetrySchedule(delays, jitter=jitter, rng=random.Random(0))


def test_delays_follow_the_list_then_run_out() -> None:
    plan = schedule(0, 5, 300, jitter=0)

    assert plan.first_delay() == 0
    assert [plan.delay_after(n) for n in (1, 2, 3)] == [5, 300, None]


def test_jitter_stays_within_twenty_percent_and_varies() -> None:
    plan = schedule(0, 100)
    delays = [plan.delay_after(1) for _ in range(200)]

    assert all(d is not None and 80 <= d <= 120 for d in delays)
    assert len(set(delays)) > 100


def test_retry_after_is_honoured_but_clamped() -> None:
    plan = schedule(0, 5, jitter=0)

    assert plan.delay_after(1, retry_after=60) == 60
    assert plan.delay_after(1, retry_after=1) == 5  # never sooner than the schedule
    assert plan.delay_after(1, retry_after=10**9) == RETRY_AFTER_MAX_SECONDS
