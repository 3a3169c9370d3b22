"""Wake-ups between the processes: each target has its own folder, so a process
hears only the wake-ups meant for it, and a cache made by an older zero (one
folder, a wake file per target) keeps working."""

from __future__ import annotations

from zero import wakeup


def test_a_notify_wakes_the_listener_of_its_target(tmp_path):
    listener = wakeup.WakeListener(tmp_path, wakeup.FUSE)
    listener.start()
    try:
        before = listener.generation
        wakeup.notify(tmp_path, wakeup.FUSE)
        assert listener.wait(before, 10) != before, "the listener never heard the wake-up"
    finally:
        listener.stop()


def test_wake_files_of_an_older_layout_become_folders(tmp_path):
    (tmp_path / wakeup.WORKER).write_text("...")  # an older zero's wake file
    wakeup.notify(tmp_path, wakeup.WORKER)
    assert (tmp_path / wakeup.WORKER / wakeup.WAKE_FILE).is_file()
    (tmp_path / "pins").write_text(".")
    assert wakeup.last_notified_ns(tmp_path, "pins") is None
    wakeup.notify(tmp_path, "pins")
    assert wakeup.last_notified_ns(tmp_path, "pins") is not None


def test_a_listener_watches_only_its_own_target(tmp_path):
    listener = wakeup.WakeListener(tmp_path, wakeup.WORKER)
    listener.start()
    try:
        watched = {watch.path for watch in listener._observer.emitters and
                   [emitter.watch for emitter in listener._observer.emitters]}
    finally:
        listener.stop()
    assert watched == {str(tmp_path / wakeup.WORKER)}


def test_a_waker_sends_a_burst_as_few_wake_ups_and_a_soon_one_within_its_window(tmp_path):
    listener = wakeup.WakeListener(tmp_path, wakeup.WORKER)
    listener.start()
    waker = wakeup.Waker(tmp_path, wakeup.WORKER, soon_s=0.05)
    try:
        before = listener.generation
        for _ in range(200):
            waker.wake()
        assert listener.wait(before, 10) != before, "a burst of wake-ups never arrived"
        assert (tmp_path / wakeup.WORKER / wakeup.WAKE_FILE).stat().st_size < 200, "no wake-up was coalesced"
        before = listener.generation
        waker.wake(soon=True)
        assert listener.wait(before, 10) != before, "a wake-up asked for soon never arrived"
    finally:
        listener.stop()
