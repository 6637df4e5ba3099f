"""The snapshot weight budget against the server's used-weight header."""

from __future__ import annotations

from sources.policy import WeightBudget


def test_server_usage_below_the_ip_limit_does_not_stop_requests():
    # Other programs used 1,500 of the IP's 2,400 this minute: our 20-weight request still fits.
    budget = WeightBudget(1200, 60.0, ip_limit=2400)
    budget.observe_used(1500, now=10.0, next_weight=20)
    assert budget.delay(20, now=10.0) == 0.0


def test_server_usage_at_the_ip_limit_holds_requests_until_the_next_window():
    budget = WeightBudget(1200, 60.0, ip_limit=2400)
    budget.observe_used(2390, now=70.0, next_weight=20)
    assert budget.delay(20, now=70.0) == 50.0  # until the minute ends at 120 s
    assert budget.delay(20, now=120.0) == 0.0


def test_own_pacing_still_applies():
    budget = WeightBudget(40, 1.0)
    budget.spend(20, now=0.0)
    budget.spend(20, now=0.1)
    assert budget.delay(20, now=0.2) == 0.8  # the first request leaves the window at 1.0 s
