"""One log format for every zero process: time, process role, level, sentence."""

from __future__ import annotations

import logging
import sys


def configure(role: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {role} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries speak in their own terms at INFO; zero says what matters.
    for noisy in ("watchdog", "apscheduler", "mfusepy", "fuse", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
