"""The key space of one filesystem in a remote: every key zero reads or writes is built here.

    <fs_id>/zero.json             marker: fs id, remote id, format version
    <fs_id>/keys/<name>           data keys, sealed under the passphrase
    <fs_id>/lock                  the one writer: host, start, heartbeat
    <fs_id>/meta/snap-<seq>       full metadata snapshots (sealed)
    <fs_id>/meta/journal-<seq>    metadata segments since the last snapshot (sealed)
    <fs_id>/objects/ab/abcdef…    chunk objects, named by their content digest

Everything lives under the filesystem's id, so several filesystems can share
one bucket or folder and the collector of one never touches another's keys.
Sequence numbers are zero-padded to a fixed width, so a remote's listing,
which is sorted by key, is also sorted by sequence.

Parsing is strict: a key of another shape, another filesystem, or a
digest in the wrong shard folder is not ours (``None``), so a sweep over a
listing leaves it alone instead of deleting it.
"""

from __future__ import annotations

import re

from zero.remote.base import check_key

MARKER_NAME = "zero.json"
LOCK_NAME = "lock"
OBJECTS_FOLDER = "objects"
KEYS_FOLDER = "keys"
META_FOLDER = "meta"
SNAPSHOT_STEM = "snap-"
JOURNAL_STEM = "journal-"
SEQUENCE_DIGITS = 20  # 2**64 fits in 20 decimal digits
SHARD_CHARS = 2

_DIGEST_RE = re.compile(r"^[0-9a-f]{%d,128}$" % (SHARD_CHARS + 1))
_SEQUENCE_RE = re.compile(r"^[0-9]{%d}$" % SEQUENCE_DIGITS)
_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def check_fs_id(fs_id: str) -> None:
    """A filesystem id is one key component of safe characters (a uuid hex, in practice)."""
    if not isinstance(fs_id, str) or not _NAME_RE.match(fs_id):
        raise ValueError(f"bad filesystem id {fs_id!r}: expected letters, digits, '-', '_' or '.', "
                         "not starting with '.'")


def _check_digest(digest: str) -> None:
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise ValueError(f"bad object digest {digest!r}: expected lowercase hex, "
                         f"{SHARD_CHARS + 1} to 128 characters")


def _check_sequence(sequence: int) -> str:
    if isinstance(sequence, bool) or not isinstance(sequence, int) or not 0 <= sequence < 10**SEQUENCE_DIGITS:
        raise ValueError(f"bad sequence number {sequence!r}: expected a whole number from 0 "
                         f"below 10**{SEQUENCE_DIGITS}")
    return f"{sequence:0{SEQUENCE_DIGITS}d}"


# -- objects -------------------------------------------------------------------------------

def objects_prefix(fs_id: str) -> str:
    """What to list to find every chunk object of a filesystem."""
    check_fs_id(fs_id)
    return f"{fs_id}/{OBJECTS_FOLDER}/"


def object_key(fs_id: str, digest: str) -> str:
    """Where the object with content digest ``digest`` lives. The first two
    characters make a shard folder, so no folder of a local remote grows huge."""
    _check_digest(digest)
    return f"{objects_prefix(fs_id)}{digest[:SHARD_CHARS]}/{digest}"


def parse_object_key(fs_id: str, key: str) -> str | None:
    """The digest named by a remote key, or None when the key is not one of
    this filesystem's objects."""
    prefix = objects_prefix(fs_id)
    if not isinstance(key, str) or not key.startswith(prefix):
        return None
    shard, slash, digest = key[len(prefix):].partition("/")
    if not slash or not _DIGEST_RE.match(digest) or shard != digest[:SHARD_CHARS]:
        return None
    return digest


# -- the filesystem's own files ------------------------------------------------------------

def marker_key(fs_id: str) -> str:
    check_fs_id(fs_id)
    return f"{fs_id}/{MARKER_NAME}"


def lock_key(fs_id: str) -> str:
    check_fs_id(fs_id)
    return f"{fs_id}/{LOCK_NAME}"


def keys_prefix(fs_id: str) -> str:
    check_fs_id(fs_id)
    return f"{fs_id}/{KEYS_FOLDER}/"


def sealed_key_key(fs_id: str, name: str) -> str:
    """Where a sealed data key called ``name`` (e.g. "data", "recovery") lives."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"bad key name {name!r}: expected letters, digits, '-', '_' or '.'")
    key = f"{keys_prefix(fs_id)}{name}"
    check_key(key)
    return key


# -- metadata backups ------------------------------------------------------------------------

def meta_prefix(fs_id: str) -> str:
    check_fs_id(fs_id)
    return f"{fs_id}/{META_FOLDER}/"


def snapshot_key(fs_id: str, sequence: int) -> str:
    return f"{meta_prefix(fs_id)}{SNAPSHOT_STEM}{_check_sequence(sequence)}"


def journal_key(fs_id: str, sequence: int) -> str:
    return f"{meta_prefix(fs_id)}{JOURNAL_STEM}{_check_sequence(sequence)}"


def snapshots_prefix(fs_id: str) -> str:
    return f"{meta_prefix(fs_id)}{SNAPSHOT_STEM}"


def journals_prefix(fs_id: str) -> str:
    return f"{meta_prefix(fs_id)}{JOURNAL_STEM}"


def parse_snapshot_key(fs_id: str, key: str) -> int | None:
    """The sequence number of a snapshot key, or None when it is not one of ours."""
    return _parse_sequence(snapshots_prefix(fs_id), key)


def parse_journal_key(fs_id: str, key: str) -> int | None:
    """The sequence number of a journal segment key, or None when it is not one of ours."""
    return _parse_sequence(journals_prefix(fs_id), key)


def _parse_sequence(prefix: str, key: str) -> int | None:
    if not isinstance(key, str) or not key.startswith(prefix):
        return None
    tail = key[len(prefix):]
    return int(tail) if _SEQUENCE_RE.match(tail) else None
