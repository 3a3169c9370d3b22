"""Quick single-system measurements of zero, for A/B checks while changing the
data path: one workload, a few rounds, with the CPU each zero process spent.

    .venv/bin/python bench/quick.py write --size-mib 256 --rounds 3
    .venv/bin/python bench/quick.py cold --size-mib 256      # evicted, then read (cache 32 MiB)
    .venv/bin/python bench/quick.py cold --cache-mib 64 --prefetch 16   # a prefetch window beyond the cache
    .venv/bin/python bench/quick.py read --size-mib 256      # page cache dropped, zero's cache warm
    .venv/bin/python bench/quick.py randwrite --cache-mib 32 --writes 2000   # over a file twice the cache
    .venv/bin/python bench/quick.py create --files 2000 [--upload-delay 600]
    .venv/bin/python bench/quick.py sync --files 2000 --upload-delay 600   # the upload backlog of small files
    .venv/bin/python bench/quick.py namespace --files 200000 --rounds 1   # zero-fuse's RSS as files accrue
    .venv/bin/python bench/quick.py bigcache --files 30000 --rounds 1   # idle CPU and a sync over a full cache
    .venv/bin/python bench/quick.py lookups --files 1000000 --rounds 1   # stat and RSS at a million, in minutes

Same mount as bench/run.py (ZeroMount: zero-fuse and zero-worker over a
local-folder remote in a scratch folder, removed afterwards). No peers, no
plain folder: compare two versions of zero by running this on each. Needs
root for dropping the page cache (read, cold)."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench_run  # noqa: E402
from workloads import drop_page_cache, stat_after_drops  # noqa: E402


def process_cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


class CpuMeter:
    def __init__(self, mount: bench_run.ZeroMount):
        self.mount = mount
        self.start = {name: process_cpu(p.pid) for name, p in mount.processes.items()}

    def spent(self) -> str:
        parts = []
        for name, process in self.mount.processes.items():
            user, system = process_cpu(process.pid)
            before = self.start.get(name, (user, system))
            parts.append(f"{name} {user - before[0]:.2f}+{system - before[1]:.2f}s")
        return "CPU user+sys: " + ", ".join(parts)


def distinct_blocks(count: int, salt: int) -> list[bytes]:
    """1 MiB blocks that neither compress nor dedup, different for each salt."""
    return [struct.pack("<QQ", salt, i) + os.urandom((1 << 20) - 16) for i in range(count)]


def write(mount, args, round_no: int) -> str:
    blocks = distinct_blocks(args.size_mib, round_no)
    meter = CpuMeter(mount)
    started = time.perf_counter()
    fd = os.open(mount.mnt / f"big-{round_no}", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for block in blocks:
            os.write(fd, block)
        written = time.perf_counter()
        os.fsync(fd)
    finally:
        os.close(fd)
    done = time.perf_counter()
    return (f"write {args.size_mib / (written - started):.0f} MiB/s, fsync {done - written:.2f} s, "
            f"write+fsync {args.size_mib / (done - started):.0f} MiB/s; {meter.spent()}")


def _big_file(mount, args) -> Path:
    path = mount.mnt / "big"
    if not path.exists():
        with open(path, "wb") as out:
            for block in distinct_blocks(args.size_mib, 0):
                out.write(block)
        mount.zero("sync", str(mount.mnt))
    return path


def _read_all(path: Path) -> tuple[float, float]:
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as source:
        source.read(4096)
        first_byte = time.perf_counter() - started
        while source.read(1 << 20):
            pass
    return first_byte, time.perf_counter() - started


def read(mount, args, round_no: int) -> str:
    path = _big_file(mount, args)
    bench_run.drop_page_cache()
    meter = CpuMeter(mount)
    _, took = _read_all(path)
    return f"read {args.size_mib / took:.0f} MiB/s; {meter.spent()}"


def cold(mount, args, round_no: int) -> str:
    path = _big_file(mount, args)
    mount.evict_everything("1MiB")
    mount.restart_worker(f"{args.cache_mib}MiB")
    bench_run.drop_page_cache()
    meter = CpuMeter(mount)
    fault_ins, chunk_size = _state_figures(mount)
    first_byte, took = _read_all(path)
    fetched = _state_figures(mount)[0] - fault_ins
    chunks = -(-args.size_mib * 2**20 // chunk_size)
    return (f"cold read {args.size_mib / took:.0f} MiB/s, first byte {first_byte * 1000:.0f} ms, {fetched} fault-ins "
            f"for {chunks} chunks; {meter.spent()}")


def randwrite(mount, args, round_no: int) -> str:
    """The peers' random writes: 4 KiB at random pages of a file twice the cache, then
    fsync; with the fault-ins and uploads they cost (a write to an evicted chunk needs it back)."""
    path = mount.mnt / "rand.bin"
    if not path.exists():
        with open(path, "wb") as out:
            for block in distinct_blocks(2 * args.cache_mib, 1):
                out.write(block)
        mount.evict_everything(f"{args.cache_mib}MiB")
    pages = 2 * args.cache_mib * 256
    rng = random.Random(round_no)
    data = rng.randbytes(4096)
    meter = CpuMeter(mount)
    fault_ins, uploads = _counter(mount, "fault_ins"), _counter(mount, "uploads")
    fd = os.open(path, os.O_RDWR)
    try:
        started = time.perf_counter()
        for page in rng.choices(range(pages), k=args.writes):
            os.pwrite(fd, data, page * 4096)
        os.fsync(fd)
        took = time.perf_counter() - started
    finally:
        os.close(fd)
    return (f"random writes {args.writes / took:.0f} IOPS; {_counter(mount, 'fault_ins') - fault_ins} fault-ins, "
            f"{_counter(mount, 'uploads') - uploads} uploads; {meter.spent()}")


def _counter(mount, name: str) -> int:
    rows = _state_rows(mount, f"SELECT value FROM counters WHERE name = '{name}'")
    return rows[0][0] if rows else 0


def _state_rows(mount, sql: str) -> list[tuple]:
    """Rows of zero's state, read-only (WAL: readers never block zero's writers)."""
    connection = sqlite3.connect(f"file:{mount.cache / 'state.sqlite3'}?mode=ro", uri=True)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def _state_figures(mount) -> tuple[int, int]:
    """(chunks the worker fetched so far, the chunk size). More fault-ins than a
    file has chunks for one read of it: some were fetched twice (evicted before
    they were read)."""
    chunk_size = _state_rows(mount, "SELECT value FROM meta WHERE key = 'chunk_size'")
    return _counter(mount, "fault_ins"), int(chunk_size[0][0])


def create(mount, args, round_no: int) -> str:
    folder = mount.mnt / f"small-{round_no}"
    folder.mkdir()
    data = os.urandom(4096)
    meter = CpuMeter(mount)
    calls_before = _fuse_calls(mount)
    started = time.perf_counter()
    for i in range(args.files):
        with open(folder / f"f{i:06d}", "wb") as out:
            out.write(data)
    took = time.perf_counter() - started
    spent = meter.spent()
    return f"create {args.files / took:.0f} files/s; {spent}; {_calls_per_file(mount, calls_before, args.files)}"


def delete(mount, args, round_no: int) -> str:
    """`--files` small files made, and listed after a cache drop (untimed, as bench/peers.py
    does), then each unlinked by its path."""
    folder = mount.mnt / f"doomed-{round_no}"
    folder.mkdir()
    data = os.urandom(4096)
    calls_before = _fuse_calls(mount)
    for i in range(args.files):
        with open(folder / f"f{i:06d}", "wb") as out:
            out.write(data)
    _calls_per_file(mount, calls_before, args.files)  # waits until the creates are counted
    bench_run.drop_page_cache()
    with os.scandir(folder) as entries:
        paths = [folder / entry.name for entry in entries]
    meter = CpuMeter(mount)
    calls_before = _fuse_calls(mount)
    started = time.perf_counter()
    for path in paths:
        os.unlink(path)
    took = time.perf_counter() - started
    spent = meter.spent()
    folder.rmdir()
    return (f"delete {args.files / took:.0f} files/s; {spent}; "
            f"{_calls_per_file(mount, calls_before, args.files, done_by='unlink')}")


def _fuse_calls(mount) -> dict[str, int]:
    """zero-fuse's calls by operation, as it publishes them (once a second)."""
    return dict(_state_rows(mount, "SELECT op, calls FROM fuse_ops"))


