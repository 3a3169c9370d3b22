"""RetryingRemote: retries exactly what is_transient says, within its budget, and keeps the protocol."""

from unittest import mock

import pytest

from zero.errors import AuthFailed, ObjectMissing, RemoteUnavailable
from zero.remote.base import Remote
from zero.remote.retry import RetryingRemote, RetrySettings

SETTINGS = RetrySettings(attempts=4, first_wait_s=0.5, max_wait_s=2.0, total_s=60.0)


def flaky(failures):
    """A fake remote whose get raises each of ``failures`` in turn, then answers."""
    inner = mock.create_autospec(Remote, instance=True)
    inner.name = "fake"
    inner.kind = "fake"
    inner.get.side_effect = list(failures) + [b"data"]
    inner.is_transient.side_effect = lambda error: Remote.is_transient(inner, error)
    return inner


def wrapped(inner, settings=SETTINGS):
    waits = []
    return RetryingRemote(inner, settings, sleep=waits.append), waits


def test_transient_failures_are_retried_until_success():
    inner = flaky([RemoteUnavailable("blip"), RemoteUnavailable("blip")])
    remote, waits = wrapped(inner)
    assert remote.get("k") == b"data"
    assert inner.get.call_count == 3
    assert len(waits) == 2 and all(0 <= wait <= SETTINGS.max_wait_s for wait in waits)


def test_attempts_are_bounded():
    inner = flaky([RemoteUnavailable(f"blip {n}") for n in range(10)])
    remote, waits = wrapped(inner)
    with pytest.raises(RemoteUnavailable, match="blip 3"):
        remote.get("k")
    assert inner.get.call_count == SETTINGS.attempts
    assert len(waits) == SETTINGS.attempts - 1


@pytest.mark.parametrize("error", [AuthFailed("wrong key"), ObjectMissing("gone"),
                                   RemoteUnavailable("no bucket", transient=False), ValueError("bad key")])
def test_permanent_failures_pass_at_once(error):
    inner = flaky([error])
    remote, waits = wrapped(inner)
    with pytest.raises(type(error)):
        remote.get("k")
    assert inner.get.call_count == 1
    assert waits == []


def test_total_time_is_bounded(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    inner = flaky([RemoteUnavailable("blip")] * 10)
    remote = RetryingRemote(inner, RetrySettings(attempts=100, first_wait_s=1, max_wait_s=1, total_s=5),
                            sleep=lambda s: clock.__setitem__(0, clock[0] + 2.0))
    with pytest.raises(RemoteUnavailable):
        remote.get("k")
    assert inner.get.call_count == 4  # attempts at 0, 2, 4 and 6 s; none starts after 5 s


def test_every_call_of_the_protocol_is_wrapped():
    inner = mock.create_autospec(Remote, instance=True)
    inner.name, inner.kind = "fake", "fake"
    inner.is_transient.side_effect = lambda error: Remote.is_transient(inner, error)
    inner.put.side_effect = [RemoteUnavailable("blip"), None]
    inner.head.side_effect = [RemoteUnavailable("blip"), 5]
    inner.delete.side_effect = [RemoteUnavailable("blip"), None]
    inner.list.side_effect = [iter_failing(), iter([("a", 1, 2.0)])]
    remote, waits = wrapped(inner)
    remote.put("k", b"x")
    assert remote.head("k") == 5
    remote.delete("k")
    assert list(remote.list("p")) == [("a", 1, 2.0)]  # the half listing was not handed out
    assert len(waits) == 4
    assert remote.name == "fake" and remote.is_transient(RemoteUnavailable("x"))


def iter_failing():
    yield ("half", 1, 1.0)
    raise RemoteUnavailable("dropped mid-listing")


def test_the_inner_remotes_own_attributes_stay_reachable(tmp_path):
    from zero.remote.local import LocalRemote

    remote = RetryingRemote(LocalRemote("home", tmp_path))
    assert remote.root == str(tmp_path)
    assert repr(remote) == repr(remote.inner)

