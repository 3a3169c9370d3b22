"""The benchmark harness itself runs: a change to zero's start-up rules (a
private cache folder, decision 43) once broke it without any test noticing."""

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_benchmark_mounts_zero_and_measures_every_workload(tmp_path):
    report = tmp_path / "bench.json"
    finished = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--files", "20", "--size-mib", "8",
         "--base-dir", str(tmp_path), "--json", str(report)],
        capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    results = json.loads(report.read_text())["results"]
    assert len(results) == 6
    for row in results:
        assert row["zero"] > 0 and row["plain"] > 0, row
    assert list(tmp_path.iterdir()) == [report], "the harness leaves its scratch folder behind"


def test_the_quick_measurements_run_each_workload_and_clean_up(tmp_path):
    for workload in ("write", "cold", "read", "create", "sync"):
        finished = subprocess.run(
            [sys.executable, str(REPO / "bench" / "quick.py"), workload, "--rounds", "1", "--size-mib", "8",
             "--files", "20", "--base-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stdout + finished.stderr
        assert finished.stdout.startswith("round 0: ") and "CPU user+sys: zero-worker" in finished.stdout, \
            finished.stdout
    finished = subprocess.run(
        [sys.executable, str(REPO / "bench" / "quick.py"), "bigcache", "--rounds", "2", "--files", "30",
         "--idle-s", "0.5", "--base-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert re.search(r"round 0: 30 files written and synced in \d+ s; idle 0.5 s: CPU user\+sys: .*; zero sync of 30 "
                     r"more: \d+\.\d\d s", finished.stdout), finished.stdout
    assert re.search(r"round 1: idle 0.5 s: .*zero sync of 30 more", finished.stdout), finished.stdout
    finished = subprocess.run(
        [sys.executable, str(REPO / "bench" / "quick.py"), "namespace", "--rounds", "1", "--files", "20",
         "--base-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert re.search(r"stat \d+ files/s with names forgotten, \d+ with the page cache dropped", finished.stdout), \
        finished.stdout
    # The namespace written into the state with zero stopped: zero, started again, serves every file of it.
    finished = subprocess.run(
        [sys.executable, str(REPO / "bench" / "quick.py"), "lookups", "--rounds", "2", "--files", "1500",
         "--base-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    for round_no in (0, 1):
        assert re.search(rf"round {round_no}: 1,500 files written into the state in \d+ s; a walk stat-ed each at "
                         r"\d+/s, zero-fuse RSS peak \d+ MiB; stat \d+ files/s with names forgotten \((1|0)\.\d\d "
                         r"lookups a stat, zero-fuse CPU \d+ us a lookup\), \d+ with the page cache dropped",
                         finished.stdout), finished.stdout
    assert not list(tmp_path.iterdir()), "the quick bench leaves its scratch folder behind"


def test_the_state_costs_time_each_question_and_clean_up(tmp_path):
    finished = subprocess.run(
        [sys.executable, str(REPO / "bench" / "state_costs.py"), "--chunks", "50", "--others", "20", "--files", "30",
         "--base-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    timings = re.findall(r"^(.+): (\d+\.\d\d) ms$", finished.stdout, re.M)
    assert [what.split(",")[0] for what, _ms in timings] == [
        "prefetch's look-up", "what an fsync still waits for", "a walk of 30 chunk files",
        "the worker's measure of 30 clean chunks"], finished.stdout
    assert not list(tmp_path.iterdir()), "the state costs leave their scratch state behind"


def test_the_paired_comparison_mounts_two_trees_and_prints_each_ratio(tmp_path):
    finished = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ab.py"), str(REPO), str(REPO), "--rounds", "1", "--files", "20",
         "--size-mib", "2", "--base-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    for workload in ("create", "stat", "write", "read", "delete", "tarx"):  # each of ab.py's workloads
        assert re.search(rf"^{workload} +base +\d+ .* new/base \d+\.\d\d \(rounds", finished.stdout, re.M), \
            finished.stdout
    assert not list(tmp_path.iterdir()), "the paired comparison leaves its scratch folder behind"


def test_the_paired_comparison_refuses_a_folder_that_is_not_zero(tmp_path):
    finished = subprocess.run([sys.executable, str(REPO / "bench" / "ab.py"), str(tmp_path), str(REPO)],
                              capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2 and "is not a zero source tree" in finished.stderr, finished.stderr
