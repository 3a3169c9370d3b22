"""Progress bars go to stderr and only when it is a terminal: logs and pipes get just the summary."""

from __future__ import annotations

import io
import sys

from zero.cli.progress import bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_draws_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    with bar(total=3, unit="chunk", desc="warming up") as progress:
        progress.update(3)
    assert "warming up" in sys.stderr.getvalue() and "3/3" in sys.stderr.getvalue()


def test_a_bar_is_silent_when_stderr_is_a_pipe_or_a_file(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with bar(total=3, unit="chunk", desc="warming up") as progress:
        progress.update(3)
    assert sys.stderr.getvalue() == ""
    assert capsys.readouterr().out == ""
