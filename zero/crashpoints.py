"""Named steps where a test can stop the worker (or `zero gc`), to prove each
row of docs/dev/chunk_lifecycle.md recovers.

- ZERO_TEST_CRASH_AT=<step>: the process kills itself (SIGKILL) at the step.
- ZERO_TEST_PAUSE_AT=<step> with ZERO_TEST_PAUSE_FILE=<path>: the first thread
  to reach the step writes "<pid> <step>" to the path (atomically) and every
  thread that reaches it blocks there, holding whatever it holds (a write
  transaction, in some steps), until the test removes the file or kills the
  process. The test waits for the file, looks at the state exactly at that
  step, and then kills -9 (a crash there) or removes the file (the process
  carries on and never pauses again).

While an upload step is paused at, the uploader runs one group at a time
(one_group_at_a_time()): the state the test looks at is then one group's
step, not several groups' steps mixed.

Unset, crash() costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading
import time

STEPS = (
    "upload.started",       # state uploading, nothing sent
    "upload.intent",        # objects row recorded, nothing sent
    "upload.sent",          # object stored remotely, chunk still uploading
    "evict.unlinked",       # cache file unlinked, transaction not committed
    "fetch.started",        # state fetching, nothing downloaded
    "fetch.downloaded",     # verified temp file in <cache>/tmp, not renamed
    "fetch.renamed",        # file renamed into place, transaction not committed
    "gc.claimed",           # object rows deleted, remote copies still there
    "meta.stored",          # metadata segment in the remotes, its sequence not committed
)

# A paused process that nobody releases or kills (its test died) ends itself.
PAUSE_LIMIT_S = 600.0
PAUSE_POLL_S = 0.01


def _die(step: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Pause:
    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        self.announced = False
        self.released = False

    def __call__(self, step: str) -> None:
        with self.lock:
            if self.released:
                return
            if not self.announced:
                temporary = f"{self.path}.tmp"
                with open(temporary, "w") as note:
                    note.write(f"{os.getpid()} {step}\n")
                os.rename(temporary, self.path)
                self.announced = True
        # Test-only code: polls the file with a deadline (no event crosses from the test).
        deadline = time.monotonic() + PAUSE_LIMIT_S
        while os.path.exists(self.path):
            if time.monotonic() > deadline:
                _die(step)
            time.sleep(PAUSE_POLL_S)
        self.released = True


def _actions() -> dict:
    actions = {}
    if os.environ.get("ZERO_TEST_CRASH_AT"):
        actions[os.environ["ZERO_TEST_CRASH_AT"]] = _die
    if os.environ.get("ZERO_TEST_PAUSE_AT"):
        path = os.environ.get("ZERO_TEST_PAUSE_FILE")
        if not path:
            raise RuntimeError("ZERO_TEST_PAUSE_AT needs ZERO_TEST_PAUSE_FILE: the file that says the worker paused")
        actions[os.environ["ZERO_TEST_PAUSE_AT"]] = _Pause(path)
    unknown = set(actions) - set(STEPS)
    if unknown:
        raise RuntimeError(f"unknown crash point(s) {sorted(unknown)}; known: {', '.join(STEPS)}")
    return actions


_ACTIONS = _actions()


def crash(step: str) -> None:
    action = _ACTIONS.get(step)
    if action is not None:
        action(step)


def one_group_at_a_time() -> bool:
    """Whether the uploader must not overlap groups: a pause at an upload step is armed."""
    return any(step.startswith("upload.") and isinstance(action, _Pause) for step, action in _ACTIONS.items())
