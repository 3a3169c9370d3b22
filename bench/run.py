#!/usr/bin/env python3
"""zero's benchmark: the same workloads on a plain folder and on a zero mount.

Starts ``zero-worker`` and ``zero-fuse`` on a fresh cache in a temporary
folder (config via $ZERO_CONFIG: one local remote beside it, uploadDelay 1,
a large targetDiskUsage), runs each workload on a plain folder on the same
disk and then on the mount, and prints a table of both rates and their ratio.
The processes are stopped and the mount removed however the run ends.

    python bench/run.py [--files 2000] [--size-mib 256] [--json out.json]
    python bench/run.py --peers --help   # zero against a passthrough, JuiceFS and rclone

Not a test: it asserts nothing. docs/benchmarks.md says what the numbers mean.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import drop_page_cache  # noqa: E402  (one drop for bench/run.py, peers and quick)

MIB = 1024 * 1024
SMALL_FILE_BYTES = 4096
WRITE_BLOCK_BYTES = MIB
RANDOM_POOL_MAX_MIB = 256  # distinct random blocks kept in memory for the big file
MOUNT_POLL_S = 0.05
UNMOUNT_WAIT_S = 10.0
STOP_WAIT_S = 30.0
LOG_TAIL_LINES = 40


@dataclass
class Result:
    workload: str
    unit: str
    plain: float
    zero: float | None

    @property
    def ratio(self) -> float | None:
        if self.zero is None or not self.plain:
            return None
        return self.zero / self.plain


# --- workloads: each takes the folder to work in and returns a rate ---------

def create_small_files(root: Path, count: int) -> float:
    folder = root / "small"
    folder.mkdir()
    data = os.urandom(SMALL_FILE_BYTES)
    start = time.perf_counter()
    for i in range(count):
        with open(folder / f"f{i:06d}", "wb") as f:
            f.write(data)
    return count / (time.perf_counter() - start)


def stat_small_files(root: Path, count: int) -> float:
    paths = [root / "small" / f"f{i:06d}" for i in range(count)]
    start = time.perf_counter()
    for path in paths:
        os.stat(path)
    return count / (time.perf_counter() - start)


def write_big_file(root: Path, blocks: list[bytes], size_mib: int) -> float:
    """Sequential 1 MiB writes, then close. No fsync: on zero it waits for upload."""
    start = time.perf_counter()
    with open(root / "big.bin", "wb", buffering=0) as f:
        for i in range(size_mib):
            f.write(blocks[i % len(blocks)])
    return size_mib / (time.perf_counter() - start)


def read_big_file(root: Path, size_mib: int) -> float:
    """A fresh open and sequential 1 MiB reads of the file just written (cached)."""
    total = 0
    start = time.perf_counter()
    with open(root / "big.bin", "rb", buffering=0) as f:
        while chunk := f.read(WRITE_BLOCK_BYTES):
            total += len(chunk)
    elapsed = time.perf_counter() - start
    if total != size_mib * MIB:
        raise RuntimeError(f"read {total} bytes of big.bin, expected {size_mib * MIB}")
    return total / MIB / elapsed


def remove_small_files(root: Path, count: int) -> float:
    start = time.perf_counter()
    shutil.rmtree(root / "small")
    return count / (time.perf_counter() - start)


# --- the zero processes ------------------------------------------------------

def cold_read_big_file(root: Path, size_mib: int) -> float:
    drop_page_cache()
    return read_big_file(root, size_mib)


def read_folder_files(folder: Path) -> tuple[float, int]:
    """Seconds and bytes to read every file under ``folder`` once (after a page cache drop)."""
    drop_page_cache()
    total = 0
    started = time.perf_counter()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb", buffering=0) as source:
                while chunk := source.read(WRITE_BLOCK_BYTES):
                    total += len(chunk)
    return time.perf_counter() - started, total


def find_program(name: str) -> str:
    """The console script next to this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        sys.exit(f"bench: {name} not found beside {sys.executable} or on PATH; run 'make setup' first")
    return found


def write_config(path: Path, remote: Path, target: str = "1000GB") -> None:
    path.write_text(
        f"targetDiskUsage: {target}\n"
        "remotes:\n"
        "  - name: bench\n"
        "    type: local\n"
        f"    path: {json.dumps(str(remote))}\n"
        "replicas: 1\n"
        "uploadDelay: 1\n"
    )


def log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