def _calls_per_file(mount, before: dict[str, int], files: int, done_by: str = "release") -> str:
    """The calls into zero-fuse each file cost, once zero-fuse published them all
    (``done_by``: the call each file ends with)."""
    deadline = time.monotonic() + 10
    while True:
        after = _fuse_calls(mount)
        if after.get(done_by, 0) - before.get(done_by, 0) >= files or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    per_file = {op: (calls - before.get(op, 0)) / files for op, calls in sorted(after.items())}
    return "calls per file: " + ", ".join(f"{op} {count:.1f}" for op, count in per_file.items() if count >= 0.05)


def sync(mount, args, round_no: int) -> str:
    """Small files written and left for the worker (run with --upload-delay 600),
    then `zero sync`: the upload backlog of a tar x or an rsync, drained at once."""
    took, spent = _synced_new_files(mount, mount.mnt / f"sync-{round_no}", args.files)
    return f"zero sync of {args.files} new files: {took:.2f} s, {args.files / took:.0f} files/s; {spent}"


def _synced_new_files(mount, folder: Path, count: int) -> tuple[float, str]:
    """Write ``count`` new 4 KiB files into ``folder``, then `zero sync`: how long
    the sync took, and the CPU zero's processes spent in it."""
    folder.mkdir()
    for i in range(count):
        with open(folder / f"f{i:06d}", "wb") as out:
            out.write(os.urandom(4096))
    meter = CpuMeter(mount)
    started = time.perf_counter()
    mount.zero("sync", str(mount.mnt), timeout_s=600)
    return time.perf_counter() - started, meter.spent()


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return tuple(int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))


