import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import EXPECTED_WARNINGS, ZeroMount  # noqa: E402


@pytest.fixture
def make_mount(tmp_path):
    """Factory: make_mount(worker=True, **config) -> a started ZeroMount.
    Everything it started is stopped and unmounted after the test, and the
    test fails if zero logged a warning or error it did not expect."""
    mounts = []

    def factory(worker: bool = True, name: str = "fs", allowed_log: tuple[str, ...] = (), **config) -> ZeroMount:
        if not worker:
            # Without a worker nothing reaches a remote, so fsync can only promise the cache;
            # tests of the remote promise ask for it explicitly.
            config.setdefault("fsyncWaitsForUpload", False)
        mount = ZeroMount(tmp_path / name, **config)
        mount.allowed_log = EXPECTED_WARNINGS + tuple(allowed_log)
        mounts.append(mount)
        if worker:
            mount.start_worker()
        mount.start_fuse()
        return mount

    yield factory
    # Close every mount even if closing one fails; then report what went wrong.
    problems, errors = [], []
    for mount in mounts:
        try:
            mount.close()
        except BaseException as error:  # noqa: BLE001 - the other mounts must still be closed
            errors.append(f"closing {mount.root}: {error!r}")
        problems += mount.unexpected_log_lines(mount.allowed_log)
    assert not errors, "could not close every mount:\n" + "\n".join(errors)
    assert not problems, "zero logged unexpected warnings or errors:\n" + "\n".join(problems)


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long soak/stress run; only with ZERO_SOAK=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ZERO_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak run: set ZERO_SOAK=1 (make soak)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
