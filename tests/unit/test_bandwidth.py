"""A remote's bwlimit (zero.remote.pool.BandwidthLimit), on a fake clock."""

from zero.remote.pool import BandwidthLimit


def test_a_bandwidth_limit_paces_transfers_to_its_rate():
    """bwlimit as a token bucket, on a fake clock: one second's worth passes at once, the rest waits."""
    now = [100.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    limit = BandwidthLimit(1000, clock=lambda: now[0], sleep=sleep)
    limit.take(1000)
    assert slept == []                     # the first second's worth goes at once
    limit.take(500)
    assert slept == [0.5]                  # then 500 bytes at 1000 B/s
    now[0] += 10                           # a quiet while refills one second's worth, not ten
    limit.take(1000)
    assert slept == [0.5]
    limit.take(2000)
    assert slept == [0.5, 2.0]
