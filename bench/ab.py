"""Paired A/B of two versions of zero on this machine: both mounted at once,
the workloads alternated round by round, each round's ratio new / base.

    git worktree add /tmp/base HEAD~1
    .venv/bin/python bench/ab.py /tmp/base . --rounds 8

On a shared VM one version measured after the other saw the machine change
under it (the same code ran stat at 10,800/s and 21,100/s an hour apart);
within a round both see the same machine, so the paired ratio is the figure
to read. Each tree is put first on PYTHONPATH of its zero-fuse and
zero-worker, which therefore run that tree's code. Needs root (the stat
round drops the kernel's names)."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench_run  # noqa: E402
from workloads import drop_page_cache, stdlib_tarball  # noqa: E402

SMALL = os.urandom(4096)


def create(mount, args, round_no: int) -> float:
    folder = mount.mnt / f"create-{round_no}"
    folder.mkdir()
    started = time.perf_counter()
    for i in range(args.files):
        with open(folder / f"f{i:06d}", "wb") as out:
            out.write(SMALL)
    return args.files / (time.perf_counter() - started)


def stat(mount, args, round_no: int) -> float:
    drop_page_cache(2)  # every stat a lookup that zero-fuse answers
    picks = random.Random(round_no).sample(range(args.files), args.files // 2)
    started = time.perf_counter()
    for i in picks:
        os.stat(mount.mnt / "many" / f"f{i:06d}")
    return len(picks) / (time.perf_counter() - started)


def write(mount, args, round_no: int) -> float:
    """Sequential write with fsync: with fsyncWaitsForUpload (the default), the upload too."""
    block = os.urandom(1 << 20)
    started = time.perf_counter()
    fd = os.open(mount.mnt / f"written-{round_no}", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(args.size_mib):
            os.write(fd, block[:16] + i.to_bytes(8, "little") + block[24:])  # no two blocks alike: no dedup
        os.fsync(fd)
    finally:
        os.close(fd)
    return args.size_mib / (time.perf_counter() - started)


def read(mount, args, round_no: int) -> float:
    drop_page_cache(3)  # served from zero's cache, through the mount
    started = time.perf_counter()
    with open(mount.mnt / "big", "rb", buffering=0) as source:
        while source.read(1 << 20):
            pass
    return args.size_mib / (time.perf_counter() - started)


def tarx(mount, args, round_no: int) -> float:
    """tar x of the standard library, then sync, as bench/peers.py times it."""
    target = mount.mnt / f"tarx-{round_no}"
    target.mkdir()
    started = time.perf_counter()
    subprocess.run(["tar", "-xf", str(args.tarball), "-C", str(target)], check=True)
    os.sync()
    return args.tar_files / (time.perf_counter() - started)


def delete(mount, args, round_no: int) -> float:
    """As bench/peers.py: the folder this round's create made is listed after a cache
    drop (untimed), then each file is unlinked by its path."""
    folder = mount.mnt / f"create-{round_no}"
    drop_page_cache(3)
    with os.scandir(folder) as entries:
        paths = [folder / entry.name for entry in entries]
    started = time.perf_counter()
    for path in paths:
        os.unlink(path)
    took = time.perf_counter() - started
    folder.rmdir()
    return len(paths) / took


WORKLOADS = {"create": (create, "files/s"), "stat": (stat, "files/s"), "write": (write, "MiB/s"),
             "read": (read, "MiB/s"), "delete": (delete, "files/s"), "tarx": (tarx, "files/s")}


def prepare(mount, args) -> None:
    (mount.mnt / "many").mkdir()
    for i in range(args.files):
        (mount.mnt / "many" / f"f{i:06d}").write_bytes(SMALL)
    with open(mount.mnt / "big", "wb") as out:
        for _ in range(args.size_mib):
            out.write(os.urandom(1 << 20))
    mount.zero("sync", str(mount.mnt), timeout_s=600)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="a source tree of zero (a git worktree)")
    parser.add_argument("new", type=Path, help="another one")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--base-dir", type=Path, default=None)
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"which, in this order (default: all: {','.join(WORKLOADS)}; delete needs create)")
    args = parser.parse_args(argv)
    chosen = {name: WORKLOADS[name] for name in args.workloads.split(",")}
    trees = {"base": args.base.resolve(), "new": args.new.resolve()}
    for name, tree in trees.items():
        if not (tree / "zero" / "__init__.py").exists():
            parser.error(f"{tree} is not a zero source tree (no zero/__init__.py); make one with: "
                         f"git worktree add {tree} <commit>")
    work = Path(tempfile.mkdtemp(prefix="zero-ab-", dir=args.base_dir))
    if "tarx" in chosen:
        args.tarball = work / "stdlib.tar"
        stdlib_tarball(args.tarball)
        with tarfile.open(args.tarball) as archive:
            args.tar_files = sum(1 for _ in archive)
    mounts: dict[str, bench_run.ZeroMount] = {}
    saved = os.environ.get("PYTHONPATH")
    try:
        for name, tree in trees.items():
            os.environ["PYTHONPATH"] = str(tree)  # ZeroMount.start copies the environment
            (work / name).mkdir()
            mounts[name] = bench_run.ZeroMount(work / name, 60)
            mounts[name].start()
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
        for mount in mounts.values():
            prepare(mount, args)
        figures = {name: {workload: [] for workload in chosen} for name in mounts}
        for round_no in range(args.rounds):
            # Who goes first alternates: the second of a pair meets a warmer machine.
            order = list(mounts) if round_no % 2 == 0 else list(mounts)[::-1]
            for workload, (measure, _unit) in chosen.items():
                for name in order:
                    figures[name][workload].append(measure(mounts[name], args, round_no))
        print(f"{args.rounds} round(s); medians, and the median of the rounds' new / base")
        for workload, (_measure, unit) in chosen.items():
            base, new = figures["base"][workload], figures["new"][workload]
            ratios = [n / b for b, n in zip(base, new)]
            print(f"{workload:7s} base {statistics.median(base):9.0f} {unit:8s} new {statistics.median(new):9.0f} "
                  f"{unit:8s} new/base {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")
    finally:
        for mount in mounts.values():
            mount.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
