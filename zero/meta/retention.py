"""Which snapshots to keep: the newest one of each of the last N hours, days,
weeks, months (snapshotRetention), and always the newest of all.

Like borg prune: walk the snapshots newest first, and for each rule keep the
first one met in each period until the rule has kept its count.
"""

from __future__ import annotations

import time

_PERIOD_FORMAT = {"hourly": "%Y-%m-%d %H", "daily": "%Y-%m-%d", "weekly": "%G-%V", "monthly": "%Y-%m"}


def retained(snapshots: list[tuple[int, float]], rules: tuple[tuple[str, int], ...]) -> set[int]:
    """The sequences to keep of ``snapshots`` ((sequence, taken at unix time))."""
    newest_first = sorted(snapshots, key=lambda item: item[0], reverse=True)
    keep = {newest_first[0][0]} if newest_first else set()
    for period, count in rules:
        seen: set[str] = set()
        for sequence, taken_at in newest_first:
            if len(seen) >= count:
                break
            bucket = time.strftime(_PERIOD_FORMAT[period], time.gmtime(taken_at))
            if bucket not in seen:
                seen.add(bucket)
                keep.add(sequence)
    return keep
