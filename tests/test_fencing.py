"""Fencing: a claim's validity by the holder's own clock (a fake one here).

A node frozen past its lease (a VM pause, SIGSTOP, a long GC) must not start another row of a
chunk that was given to another node meanwhile; tests/test_cluster.py freezes a real one, and
tests/test_ledger.py checks what the ledger does with a stale token.
"""

from __future__ import annotations

from engine.delivery.fence import Fence


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_fence_holds_within_its_lease_less_the_margin_and_not_after_a_freeze():
    clock = FakeClock()
    fence = Fence(5.0, lambda: True, clock=clock)
    clock.now += 3.9
    assert fence.valid()
    clock.now += 0.2  # 4.1 s: within the 5-s lease, but not within its 1-s margin
    assert not fence.valid()
    fence.keep()  # renewed: valid again from the moment it was asked
    assert fence.valid()
    clock.now += 26  # frozen 26 s: whatever the ledger would say, nothing starts
    assert not fence.valid()


def test_a_renewal_counts_from_when_it_was_asked_not_when_it_answered():
    clock = FakeClock()

    def slow_renewal() -> bool:
        clock.now += 3.0  # the ledger took 3 s to answer
        return True

    fence = Fence(5.0, slow_renewal, clock=clock)
    clock.now += 1.0
    fence.keep()
    assert fence.renewed_at == 101.0
    clock.now += 1.0
    assert not fence.valid()  # 5 s since it was asked


def test_a_claim_found_gone_ends_the_fence_at_once_and_for_good():
    clock = FakeClock()
    answers = iter([True, False, True])
    fence = Fence(5.0, lambda: next(answers), clock=clock)
    clock.now += 1.0
    fence.keep()
    assert fence.valid()
    clock.now += 1.0
    fence.keep()
    assert fence.lost and not fence.valid()
    clock.now += 1.0
    fence.keep()  # never asked again: the claim cannot come back
    assert not fence.valid()


def test_an_unreachable_ledger_lets_the_lease_run_down():
    clock = FakeClock()
    fence = Fence(5.0, lambda: None, clock=clock)
    for _ in range(3):
        clock.now += 1.0
        fence.keep()
        assert fence.valid() and not fence.lost
    clock.now += 1.5
    assert not fence.valid()


def test_a_short_lease_is_renewed_often_enough_to_stay_valid():
    fence = Fence(2.0, clock=FakeClock())
    assert fence.usable == 1.5 and fence.every == 0.5
    assert Fence(float("inf")).valid()
