"""The snapshot weight budget against the server's used-weight header."""

from __future__ import annotations

import pytest

from health.cluster import Topology
from sources.policy import WeightBudget, default_weight_budget


def test_server_usage_below_the_ip_limit_does_not_stop_requests():
    # Other programs used 1,500 of the IP's 2,400 this minute: our 20-weight request still fits.
    budget = WeightBudget(1200, 60.0, ip_limit=2400)
    budget.observe_used(1500, now=10.0, next_weight=20)
    assert budget.delay(20, now=10.0) == 0.0


def test_server_usage_near_the_ip_limit_holds_requests_until_the_next_window():
    budget = WeightBudget(1200, 60.0, ip_limit=2400)
    # Other processes of the IP used 2,270: one more of 20 would pass 95% of 2,400.
    budget.observe_used(2270, now=70.0, next_weight=20, wall=1_000_010.0)
    # Until the exchange's minute ends (wall clock 1,000,020), and half a second for the clocks.
    assert budget.delay(20, now=70.0) == pytest.approx(10.5)
    assert budget.delay(20, now=80.5) == 0.0


def test_server_usage_with_room_left_does_not_hold_requests():
    budget = WeightBudget(1200, 60.0, ip_limit=2400)
    budget.observe_used(2200, now=70.0, next_weight=20, wall=1_000_010.0)
    assert budget.delay(20, now=70.0) == 0.0


def test_the_default_budget_shares_the_ip_limit_among_the_hosts_processes():
    assert default_weight_budget(2400, 1) == 1920  # 80%: the rest is left to other programs
    assert default_weight_budget(2400, 3) == 640  # three processes: 1,920 in all
    assert default_weight_budget(6000, 2) == 2400


def test_own_pacing_still_applies():
    budget = WeightBudget(40, 1.0)
    budget.spend(20, now=0.0)
    budget.spend(20, now=0.1)
    assert budget.delay(20, now=0.2) == 0.8  # the first request leaves the window at 1.0 s


def test_processes_on_host_counts_the_addresses_that_share_this_ones_host():
    addresses = ("10.0.0.1:2101", "10.0.0.1:2102", "10.0.0.2:2101")
    assert Topology(0, 3, 1, addresses).processes_on_host == 2
    assert Topology(2, 3, 1, addresses).processes_on_host == 1
    assert Topology().processes_on_host == 1
