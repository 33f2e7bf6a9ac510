"""The one retry schedule: doubling up to its ceiling, jitter within [half, whole], no end to a long outage."""

from __future__ import annotations

import random

from s2s.backoff import Backoff, equal_jitter


def test_the_wait_doubles_per_failure_up_to_the_maximum():
    assert [Backoff(initial=0.1, maximum=1.0).delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_keeps_each_wait_between_half_and_all_of_the_plain_one():
    plain, jittered = Backoff(initial=1000, maximum=30_000), Backoff(initial=1000, maximum=30_000, jitter=True)
    rng = random.Random(7)
    for failures in range(1, 10):
        waits = [jittered.delay(failures, rng) for _ in range(200)]
        ceiling = plain.delay(failures)
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (failures, min(waits), max(waits))
        assert max(waits) - min(waits) > ceiling / 4, "the waits do not spread out"


def test_equal_jitter_draws_from_the_rng_it_is_given():
    assert equal_jitter(10.0, random.Random(3)) == equal_jitter(10.0, random.Random(3)) != equal_jitter(
        10.0, random.Random(4))


def test_a_long_outage_waits_the_maximum_instead_of_overflowing():
    assert Backoff(initial=0.1, maximum=5.0).delay(100_000) == 5.0
    assert Backoff(initial=0.1, maximum=5.0, factor=2).delay(10**6) == 5.0
