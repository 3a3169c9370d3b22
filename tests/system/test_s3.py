"""zero over S3, for real: a moto server on 127.0.0.1 (started and stopped by
these tests), the real zero-fuse and zero-worker, data through the mount."""

from __future__ import annotations

import os

import pytest
import yaml

from workerkit import KIB, MIB, State, settle_evicted, sha256_of, wait_until

KNOWN = b"THE-QUICK-BROWN-FOX-IS-NEVER-STORED-IN-PLAIN-TEXT:"


def set_config(mount, **changes) -> None:
    config = yaml.safe_load(mount.config_path.read_text())
    config.update(changes)
    mount.config_path.write_text(yaml.safe_dump(config))


def write_file(path, size: int) -> str:
    """Half known, compressible text, half random: plaintext would show in an object."""
    half = size // 2
    path.write_bytes((KNOWN * (half // len(KNOWN) + 1))[:half] + os.urandom(size - half))
    return sha256_of(path)


def test_a_file_four_times_the_cache_goes_through_s3_and_the_bucket_holds_no_plaintext(s3, make_mount):
    bucket = s3.bucket()
    m = make_mount(remotes=[s3.remote("s3", bucket)], chunkSize="256KiB", uploadDelay=0,
                   targetDiskUsage="4MiB", lowWatermark=0.5)
    digest = write_file(m.mnt / "big.bin", 16 * MIB)
    m.zero("sync", str(m.mnt))
    wait_until(lambda: State(m.cache).states().get("remote", 0) >= 32, 120, "most of the file to be evicted")
    settle_evicted(m, m.mnt / "big.bin")
    assert sha256_of(m.mnt / "big.bin") == digest
    stored = s3.objects(bucket)
    assert len(stored) > 32, f"expected the file's chunks in the bucket (the random half alone is 32), found {len(stored)}"
    for key, blob in stored.items():
        assert KNOWN not in blob and KNOWN[:16] not in blob, f"{key} holds plaintext"


def test_the_s3_server_dies_mid_upload_and_comes_back_and_nothing_is_lost(s3, make_mount):
    bucket = s3.bucket()
    m = make_mount(remotes=[s3.remote("s3", bucket)], chunkSize="256KiB", uploadDelay=0,
                   targetDiskUsage="64MiB", allowed_log=("Remote 's3' is not answering", "is healthy again",
                                                         "Retrying", "retrying", "Remote 's3' is unavailable"))
    digests = {}
    for index in range(4):
        digests[f"f{index}.bin"] = write_file(m.mnt / f"f{index}.bin", 4 * MIB)
    wait_until(lambda: len(s3.objects(bucket)) >= 3, 60, "the upload to start")
    s3.stop()
    for index in range(4, 6):  # written while S3 is down (their uploads fail for sure): kept in the cache
        digests[f"f{index}.bin"] = write_file(m.mnt / f"f{index}.bin", 2 * MIB)
    wait_until(lambda: "unhealthy" in m.zero("status", str(m.cache)).stdout, 120,
               "zero status to say the remote is not answering")
    s3.start()
    m.zero("sync", str(m.mnt), timeout=300)
    assert State(m.cache).states().get("dirty", 0) == 0
    # Everything is in the bucket: restart the worker on a tiny cache so every chunk must come back from S3.
    m.unmount()
    m.stop_worker()
    set_config(m, targetDiskUsage="1MiB", lowWatermark=0.5)
    m.start_worker()
    m.start_fuse()
    wait_until(lambda: State(m.cache).states().get("clean", 0) <= 4, 120, "the cache to be emptied")
    settle_evicted(m)
    for name, digest in digests.items():
        assert sha256_of(m.mnt / name) == digest, f"{name} is not identical after S3 came back"


def test_with_two_replicas_one_bucket_wiped_every_file_still_reads_back(s3, make_mount):
    first, second = s3.bucket(), s3.bucket()
    m = make_mount(remotes=[s3.remote("first", first), s3.remote("second", second)], replicas=2,
                   chunkSize="256KiB", uploadDelay=0, targetDiskUsage="2MiB", lowWatermark=0.5,
                   # moto's development server on a loaded 2-core machine now and then refuses a
                   # connection; the health change it causes is the truth, and the point here is
                   # that every file reads back.
                   allowed_log=("Remote 'first' is unavailable", "is not answering", "is healthy again"))
    digests = {f"f{index}.bin": write_file(m.mnt / f"f{index}.bin", 2 * MIB) for index in range(3)}
    m.zero("sync", str(m.mnt))
    wait_until(lambda: State(m.cache).states().get("remote", 0) >= 12, 120, "most chunks to be evicted")
    for key in s3.objects(first):
        s3.client.delete_object(Bucket=first, Key=key)
    settle_evicted(m)
    for name, digest in digests.items():
        assert sha256_of(m.mnt / name) == digest, f"{name} did not read back from the surviving replica"


def test_three_remotes_with_quotas_one_two_three_fill_in_proportion(s3, make_mount):
    buckets = [s3.bucket() for _ in range(3)]
    remotes = [s3.remote(f"r{quota}", bucket, quota=f"{quota}MiB") for quota, bucket in zip((1, 2, 3), buckets)]
    m = make_mount(remotes=remotes, chunkSize="64KiB", uploadDelay=0)
    (m.mnt / "data.bin").write_bytes(os.urandom(60 * 64 * KIB))
    m.zero("sync", str(m.mnt))
    counts = [len([key for key in s3.objects(bucket) if "/objects/" in key]) for bucket in buckets]
    assert sum(counts) == 60, counts
    for count, share in zip(counts, (10, 20, 30)):
        assert abs(count - share) <= 3, f"objects per remote {counts} are not in proportion 1:2:3"


@pytest.fixture
def flaky_proxy(s3):
    """A fault-injecting proxy in front of the S3 server, stopped after the mount (requested before it)."""
    from faultproxy import FaultProxy

    proxy = FaultProxy(s3.port)
    proxy.start()
    yield proxy
    proxy.enabled = False
    proxy.stop()


def test_a_flaky_network_to_s3_loses_nothing_and_logs_health_changes_not_attempts(s3, flaky_proxy, make_mount):
    proxy = flaky_proxy
    bucket = s3.bucket()
    remote = s3.remote("s3", bucket)
    remote["endpoint"] = proxy.endpoint
    m = make_mount(remotes=[remote], chunkSize="256KiB", uploadDelay=0, targetDiskUsage="2MiB",
                   lowWatermark=0.5, faultInTimeout=120,
                   allowed_log=("Remote 's3' is not answering", "Remote 's3' is unavailable"))
    digests = {f"f{index}.bin": write_file(m.mnt / f"f{index}.bin", 2 * MIB) for index in range(4)}
    m.zero("sync", str(m.mnt), timeout=600)
    wait_until(lambda: State(m.cache).states().get("remote", 0) >= 16, 300, "most chunks to be evicted")
    settle_evicted(m)
    for name, digest in digests.items():
        assert sha256_of(m.mnt / name) == digest, f"{name} is not identical over a flaky network"
    assert sum(proxy.injected.values()) >= 10, f"too few faults were injected to prove anything: {proxy.injected}"
    assert all(proxy.injected.values()), f"every kind of fault should have happened: {proxy.injected}"
    lines = (m.worker_log() + m.fuse_log()).splitlines()
    noisy = [line for line in lines if " WARNING " in line or " ERROR " in line]
    assert len(noisy) <= 20, f"{len(noisy)} warnings for {sum(proxy.injected.values())} faults:\n" + \
        "\n".join(noisy[:30])
