#!/usr/bin/env bash
# Mount zero at ./mnt over the cache ./cache, with zero-worker alongside.
# Ctrl-C (or SIGTERM to this script) unmounts, then stops the worker and waits
# for it. zero-fuse's log and the worker's log both go to this terminal.
#
# Overrides: ZERO_MNT, ZERO_CACHE, VENV; ZERO_CONFIG picks the config file.
set -uo pipefail

cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
MNT=${ZERO_MNT:-mnt}
CACHE=${ZERO_CACHE:-cache}
MOUNT_WAIT_S=30     # how long zero-fuse may take to bring the mount up
UNMOUNT_WAIT_S=10   # how long zero-fuse may take to exit once unmounted

for program in "$VENV/bin/zero-fuse" "$VENV/bin/zero-worker"; do
    if [[ ! -x $program ]]; then
        echo "run.sh: $program not found; run 'make setup' first" >&2
        exit 1
    fi
done

mkdir -p "$MNT" "$CACHE"
MNT=$(realpath "$MNT")
CACHE=$(realpath "$CACHE")

# /proc/self/mounts rather than `mountpoint`: it also sees a dead FUSE mount
# ("Transport endpoint is not connected"), which stat cannot.
is_mounted() {
    awk -v p="${MNT// /\\040}" '$2 == p { found = 1 } END { exit !found }' /proc/self/mounts
}

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

wait_until_gone() {  # pid seconds
    local deadline=$((SECONDS + $2))
    while alive "$1" && ((SECONDS < deadline)); do sleep 0.1; done
    ! alive "$1"
}

if is_mounted; then
    echo "run.sh: $MNT is still mounted from an earlier run; unmounting it" >&2
    fusermount3 -u "$MNT" || { echo "run.sh: $MNT is busy; close what uses it and retry" >&2; exit 1; }
fi

worker_pid=""
fuse_pid=""

stop() {
    trap - INT TERM EXIT
    # Unmounting is what ends zero-fuse's loop cleanly; SIGTERM is the
    # fallback (libfuse then detaches the mount lazily).
    if is_mounted; then
        echo "run.sh: unmounting $MNT" >&2
        if ! fusermount3 -u "$MNT" 2>/dev/null && is_mounted; then
            echo "run.sh: $MNT is busy (something has a file or its working folder there);" \
                 "stopping zero-fuse, which detaches the mount" >&2
            alive "$fuse_pid" && kill -TERM "$fuse_pid" 2>/dev/null
        fi
    elif alive "$fuse_pid"; then
        kill -TERM "$fuse_pid" 2>/dev/null  # it never mounted, or is already unmounting
    fi
    if alive "$fuse_pid" && ! wait_until_gone "$fuse_pid" "$UNMOUNT_WAIT_S"; then
        echo "run.sh: zero-fuse (pid $fuse_pid) still running; sending SIGTERM" >&2
        kill -TERM "$fuse_pid" 2>/dev/null
    fi
    [[ -n $fuse_pid ]] && wait "$fuse_pid" 2>/dev/null
    if alive "$worker_pid"; then
        echo "run.sh: stopping zero-worker (pid $worker_pid); Ctrl-C again to kill it" >&2
        trap 'kill -KILL "$worker_pid" 2>/dev/null' INT
        kill -TERM "$worker_pid" 2>/dev/null
        while alive "$worker_pid"; do wait "$worker_pid" 2>/dev/null; done
        trap - INT
    fi
    if is_mounted; then
        fusermount3 -u "$MNT" 2>/dev/null || echo "run.sh: $MNT is still mounted; run: fusermount3 -u $MNT" >&2
    fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Both run as children of this script, each in a process group of its own
# (set -m): Ctrl-C reaches only this script, whose traps then stop them in
# order, zero-fuse by unmounting and the worker after it. The script waits
# with `wait`, which a trapped signal interrupts.
set -m
"$VENV/bin/zero-worker" "$CACHE" </dev/null &
worker_pid=$!
"$VENV/bin/zero-fuse" "$MNT" "$CACHE" </dev/null &
fuse_pid=$!
set +m

deadline=$((SECONDS + MOUNT_WAIT_S))
until is_mounted; do
    for pid in "$fuse_pid" "$worker_pid"; do
        if ! alive "$pid"; then
            wait "$pid"
            status=$?
            name=$([[ $pid == "$fuse_pid" ]] && echo zero-fuse || echo zero-worker)
            echo "run.sh: $name exited (status $status) before the mount came up" >&2
            exit $((status ? status : 1))
        fi
    done
    if ((SECONDS >= deadline)); then
        echo "run.sh: $MNT is not mounted after ${MOUNT_WAIT_S}s; stopping" >&2
        exit 1
    fi
    sleep 0.1
done

echo "zero is mounted at $MNT (cache $CACHE); press Ctrl-C to unmount and stop."

# Whichever stops first ends the session: without the worker nothing is
# uploaded, evicted or faulted in, so zero-fuse is not left running alone.
wait -n -p finished "$fuse_pid" "$worker_pid"
status=$?
if [[ ${finished:-} == "$fuse_pid" ]]; then
    fuse_pid=""
    echo "run.sh: zero-fuse exited (status $status)" >&2
else
    worker_pid=""
    echo "run.sh: zero-worker exited (status $status); unmounting" >&2
fi
exit "$status"
