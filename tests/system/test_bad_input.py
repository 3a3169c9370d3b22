"""zero-fuse, given something wrong, exits non-zero with one sentence a
person can act on -- and where it can repair the problem itself, it does."""

import errno
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from support import ZeroMount, command, damage_table, unmount_if_mounted, zero_mount_ids, zero_mounted
from zero.state import db as state_db

ERROR_TIMEOUT_S = 30


def good_config(tmp_path: Path) -> str:
    return f"remotes:\n  - name: local\n    type: local\n    path: {tmp_path / 'remote'}\n"


def run_fuse(tmp_path: Path, mnt: Path, cache: Path, *extra: str, config: str | None = None,
             env: dict | None = None, argv: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run zero-fuse to completion; whatever it mounted by mistake is unmounted."""
    config_path = tmp_path / "config.yml"
    if env is None:
        config_path.write_text(good_config(tmp_path) if config is None else config)
        env = dict(os.environ, ZERO_CONFIG=str(config_path), HOME=str(tmp_path))
    args = (argv or []) + [command("zero-fuse"), str(mnt), str(cache), *extra]
    try:
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=ERROR_TIMEOUT_S)
    finally:
        unmount_if_mounted(mnt)


def refusal(result: subprocess.CompletedProcess, *words: str) -> str:
    """The one sentence zero-fuse gave, after checking it exited non-zero with it."""
    assert result.returncode != 0, f"zero-fuse did not fail:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    sentences = [line for line in result.stderr.splitlines() if line.startswith("zero-fuse: ")]
    assert len(sentences) == 1, result.stderr
    message = sentences[0]
    for word in words:
        assert word in message, f"{word!r} is missing from: {message}"
    # said once, not repeated by the log handler on the same stream
    assert result.stderr.count(message[len("zero-fuse: "):]) == 1, result.stderr
    return message


@pytest.fixture
def mnt(tmp_path):
    folder = tmp_path / "mnt"
    folder.mkdir()
    return folder


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


# --- the config ---------------------------------------------------------------------------


def test_malformed_yaml_names_the_line(tmp_path, mnt, cache):
    config = good_config(tmp_path) + "targetDiskUsage: 20GB\n  uploadDelay: 5\n"
    refusal(run_fuse(tmp_path, mnt, cache, config=config), "config.yml", "does not parse", "line 6")
    assert not cache.exists()


def test_unknown_key_suggests(tmp_path, mnt, cache):
    result = run_fuse(tmp_path, mnt, cache, config=good_config(tmp_path) + "targetDiskUsge: 20GB\n")
    refusal(result, "unknown key 'targetDiskUsge'", "did you mean 'targetDiskUsage'?")


def test_wrong_type_names_the_key(tmp_path, mnt, cache):
    result = run_fuse(tmp_path, mnt, cache, config=good_config(tmp_path) + 'uploadDelay: "soon"\n')
    refusal(result, "uploadDelay", "not a duration", "'soon'")


def test_negative_size_names_the_key(tmp_path, mnt, cache):
    result = run_fuse(tmp_path, mnt, cache, config=good_config(tmp_path) + "targetDiskUsage: -5GB\n")
    refusal(result, "targetDiskUsage", "cannot be negative")


def test_explicit_config_that_does_not_exist(tmp_path, mnt, cache):
    result = run_fuse(tmp_path, mnt, cache, "--config", str(tmp_path / "nope.yml"))
    refusal(result, "--config", "nope.yml", "no such file")


# --- the mountpoint -------------------------------------------------------------------------------


def test_mountpoint_missing(tmp_path, cache):
    missing = tmp_path / "not" / "here"
    refusal(run_fuse(tmp_path, missing, cache), "does not exist", f"mkdir -p {missing}")


def test_mountpoint_not_a_directory(tmp_path, cache):
    file = tmp_path / "file"
    file.write_text("x")
    refusal(run_fuse(tmp_path, file, cache), "is not a directory")


def test_mountpoint_already_mounted(tmp_path, mnt, cache):
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        refusal(run_fuse(tmp_path, mnt, cache), "already a mount point", f"fusermount3 -u {mnt}")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_mountpoint_not_empty_unless_allowed(tmp_path):
    fs = ZeroMount(tmp_path / "fs")
    (fs.mnt / "underneath.txt").write_text("shadowed")
    refusal(run_fuse(tmp_path, fs.mnt, fs.cache), "is not empty", "--allow-non-empty")
    try:
        fs.start_fuse("--allow-non-empty")
        assert os.listdir(fs.mnt) == []  # zero's empty root covers the folder
        (fs.mnt / "mine.txt").write_bytes(b"zero")
        assert sorted(os.listdir(fs.mnt)) == ["mine.txt"]
    finally:
        fs.close()
    assert not zero_mounted(fs.mnt)
    assert os.listdir(fs.mnt) == ["underneath.txt"]


# --- the cache ------------------------------------------------------------------------------------


@pytest.fixture
def read_only_folder(tmp_path):
    """Permission bits do not stop root: a read-only file system does."""
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_cache_on_a_read_only_file_system(tmp_path, mnt, read_only_folder):
    result = run_fuse(tmp_path, mnt, read_only_folder / "cache")
    refusal(result, "cannot create the cache folder", "Read-only file system", "choose a folder you can write to")


def test_cache_that_exists_but_is_read_only(tmp_path, mnt, read_only_folder):
    refusal(run_fuse(tmp_path, mnt, read_only_folder), str(read_only_folder), "Read-only file system")


def test_cache_under_a_regular_file(tmp_path, mnt):
    file = tmp_path / "file"
    file.write_text("x")
    refusal(run_fuse(tmp_path, mnt, file / "cache"), "cannot create the cache folder", "Not a directory")


def test_cache_made_by_a_newer_zero(tmp_path, mnt, cache):
    cache.mkdir(mode=0o700)
    state_db.open_database(cache / "state.sqlite3").dispose()
    os.chmod(cache / "state.sqlite3", 0o600)
    subprocess.run(["sqlite3", str(cache / "state.sqlite3"),
                    "UPDATE meta SET value = '99' WHERE key = 'schema_version'"], check=True)
    refusal(run_fuse(tmp_path, mnt, cache), "newer zero", "format 99", "upgrade zero")


def test_a_state_database_that_is_not_one_is_refused_and_left_as_it_was(tmp_path, mnt, cache):
    """A damaged state file (or another program's) gave a Python traceback from
    all three commands; each now says what the file is and how to get the
    filesystem back, and leaves the file alone for whoever wants to look at it."""
    cache.mkdir(mode=0o700)
    state = cache / "state.sqlite3"
    state.write_bytes(os.urandom(64 * 1024))
    os.chmod(state, 0o600)
    before = hashlib.sha256(state.read_bytes()).hexdigest()

    message = refusal(run_fuse(tmp_path, mnt, cache), str(state), "not an SQLite database", "zero restore")
    assert "move it aside" in message
    env = dict(os.environ, ZERO_CONFIG=str(tmp_path / "config.yml"), HOME=str(tmp_path))
    for args in ([command("zero-worker"), str(cache)], [command("zero"), "status", str(cache)]):
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=ERROR_TIMEOUT_S)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert "not an SQLite database" in result.stderr and "zero restore" in result.stderr, result.stderr
    assert hashlib.sha256(state.read_bytes()).hexdigest() == before


def test_a_state_database_damaged_inside_is_a_sentence_not_a_traceback(tmp_path, mnt, cache, make_mount):
    """The file opens (its header is whole) but a table's page is damaged: zero-fuse,
    `zero status` and `zero fsck` printed SQLAlchemy's traceback. Each now names the
    file, says it is damaged, and how to get the filesystem back; the file is left as it was."""
    made = make_mount(worker=False)
    for n in range(300):
        (made.mnt / f"file-{n:04d}-{'x' * 60}").write_bytes(b"")
    made.close()
    state = made.cache / "state.sqlite3"
    damage_table(state, "inodes")
    before = hashlib.sha256(state.read_bytes()).hexdigest()

    refusal(run_fuse(tmp_path, mnt, made.cache, env=made.env), str(state), "is damaged", "zero restore")
    for args in ([command("zero"), "status", str(made.cache)], [command("zero"), "fsck", str(made.cache)]):
        result = subprocess.run(args, capture_output=True, text=True, env=made.env, timeout=ERROR_TIMEOUT_S)
        assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout, result.stderr
        assert "is damaged" in result.stderr and "zero restore" in result.stderr, result.stderr
    assert hashlib.sha256(state.read_bytes()).hexdigest() == before


def test_a_second_zero_fuse_on_the_same_cache_names_the_first(tmp_path, make_mount):
    first = make_mount(worker=False)
    other_mnt = tmp_path / "other-mnt"
    other_mnt.mkdir()
    result = run_fuse(tmp_path, other_mnt, first.cache, env=first.env)
    refusal(result, "already used by another zero-fuse", f"pid {first.fuse.pid}", f"kill {first.fuse.pid}")
    assert not zero_mounted(other_mnt)
    # the first one is unharmed
    (first.mnt / "still.txt").write_bytes(b"serving")
    assert (first.mnt / "still.txt").read_bytes() == b"serving"


# --- a mount left behind ------------------------------------------------------------------------


def test_a_stale_mount_is_cleared_and_remounted(tmp_path):
    fs = ZeroMount(tmp_path / "fs", fsyncWaitsForUpload=False)  # no worker: fsync promises the cache only
    data = os.urandom(300_000)
    try:
        fs.start_fuse()
        with open(fs.mnt / "kept.bin", "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        fs.fuse.kill()  # kill -9, and no fusermount: the mount stays, dead
        fs.fuse.wait()
        fs.fuse = None
        with pytest.raises(OSError) as caught:
            os.stat(fs.mnt)
        assert caught.value.errno == errno.ENOTCONN
        assert zero_mounted(fs.mnt), "the dead mount is not in the mount table"

        fs.start_fuse()
        assert os.path.ismount(fs.mnt)
        assert len(zero_mount_ids(fs.mnt)) == 1, "the stale mount is still stacked under the new one"
        assert hashlib.sha256((fs.mnt / "kept.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
        assert "stale mount" in fs.fuse_log()
    finally:
        fs.close()


# --- the system ---------------------------------------------------------------------------------


def test_no_dev_fuse(tmp_path, mnt, cache):
    # A private mount namespace with an empty /dev: the host's /dev is untouched.
    result = run_fuse(tmp_path, mnt, cache,
                      argv=["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs /dev && exec "$@"', "sh"])
    refusal(result, "/dev/fuse does not exist", "modprobe fuse", "--device /dev/fuse")
    assert os.path.exists("/dev/fuse")


def test_no_fusermount3(tmp_path, mnt, cache):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    config_path = tmp_path / "config.yml"
    config_path.write_text(good_config(tmp_path))
    env = dict(os.environ, ZERO_CONFIG=str(config_path), HOME=str(tmp_path), PATH=str(empty_bin))
    result = run_fuse(tmp_path, mnt, cache, env=env)
    refusal(result, "fusermount3 is not installed", "apt-get install fuse3")


# --- privacy: the cache holds the keys and every file name ------------------------------------


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_what_zero_creates_is_owner_only(make_mount):
    m = make_mount(uploadDelay=0)
    (m.mnt / "secret-plans.txt").write_bytes(b"x" * 5000)
    m.zero("sync", str(m.mnt))
    key_file = next(m.root.glob("recovery-*.key"))
    made = [m.cache, m.cache / "state.sqlite3", m.cache / "state.sqlite3-wal", key_file,
            *[path for path in (m.cache / "chunks").rglob("*") if path.is_file()]]
    assert len(made) > 4, made
    shared = {str(path): oct(mode_of(path)) for path in made if mode_of(path) & 0o077}
    assert not shared, f"readable by other users: {shared}"


def test_a_cache_folder_others_can_read_is_refused_with_the_fix(tmp_path, make_mount):
    m = make_mount(worker=False)
    m.close()
    os.chmod(m.cache, 0o755)
    message = refusal(run_fuse(tmp_path, m.mnt, m.cache, env=m.env), str(m.cache), "other users",
                      f"chmod 700 {m.cache}")
    assert "keys" in message
    worker = subprocess.run([command("zero-worker"), str(m.cache)], capture_output=True, text=True, env=m.env,
                            timeout=ERROR_TIMEOUT_S)
    assert worker.returncode != 0 and f"chmod 700 {m.cache}" in worker.stderr, worker.stderr
    os.chmod(m.cache, 0o700)
    m.start_fuse()  # fixed as told: it mounts


def test_a_state_database_others_can_read_is_refused_with_the_fix(tmp_path, make_mount):
    m = make_mount(worker=False)
    m.close()
    state = m.cache / "state.sqlite3"
    os.chmod(state, 0o644)
    refusal(run_fuse(tmp_path, m.mnt, m.cache, env=m.env), str(state), f"chmod 600 {state}")
