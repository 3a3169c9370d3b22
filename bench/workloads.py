#!/usr/bin/env python3
"""The workloads of `bench/run.py --peers`, one per child process.

    python bench/workloads.py <workload> <folder> '<params as JSON>'

Runs one workload in <folder> (a plain folder or a mount point) and prints its
figures as one JSON object on the last line of stdout. The harness runs each in
a child of its own so that a workload stuck in a FUSE call can be killed at its
deadline without taking the harness with it. Every system gets the same data
(read from one source file) and the same random offsets (a fixed seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

MIB = 1024 * 1024
PAGE = 4096
SEED = 11  # issue #11: the same offsets on every system and every round


def drop_page_cache(what: int = 3) -> None:
    """Make the next read come from the disk (plain) or through the filesystem;
    ``what`` 2 drops only the kernel's names and inodes (the next stat is a lookup).
    Needs root; without it cold reads are warm, and the run says so."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write(f"{what}\n")
    except OSError as error:
        print(f"bench: cannot drop the page cache ({error}); cold reads are warm", file=sys.stderr)
        return
    # Dropping a big namespace's inodes sends its filesystem one FORGET per inode,
    # which it answers for seconds: measured during that flood, stat ran at half
    # its rate. The flood is the drop's cost, not the workload's: let it pass.
    wait_until_idle()


def wait_until_idle(busy_below: float = 0.25, window_s: float = 0.3, limit_s: float = 60.0) -> None:
    """Until the machine's CPUs were busy less than ``busy_below`` of a window."""
    def ticks() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        total, idle = ticks()
        time.sleep(window_s)
        total_after, idle_after = ticks()
        if total_after > total and 1 - (idle_after - idle) / (total_after - total) < busy_below:
            return
    print(f"bench: the machine stayed busy for {limit_s:.0f}s after the cache drop; the next figure may be low",
          file=sys.stderr)


def load_blocks(p: dict) -> list[bytes]:
    """The source blocks (distinct random 1 MiB blocks, made once per run by the harness)."""
    with open(p["data"], "rb") as source:
        data = source.read()
    return [data[i:i + MIB] for i in range(0, len(data), MIB)]


def write_file(path: Path, blocks: list[bytes], size_mib: int) -> float:
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for i in range(size_mib):
            f.write(blocks[i % len(blocks)])
        os.fsync(f.fileno())
    return time.perf_counter() - start


def read_file(path: Path, expected: int, ttfb: bool = False) -> dict:
    drop_page_cache()
    total = 0
    first = None
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        if ttfb:
            total += len(f.read(PAGE))
            first = time.perf_counter() - start
        while chunk := f.read(MIB):
            total += len(chunk)
    elapsed = time.perf_counter() - start
    if total != expected:
        raise RuntimeError(f"read {total} bytes of {path.name}, expected {expected}")
    figures = {"mib_s": total / MIB / elapsed}
    if first is not None:
        figures["ttfb_ms"] = first * 1000
    return figures


# --- the workloads: each takes the folder and the params, returns figures ----

def w_write(root: Path, p: dict) -> dict:
    seconds = write_file(root / "big.bin", load_blocks(p), p["size_mib"])
    return {"write": p["size_mib"] / seconds}


def w_read_cached(root: Path, p: dict) -> dict:
    return {"read_cached": read_file(root / "big.bin", p["size_mib"] * MIB)["mib_s"]}


def w_read_evicted(root: Path, p: dict) -> dict:
    figures = read_file(root / "big.bin", p["size_mib"] * MIB, ttfb=True)
    return {"read_evicted": figures["mib_s"], "ttfb": figures["ttfb_ms"]}


def w_rand_read(root: Path, p: dict) -> dict:
    pages = p["size_mib"] * MIB // PAGE
    offsets = [n * PAGE for n in random.Random(SEED).choices(range(pages), k=p["random_ops"])]
    drop_page_cache()
    fd = os.open(root / "big.bin", os.O_RDONLY)
    try:
        start = time.perf_counter()
        for offset in offsets:
            if len(os.pread(fd, PAGE, offset)) != PAGE:
                raise RuntimeError(f"short read at {offset}")
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    return {"rand_read": len(offsets) / elapsed}


def w_rand_prepare(root: Path, p: dict) -> dict:
    """The file for random writes: twice the cache limit, written and fsynced (untimed)."""
    write_file(root / "rand.bin", load_blocks(p), 2 * p["cache_mib"])
    return {}


def w_rand_write(root: Path, p: dict) -> dict:
    pages = 2 * p["cache_mib"] * MIB // PAGE
    rng = random.Random(SEED)
    offsets = [n * PAGE for n in rng.choices(range(pages), k=p["random_writes"])]
    data = rng.randbytes(PAGE)
    fd = os.open(root / "rand.bin", os.O_RDWR)
    try:
        start = time.perf_counter()
        for offset in offsets:
            os.pwrite(fd, data, offset)
        os.fsync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    return {"rand_write": len(offsets) / elapsed}


def small_paths(root: Path, count: int) -> list[Path]:
    return [root / "small" / f"f{i:06d}" for i in range(count)]


def w_create(root: Path, p: dict) -> dict:
    (root / "small").mkdir()
    data = load_blocks(p)[0][:PAGE]
    paths = small_paths(root, p["files"])
    start = time.perf_counter()
    for path in paths:
        with open(path, "wb") as f:
            f.write(data)
    return {"create": len(paths) / (time.perf_counter() - start)}


def w_stat(root: Path, p: dict) -> dict:
    paths = small_paths(root, p["files"])
    start = time.perf_counter()
    for path in paths:
        os.stat(path)
    return {"stat": len(paths) / (time.perf_counter() - start)}


