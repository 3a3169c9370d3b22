#!/usr/bin/env bash
# Mount zero at ./mnt over the cache ./cache with `zero mount`, which starts
# zero-worker and zero-fuse together and supervises them. Ctrl-C (or SIGTERM,
# or SIGHUP) unmounts, lets zero-fuse hand its writes to the worker, then
# stops the worker; that works whatever stdout is attached to
# (`make run 2>&1 | tee log` too), and a clean stop exits with status 0.
#
# Overrides: ZERO_MNT, ZERO_CACHE, VENV; ZERO_CONFIG picks the config file.
set -euo pipefail

cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
MNT=${ZERO_MNT:-mnt}
CACHE=${ZERO_CACHE:-cache}

if [[ ! -x $VENV/bin/zero ]]; then
    echo "run.sh: $VENV/bin/zero not found; run 'make setup' first" >&2
    exit 1
fi
mkdir -p "$MNT" "$CACHE"
# A mount left by an earlier run that was killed: zero mount refuses to mount
# over it, so clear it first.
if awk -v p="$(realpath "$MNT")" '$2 == p { found = 1 } END { exit !found }' /proc/self/mounts; then
    echo "run.sh: $MNT is still mounted from an earlier run; unmounting it" >&2
    "$VENV/bin/zero" umount "$MNT" || fusermount3 -u "$MNT"
fi
exec "$VENV/bin/zero" mount "$MNT" "$CACHE"
