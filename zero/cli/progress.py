"""Progress bars for long commands: on stderr, and only when stderr is a
terminal, so logs and pipes get just the summary line each command prints."""

from __future__ import annotations

import sys

from tqdm import tqdm


def bar(total: int | None = None, unit: str = "it", desc: str | None = None, **options) -> tqdm:
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=not sys.stderr.isatty(), **options)