def w_list(root: Path, p: dict) -> dict:
    drop_page_cache()  # also the kernel's dentries, so the listing reaches the filesystem
    start = time.perf_counter()
    with os.scandir(root / "small") as entries:
        count = sum(1 for _ in entries)
    elapsed = time.perf_counter() - start
    if count != p["files"]:
        raise RuntimeError(f"listed {count} entries, expected {p['files']}")
    return {"list": count / elapsed}


def w_delete(root: Path, p: dict) -> dict:
    paths = small_paths(root, p["files"])
    start = time.perf_counter()
    for path in paths:
        os.unlink(path)
    elapsed = time.perf_counter() - start
    (root / "small").rmdir()
    return {"delete": len(paths) / elapsed}


def stdlib_tarball(path: Path) -> None:
    """A tar of this Python's standard library, without caches and installed packages."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])

    def keep(info: tarfile.TarInfo):
        parts = Path(info.name).parts
        if "__pycache__" in parts or "site-packages" in parts or "dist-packages" in parts \
                or any(part.startswith("config-") for part in parts):
            return None
        return info if (info.isfile() or info.isdir() or info.issym()) else None

    with tarfile.open(path, "w") as archive:
        archive.add(stdlib, arcname="stdlib", filter=keep)


def tar_manifest(tar_path: str) -> dict[str, str]:
    """name -> sha256 of every regular file (or the link target of a symlink) in a tarball."""
    manifest = {}
    with tarfile.open(tar_path) as archive:
        for member in archive:
            name = member.name.removeprefix("./")
            if member.isfile():
                manifest[name] = hashlib.sha256(archive.extractfile(member).read()).hexdigest()
            elif member.issym():
                manifest[name] = "-> " + member.linkname
    return manifest


def w_tar_x(root: Path, p: dict) -> dict:
    target = root / "tarx"
    target.mkdir()
    start = time.perf_counter()
    subprocess.run(["tar", "-xf", p["tarball"], "-C", str(target)], check=True)
    os.sync()  # the extracted tree is on the system (for zero and JuiceFS, as far as their fsync goes)
    return {"tar_x": p["tar_files"] / (time.perf_counter() - start)}


def w_tar_c(root: Path, p: dict) -> dict:
    """tar the extracted tree back out (to the scratch disk), then check it against the source."""
    drop_page_cache()
    out = Path(p["scratch"]) / f"tar-back-{os.getpid()}.tar"
    try:
        start = time.perf_counter()
        subprocess.run(["tar", "-cf", str(out), "-C", str(root / "tarx"), "."], check=True)
        elapsed = time.perf_counter() - start
        back = tar_manifest(str(out))
    finally:
        out.unlink(missing_ok=True)
    source = json.loads(Path(p["manifest"]).read_text())
    if back != source:
        differ = sorted(set(back.items()) ^ set(source.items()))[:5]
        raise RuntimeError(f"tar back out differs from the source: {differ}")
    return {"tar_c": p["tar_files"] / elapsed}


def w_git_clone(root: Path, p: dict) -> dict:
    start = time.perf_counter()
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", p["git_repo"], str(root / "clone")], check=True)
    elapsed = time.perf_counter() - start
    head = subprocess.run(["git", "-C", str(root / "clone"), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    if head != p["git_head"]:
        raise RuntimeError(f"the clone's HEAD is {head}, the source's {p['git_head']}")
    return {"git_clone": elapsed}


# --- --million: create and stat rates against the number of files present ---

def ns_path(root: Path, i: int) -> Path:
    return root / "ns" / f"d{i // 1000:04d}" / f"f{i % 1000:03d}"


def w_ns_fill(root: Path, p: dict) -> dict:
    """Grow the namespace to p['to'] empty files (in folders of 1000), from p['from']."""
    for i in range(p["from"], p["to"]):
        path = ns_path(root, i)
        if i % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    return {}


def w_ns_measure(root: Path, p: dict) -> dict:
    """Create 1000 new 4 KiB files in a fresh folder, and stat random existing ones (stat_after_drops)."""
    folder = root / "ns" / f"probe-{p['present']}"
    folder.mkdir()
    data = load_blocks(p)[0][:PAGE]
    start = time.perf_counter()
    for i in range(1000):
        with open(folder / f"p{i:03d}", "wb") as f:
            f.write(data)
    create = 1000 / (time.perf_counter() - start)
    warm, cold = stat_after_drops(lambda what: [ns_path(root, i) for i in
                                                random.Random(SEED + what).choices(range(p["present"]), k=1000)])
    tag = p["tag"]
    return {f"ns_create_{tag}": create, f"ns_stat_{tag}": warm, f"ns_stat_cold_{tag}": cold}


def stat_after_drops(pick, settle=None) -> tuple[float, float]:
    """Stats per second of ``pick(2)`` with the kernel's names dropped (each stat
    a lookup the system answers from its own metadata, pages still cached), then
    of ``pick(3)`` with the page cache dropped too (the disk's seeks, for every
    system). Different files each time: the first pass brings its own back into
    the filesystem's memory."""
    rates = []
    for what in (2, 3):
        paths = pick(what)
        drop_page_cache(what)
        if settle is not None:
            settle()  # e.g. until the filesystem answered the drop's FORGETs, past the machine's idle mark
        start = time.perf_counter()
        for path in paths:
            os.stat(path)
        rates.append(len(paths) / (time.perf_counter() - start))
    return rates[0], rates[1]


WORKLOADS = {name[2:]: fn for name, fn in globals().items() if name.startswith("w_")}


def main() -> int:
    name, root, params = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    figures = WORKLOADS[name](root, params)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
