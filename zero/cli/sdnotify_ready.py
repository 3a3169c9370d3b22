"""Readiness for systemd (Type=notify): one datagram to $NOTIFY_SOCKET, through
the sdnotify library; nothing at all when systemd did not ask for it."""

from __future__ import annotations

import os


def notify(*lines: str) -> None:
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    import sdnotify

    sdnotify.SystemdNotifier().notify("\n".join(lines))
