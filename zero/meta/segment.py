"""A metadata segment: what one snapshot or journal object holds, before the codec seals it.

    {"format": "zero-meta", "version": 1, "kind": "snapshot"|"journal", "fs_id", "sequence",
     "taken_at", "next_ino", "settings": {"chunk_size", "created_ns"},
     "tables": {table: {"columns": [...], "rows": [[...]], "deleted": [[key...]]}}}

JSON, with bytes columns (names, xattr values, symlink targets) in base64.
A snapshot holds every backed-up row; a journal the current row, or the
deletion, of every key changed since the previous segment. Applying a
snapshot and then its journals in order rebuilds the state as it was when
the last one was read: each segment is read in one transaction, so it is
always a consistent state, never half a rename.

The codec seals it (AES-GCM), so a changed byte fails to open; the header
repeats the kind, filesystem and sequence, so a remote cannot pass one
segment off as another.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from zero.errors import ObjectCorrupt
from zero.state.changelog import BACKED_UP

FORMAT = "zero-meta"
VERSION = 1
SNAPSHOT = "snapshot"
JOURNAL = "journal"


@dataclass
class Segment:
    kind: str
    fs_id: str
    sequence: int
    taken_at: float
    next_ino: int
    settings: dict
    rows: dict[str, list[tuple]] = field(default_factory=dict)
    deleted: dict[str, list[tuple]] = field(default_factory=dict)

    def row_count(self) -> int:
        return sum(len(rows) for rows in self.rows.values()) + sum(len(keys) for keys in self.deleted.values())


def _encode_row(values, columns, blobs) -> list:
    return [base64.b64encode(value).decode() if name in blobs and value is not None else value
            for name, value in zip(columns, values)]


def _decode_row(values, columns, blobs) -> tuple:
    return tuple(base64.b64decode(value) if name in blobs and value is not None else value
                 for name, value in zip(columns, values))


def encode(segment: Segment) -> bytes:
    tables = {}
    for table, (columns, key, blobs) in BACKED_UP.items():
        tables[table] = {
            "columns": list(columns),
            "rows": [_encode_row(row, columns, blobs) for row in segment.rows.get(table, ())],
            "deleted": [_encode_row(keys, key, blobs) for keys in segment.deleted.get(table, ())],
        }
    return json.dumps({"format": FORMAT, "version": VERSION, "kind": segment.kind, "fs_id": segment.fs_id,
                       "sequence": segment.sequence, "taken_at": segment.taken_at, "next_ino": segment.next_ino,
                       "settings": segment.settings, "tables": tables}, separators=(",", ":")).encode()


def decode(plaintext: bytes, kind: str, fs_id: str, sequence: int) -> Segment:
    """The segment, checked to be the one its key names."""
    try:
        value = json.loads(plaintext)
        if value.get("format") != FORMAT:
            raise ValueError("not a metadata segment")
        if value["version"] != VERSION:
            raise ObjectCorrupt(f"metadata segment {sequence} uses format {value['version']}; "
                                f"this zero reads {VERSION}: upgrade zero")
        if (value["kind"], value["fs_id"], value["sequence"]) != (kind, fs_id, sequence):
            raise ObjectCorrupt(f"the object stored as {kind} {sequence} of filesystem {fs_id} holds "
                                f"{value['kind']} {value['sequence']} of {value['fs_id']}: it was moved")
        segment = Segment(kind=kind, fs_id=fs_id, sequence=sequence, taken_at=float(value["taken_at"]),
                          next_ino=int(value["next_ino"]), settings=dict(value["settings"]))
        for table, (columns, key, blobs) in BACKED_UP.items():
            stored = value["tables"][table]
            if list(stored["columns"]) != list(columns):
                raise ObjectCorrupt(f"metadata segment {sequence} has other columns for {table}: "
                                    "written by another version of zero")
            segment.rows[table] = [_decode_row(row, columns, blobs) for row in stored["rows"]]
            segment.deleted[table] = [_decode_row(keys, key, blobs) for keys in stored["deleted"]]
        return segment
    except ObjectCorrupt:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ObjectCorrupt(f"metadata segment {sequence} authenticated but does not parse ({error}); "
                            "it was written by a faulty zero") from None