def namespace(mount, args, round_no: int) -> str:
    """Empty files in folders of 1000, as bench/peers.py --million fills its namespace;
    zero-fuse's memory and the create rate at each tenth, then a stat of 1000 random
    files after the kernel forgot them (each a LOOKUP that zero-fuse answers)."""
    import random
    root = mount.mnt / f"ns-{round_no}"
    fuse_pid = mount.processes["zero-fuse"].pid
    step = max(args.files // 10, 1000)
    started = time.perf_counter()
    for i in range(args.files):
        path = root / f"d{i // 1000:04d}" / f"f{i % 1000:03d}"
        if i % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        if (i + 1) % step == 0:
            now = time.perf_counter()
            rss, peak = rss_mib(fuse_pid)
            print(f"  {i + 1:>9,} files: {step / (now - started):.0f} files/s, zero-fuse RSS {rss:.0f} MiB "
                  f"(peak {peak:.0f})", flush=True)
            started = now
    warm, cold = stat_after_drops(lambda what: [root / f"d{i // 1000:04d}" / f"f{i % 1000:03d}"
                                                for i in random.Random(what).choices(range(args.files), k=1000)],
                                  settle=lambda: _wait_until_quiet(fuse_pid))
    rss, peak = rss_mib(fuse_pid)
    return (f"stat {warm:.0f} files/s with names forgotten, {cold:.0f} with the page cache dropped; "
            f"zero-fuse RSS {rss:.0f} MiB, peak {peak:.0f} MiB")


def _wait_until_quiet(pid: int, busy_below_s: float = 0.05, window_s: float = 1.0, limit_s: float = 120.0) -> None:
    """Until the process spent less than ``busy_below_s`` of CPU in a window."""
    deadline = time.monotonic() + limit_s
    spent = sum(process_cpu(pid))
    while time.monotonic() < deadline:
        time.sleep(window_s)
        now = sum(process_cpu(pid))
        if now - spent < busy_below_s:
            return
        spent = now
    print(f"bench: process {pid} stayed busy for {limit_s:.0f}s; the next figure may be low", file=sys.stderr)


def lookups(mount, args, round_no: int) -> str:
    """``namespace``'s stats and memory without its hour of creates: the files are
    written into the state with zero stopped (as zero-fuse's create would write
    their rows), zero is started again, a walk stats every file once (the kernel
    then holds every name, so libfuse holds a node for each), and random files are
    stat-ed after the kernel forgot the names. Also says how many lookups each
    stat cost zero-fuse and its CPU for each: random files among many folders make
    the kernel look up the folder too."""
    from zero.state import namespace as names_in_state
    from zero.state.db import open_database
    root_name = f"lookups-{round_no}"
    (mount.mnt / root_name).mkdir()
    mount.stop()
    started = time.perf_counter()
    database = open_database(mount.cache / "state.sqlite3")
    try:
        now = time.time_ns()
        common = dict(uid=os.getuid(), gid=os.getgid(), size=0, atime_ns=now, mtime_ns=now, ctime_ns=now, rdev=0)
        with database.read() as connection:
            top = names_in_state.lookup(connection, names_in_state.ROOT_INO, root_name.encode())
        folders = -(-args.files // 1000)
        for first in range(0, args.files, 10_000):
            with database.write() as connection:
                for i in range(first, min(first + 10_000, args.files)):
                    if i % 1000 == 0:
                        folder = names_in_state.insert_inode(connection, mode=0o40755, nlink=2, **common)
                        names_in_state.insert_dentry(connection, top, f"d{i // 1000:04d}".encode(), folder)
                    ino = names_in_state.insert_inode(connection, mode=0o100644, nlink=1, **common)
                    names_in_state.insert_dentry(connection, folder, f"f{i % 1000:03d}".encode(), ino)
        with database.write() as connection:
            names_in_state.update_inode(connection, top, nlink=2 + folders)
    finally:
        database.dispose()
    written = time.perf_counter() - started
    mount.restart()
    fuse_pid = mount.processes["zero-fuse"].pid
    started = time.perf_counter()
    walked = 0
    for d in range(folders):
        for entry in os.scandir(mount.mnt / root_name / f"d{d:04d}"):
            entry.stat()
            walked += 1
    walk = args.files / (time.perf_counter() - started)
    if walked != args.files:
        raise RuntimeError(f"zero, started again, shows {walked} of the {args.files} files written into its state")
    _, walk_peak = rss_mib(fuse_pid)
    rates, per_stat, cpu_per_lookup = [], 0.0, 0.0
    for what in (2, 3):  # names forgotten, then the page cache dropped too (as stat_after_drops)
        paths = [mount.mnt / root_name / f"d{i // 1000:04d}" / f"f{i % 1000:03d}"
                 for i in random.Random(what).choices(range(args.files), k=1000)]
        drop_page_cache(what)
        _wait_until_quiet(fuse_pid)  # the FORGETs of a million names last seconds past the machine's idle mark
        calls_before, cpu_before = _fuse_calls(mount).get("getattr", 0), sum(process_cpu(fuse_pid))
        started = time.perf_counter()
        for path in paths:
            os.stat(path)
        rates.append(len(paths) / (time.perf_counter() - started))
        spent = sum(process_cpu(fuse_pid)) - cpu_before
        if what == 2:
            calls, deadline = -1, time.monotonic() + 30
            while time.monotonic() < deadline:
                time.sleep(1.1)  # zero-fuse publishes its counts once a second: until they stop moving
                published = _fuse_calls(mount).get("getattr", 0) - calls_before
                if published == calls:
                    break
                calls = published
            per_stat, cpu_per_lookup = calls / len(paths), spent / max(calls, 1)
    return (f"{args.files:,} files written into the state in {written:.0f} s; a walk stat-ed each at {walk:.0f}/s, "
            f"zero-fuse RSS peak {walk_peak:.0f} MiB; stat {rates[0]:.0f} files/s with names forgotten "
            f"({per_stat:.2f} lookups a stat, zero-fuse CPU {cpu_per_lookup * 1e6:.0f} us a lookup), "
            f"{rates[1]:.0f} with the page cache dropped")


def bigcache(mount, args, round_no: int) -> str:
    """A cache of --files small files (made in the first round, in folders of 1,000):
    zero-worker's CPU over --idle-s idle, then a zero sync of up to 2,000 new files.
    What a cost that grows with the cache, not with the work, shows up in (decision 111)."""
    top = mount.mnt / "cache-of-many"
    filled = ""
    if not top.exists():
        top.mkdir()
        started = time.perf_counter()
        for first in range(0, args.files, 1000):
            folder = top / f"d{first // 1000}"
            folder.mkdir()
            for i in range(first, min(first + 1000, args.files)):
                fd = os.open(folder / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    os.write(fd, os.urandom(2048))
                finally:
                    os.close(fd)
        mount.zero("sync", str(mount.mnt), timeout_s=1800)
        filled = f"{args.files} files written and synced in {time.perf_counter() - started:.0f} s; "
    time.sleep(2)  # the sync's last wake-ups settle
    meter = CpuMeter(mount)
    time.sleep(args.idle_s)
    idle = meter.spent()
    count = min(2000, args.files)
    took, spent = _synced_new_files(mount, mount.mnt / f"more-{round_no}", count)
    return f"{filled}idle {args.idle_s:g} s: {idle}; zero sync of {count} more: {took:.2f} s, {spent}"


WORKLOADS = {"write": write, "read": read, "cold": cold, "create": create, "delete": delete, "namespace": namespace,
             "lookups": lookups, "sync": sync, "randwrite": randwrite, "bigcache": bigcache}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--cache-mib", type=int, default=32, help="cache limit for the cold read and random writes")
    parser.add_argument("--writes", type=int, default=2000, help="random 4 KiB writes a round (randwrite)")
    parser.add_argument("--upload-delay", type=float, default=1.0, help="uploadDelay (the bench's default: 1)")
    parser.add_argument("--idle-s", type=float, default=30.0, help="how long bigcache watches the idle worker")
    parser.add_argument("--prefetch", type=int, default=None, help="prefetchChunks (zero's default: 4)")
    parser.add_argument("--read-ahead", type=int, default=None, metavar="KIB",
                        help="set the mount's kernel read-ahead (read_ahead_kb; zero-fuse raises it to 1024)")
    parser.add_argument("--base-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="zero-quick-", dir=args.base_dir))
    (work / "zero").mkdir()
    mount = bench_run.ZeroMount(work / "zero", 60)
    plain_config = bench_run.write_config

    def config(path, remote, target="1000GB"):
        plain_config(path, remote, target)
        text = path.read_text().replace("uploadDelay: 1\n", f"uploadDelay: {args.upload_delay}\n")
        if args.prefetch is not None:
            text += f"prefetchChunks: {args.prefetch}\n"
        path.write_text(text)

    bench_run.write_config = config
    try:
        mount.start()
        if args.read_ahead is not None:
            from zero.fsutil import zero_mounts  # here: A/B runs put older trees of zero first on the path
            device = zero_mounts(mount.mnt)[-1][1]
            Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(str(args.read_ahead))
        for round_no in range(args.rounds):
            print(f"round {round_no}: {WORKLOADS[args.workload](mount, args, round_no)}", flush=True)
    finally:
        mount.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