class ZeroMount:
    """zero-worker and zero-fuse on a cache; stop() undoes whatever start() did."""

    def __init__(self, work: Path, mount_timeout_s: float):
        self.work = work
        self.mnt = work / "mnt"
        self.cache = work / "cache"
        self.mount_timeout_s = mount_timeout_s
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        self.remote = self.work / "remote"
        self.config = self.work / "config.yml"
        for folder in (self.mnt, self.remote):
            folder.mkdir()
        self.cache.mkdir(mode=0o700)  # zero refuses a cache other users can read (decision 43)
        write_config(self.config, self.remote)
        self.env = dict(os.environ, ZERO_CONFIG=str(self.config))
        for name, command in self._commands().items():
            self._spawn(name, command)
        self._wait_for_mount()
        self._wait_for_worker()

    def _commands(self) -> dict[str, list[str]]:
        return {
            "zero-worker": [find_program("zero-worker"), str(self.cache)],
            "zero-fuse": [find_program("zero-fuse"), str(self.mnt), str(self.cache)],
        }

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.work / f"{name}.log", "ab")
        # A session of their own: Ctrl-C reaches only this harness, which stops them in order.
        self.processes[name] = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def restart(self) -> None:
        """Unmount and stop both processes, then start them again on the same cache."""
        self.stop()
        for name, command in self._commands().items():
            self._spawn(name, command)
        self._wait_for_mount()
        self._wait_for_worker()

    def zero(self, *args: str, timeout_s: float | None = None) -> str:
        result = subprocess.run([find_program("zero"), *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"zero {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    def restart_worker(self, target: str) -> None:
        """Stop the worker and start it again with targetDiskUsage = target."""
        worker = self.processes["zero-worker"]
        worker.send_signal(signal.SIGTERM)
        worker.wait(STOP_WAIT_S)
        write_config(self.config, self.remote, target)
        self._spawn("zero-worker", self._commands()["zero-worker"])
        self._wait_for_worker()

    def evict_everything(self, target: str, timeout_s: float = 300.0) -> None:
        """Upload all, then restart the worker with a small targetDiskUsage so that
        it evicts down to it; return when the cache holds no more than that."""
        deadline = time.monotonic() + timeout_s
        self.zero("sync", str(self.mnt), timeout_s=timeout_s)
        self.restart_worker(target)
        # zero's own measure and size parser, so "evicted down to the target" means what the worker means.
        from zero.cachedir import CacheDir
        from zero.config import parse_size
        limit = parse_size("--evict-to", target)
        while CacheDir(self.cache).usage().total_bytes > limit:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not evict the cache down to {target} in {timeout_s:.0f}s")
            time.sleep(0.2)

    def _wait_for_worker(self) -> None:
        """Until zero-worker holds its lock: before that zero-fuse rightly takes it for
        absent, and an fsync that promises the remotes fails with EIO."""
        from zero.locking import holder_pid
        worker = self.processes["zero-worker"]
        deadline = time.monotonic() + self.mount_timeout_s
        while holder_pid(self.cache / "worker.lock") != worker.pid:
            if worker.poll() is not None:
                raise RuntimeError(f"zero-worker exited with status {worker.returncode}:\n"
                                   + log_tail(self.work / "zero-worker.log"))
            if time.monotonic() > deadline:
                raise RuntimeError(f"zero-worker did not start within {self.mount_timeout_s:.0f}s:\n"
                                   + log_tail(self.work / "zero-worker.log"))
            time.sleep(MOUNT_POLL_S)

    def _wait_for_mount(self) -> None:
        deadline = time.monotonic() + self.mount_timeout_s
        while not os.path.ismount(self.mnt):
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {process.returncode} before the mount came up:\n"
                                       + log_tail(self.work / f"{name}.log"))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.mnt} not mounted after {self.mount_timeout_s:.0f}s; zero-fuse log:\n"
                                   + log_tail(self.work / "zero-fuse.log"))
            time.sleep(MOUNT_POLL_S)

    def is_mounted(self) -> bool:
        # /proc/self/mounts also lists a dead FUSE mount, which ismount() cannot stat.
        try:
            with open("/proc/self/mounts") as mounts:
                return any(line.split()[1] == str(self.mnt).replace(" ", "\\040") for line in mounts)
        except OSError:
            return os.path.ismount(self.mnt)

    def stop(self) -> None:
        if self.is_mounted():
            unmount = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, text=True)
            if unmount.returncode != 0 and self.is_mounted():
                print(f"bench: fusermount3 -u failed ({unmount.stderr.strip()}); unmounting lazily", file=sys.stderr)
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)])
        # zero-fuse ends by itself once unmounted; it goes first because it may
        # still need the worker while it shuts down.
        fuse = self.processes.get("zero-fuse")
        if fuse is not None:
            try:
                fuse.wait(UNMOUNT_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        for name in ("zero-fuse", "zero-worker"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                print(f"bench: {name} did not stop within {STOP_WAIT_S:.0f}s of SIGTERM; killing it", file=sys.stderr)
                process.kill()
                process.wait()


# --- the run -----------------------------------------------------------------

def random_blocks(size_mib: int) -> list[bytes]:
    """Distinct random 1 MiB blocks, so chunks neither dedup nor compress."""
    return [os.urandom(WRITE_BLOCK_BYTES) for _ in range(min(size_mib, RANDOM_POOL_MAX_MIB))]


def run_workloads(root: Path, files: int, size_mib: int, blocks: list[bytes]) -> dict[str, float]:
    steps: list[tuple[str, Callable[[], float]]] = [
        ("create", lambda: create_small_files(root, files)),
        ("stat", lambda: stat_small_files(root, files)),
        ("write", lambda: write_big_file(root, blocks, size_mib)),
        ("read", lambda: read_big_file(root, size_mib)),
        ("rm", lambda: remove_small_files(root, files)),
    ]
    rates = {}
    for key, step in steps:
        rates[key] = step()
    return rates


def describe(files: int, size_mib: int) -> list[tuple[str, str, str]]:
    return [
        ("create", f"create {files} x 4 KiB files", "files/s"),
        ("stat", f"stat {files} files", "ops/s"),
        ("write", f"write {size_mib} MiB, 1 MiB writes", "MiB/s"),
        ("read", f"read {size_mib} MiB, fresh open", "MiB/s"),
        ("rm", f"rm -r {files} files", "files/s"),
        ("cold_read", f"read {size_mib} MiB, not cached (zero: evicted)", "MiB/s"),
    ]


def measure_fault_in(zero: "ZeroMount", size_mib: int, target: str) -> tuple[float, float]:
    """Cold read through fault-in against reading the remote's objects directly.

    Returns (zero's cold read in MiB/s, the remote's raw read in MiB/s). The
    difference is what a fault-in costs beyond the transfer: the request and
    wake-up round trips, decryption and decompression, the rename into the
    cache and the commit, and the eviction that makes room."""
    zero.evict_everything(target)
    rate = cold_read_big_file(zero.mnt, size_mib)
    seconds, total = read_folder_files(zero.remote)
    return rate, (total / MIB) / seconds


def print_table(results: list[Result]) -> None:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    rows = [("workload", "unit", "plain", "zero", "zero/plain")]
    rows += [(r.workload, r.unit, number(r.plain), number(r.zero), ratio(r.ratio)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def check_free_space(base: Path, size_mib: int) -> None:
    # The big file exists in the plain folder, the cache and the remote at once.
    needed = 3 * size_mib * MIB + 512 * MIB
    free = shutil.disk_usage(base).free
    if free < needed:
        sys.exit(f"bench: {base} has {free // MIB} MiB free, the run needs about {needed // MIB} MiB; "
                 "use --base-dir or a smaller --size-mib")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="number of small files (default 2000)")
    parser.add_argument("--size-mib", type=int, default=256, help="size of the big file in MiB (default 256)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--base-dir", metavar="DIR", help="where the temporary folder goes (default: system temp)")
    parser.add_argument("--mount-timeout", type=float, default=30.0, help="seconds to wait for the mount (default 30)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, cache, remote)")
    parser.add_argument("--plain-only", action="store_true", help="skip zero; checks the harness itself")
    parser.add_argument("--evict-to", default="32MiB",
                        help="targetDiskUsage for the cold read (default 32MiB): the big file is evicted")
    parser.add_argument("--peers", action="store_true",
                        help="instead: zero against a passthrough, JuiceFS and rclone (bench/peers.py; --peers --help)")
    argv = sys.argv[1:] if argv is None else argv
    if "--peers" in argv:  # a harness of its own, with its own options
        import peers
        return peers.main([arg for arg in argv if arg != "--peers"])
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally below still unmounts and stops zero.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.files < 1 or args.size_mib < 1:
        parser.error("--files and --size-mib must be at least 1")

    base = Path(args.base_dir or tempfile.gettempdir()).resolve()
    check_free_space(base, args.size_mib)
    work = Path(tempfile.mkdtemp(prefix="zero-bench-", dir=base))
    plain = work / "plain"
    plain.mkdir()
    zero = ZeroMount(work, args.mount_timeout)
    print(f"bench: working in {work}", file=sys.stderr)

    blocks = random_blocks(args.size_mib)
    zero_rates: dict[str, float] = {}
    remote_rate = None
    try:
        plain_rates = run_workloads(plain, args.files, args.size_mib, blocks)
        plain_rates["cold_read"] = cold_read_big_file(plain, args.size_mib)
        if not args.plain_only:
            zero.start()
            zero_rates = run_workloads(zero.mnt, args.files, args.size_mib, blocks)
            zero_rates["cold_read"], remote_rate = measure_fault_in(zero, args.size_mib, args.evict_to)
    except RuntimeError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; stopping zero", file=sys.stderr)
        return 130
    finally:
        zero.stop()
        if zero.is_mounted():
            print(f"bench: {zero.mnt} is still mounted; leaving {work} in place", file=sys.stderr)
        elif args.keep:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    results = [Result(label, unit, plain_rates[key], zero_rates.get(key))
               for key, label, unit in describe(args.files, args.size_mib)]
    print_table(results)
    if remote_rate and zero_rates.get("cold_read"):
        print(f"\nfault-in: a cold read through zero ran at {zero_rates['cold_read']:,.0f} MiB/s; reading the "
              f"remote's objects directly ran at {remote_rate:,.0f} MiB/s, so fault-in costs "
              f"{remote_rate / zero_rates['cold_read']:.2f}x the transfer itself")
    if args.json:
        payload = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count()},
            "args": {"files": args.files, "size_mib": args.size_mib, "base_dir": str(base)},
            "results": [dict(asdict(r), ratio=r.ratio) for r in results],
            "remote_raw_read_mib_s": remote_rate,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"bench: wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
