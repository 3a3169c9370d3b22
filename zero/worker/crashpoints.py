"""Named steps where a test can make the worker die at once (kill -9 on
itself), to prove each row of docs/dev/chunk_lifecycle.md recovers.

Set ZERO_TEST_CRASH_AT=<step>; unset, crash() costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

STEPS = (
    "upload.started",       # state uploading, nothing sent
    "upload.intent",        # objects row recorded, nothing sent
    "upload.sent",          # object stored remotely, chunk still uploading
    "evict.unlinked",       # cache file unlinked, transaction not committed
    "fetch.started",        # state fetching, nothing downloaded
    "fetch.downloaded",     # verified temp file in <cache>/tmp, not renamed
    "fetch.renamed",        # file renamed into place, transaction not committed
    "gc.claimed",           # object rows deleted, remote copies still there
)

_AT = os.environ.get("ZERO_TEST_CRASH_AT")


def crash(step: str) -> None:
    if _AT == step:
        os.kill(os.getpid(), signal.SIGKILL)
