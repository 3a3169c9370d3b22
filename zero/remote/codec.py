"""What an object looks like on a remote: named by a keyed hash, compressed, then sealed.

    blob = MAGIC (4) | flags (1) | nonce (12) | AES-256-GCM(payload) with its 16-byte tag

The header (magic, flags, nonce) is authenticated as associated data, so
changing any byte of a blob, or cutting it short, fails ``open`` instead of
yielding garbage. The payload is the zstd-compressed plaintext, or the
plaintext itself when compression does not make it smaller (flag bit 0 says
which). A chunk object is sealed with its object key as associated data too
(flag bit 1, decision 69): the tag then proves the blob is the object asked
for, so a fault-in need not hash 4 MiB again to know it. Blobs without bit 1
(metadata segments, and chunk objects of earlier versions) are checked by
hashing, as before. Golden vectors in tests/unit/test_codec.py pin this format.
"""

from __future__ import annotations

import hashlib
import os

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from zero.errors import ObjectCorrupt

MAGIC = b"ZRO1"
FLAG_ZSTD = 0x01
FLAG_KEY_BOUND = 0x02  # the object key is authenticated with the header
KNOWN_FLAGS = FLAG_ZSTD | FLAG_KEY_BOUND
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + 1 + NONCE_BYTES
KEY_BYTES = 32
OBJECT_KEY_DIGEST_BYTES = 32
ZSTD_LEVEL = 3
SAMPLE_BYTES = 64 * 1024     # tried first, from the start and the middle of a big plaintext
INCOMPRESSIBLE_RATIO = 0.97  # a sample that keeps more than this of its size: store raw


class Codec:
    """Turns chunk plaintext into sealed blobs and back. Holds no per-call
    state, so threads may share one."""

    def __init__(self, hash_key: bytes, encryption_key: bytes):
        if len(hash_key) != KEY_BYTES or len(encryption_key) != KEY_BYTES:
            raise ValueError(f"Codec needs a {KEY_BYTES}-byte hash key and a {KEY_BYTES}-byte encryption key")
        self._hash_key = bytes(hash_key)
        self._aead = AESGCM(bytes(encryption_key))

    def object_key(self, plaintext: bytes) -> str:
        """The content address. Keyed, so a remote's owner cannot test whether
        it holds a known file by hashing that file."""
        return hashlib.blake2b(plaintext, key=self._hash_key, digest_size=OBJECT_KEY_DIGEST_BYTES).hexdigest()

    def seal(self, plaintext: bytes, nonce: bytes | None = None, object_key: str | None = None) -> bytes:
        """The blob to upload; a chunk's blob is bound to its ``object_key``.
        ``nonce`` is for golden-vector tests only: reusing a nonce under one key
        breaks GCM, so production code leaves it random."""
        if nonce is None:
            nonce = os.urandom(NONCE_BYTES)
        elif len(nonce) != NONCE_BYTES:
            raise ValueError(f"a nonce is {NONCE_BYTES} bytes, got {len(nonce)}")
        compressed = _compress(plaintext)
        if compressed is not None and len(compressed) < len(plaintext):
            flags, payload = FLAG_ZSTD, compressed
        else:
            flags, payload = 0, plaintext
        if object_key is not None:
            flags |= FLAG_KEY_BOUND
        header = MAGIC + bytes([flags]) + nonce
        return header + self._aead.encrypt(nonce, payload, _associated(header, flags, object_key))

    def open(self, blob: bytes, expected_key: str | None = None) -> bytes:
        """The plaintext of a sealed blob; ObjectCorrupt if it is not exactly what
        ``seal`` produced with this key, or (with ``expected_key``) if it is
        another object than the one asked for."""
        if len(blob) < len(MAGIC) or blob[:len(MAGIC)] != MAGIC:
            raise ObjectCorrupt(f"object{_naming(expected_key)} does not start with {MAGIC!r}: "
                                "not a zero object, or damaged at its start")
        if len(blob) < HEADER_BYTES + TAG_BYTES:
            raise ObjectCorrupt(f"object{_naming(expected_key)} is truncated: {len(blob)} bytes, "
                                f"a sealed object has at least {HEADER_BYTES + TAG_BYTES}")
        header = bytes(blob[:HEADER_BYTES])
        flags = header[len(MAGIC)]
        nonce = header[len(MAGIC) + 1:]
        if flags & FLAG_KEY_BOUND and expected_key is None:
            raise ObjectCorrupt("a chunk object can only be opened with its object key")
        try:
            # A view, not a slice: slicing copied the whole object (0.5 ms for 4 MiB).
            payload = self._aead.decrypt(nonce, memoryview(blob)[HEADER_BYTES:],
                                         _associated(header, flags, expected_key))
        except InvalidTag:
            raise ObjectCorrupt(f"object{_naming(expected_key)} failed authentication: it was changed or "
                                "truncated after upload, or sealed with another key") from None
        # Authenticated flags with unknown bits come from a newer zero, not from damage.
        if flags & ~KNOWN_FLAGS:
            raise ObjectCorrupt(f"object{_naming(expected_key)} uses format flags {flags:#04x} that this "
                                "version of zero does not know; upgrade zero")
        if flags & FLAG_ZSTD:
            try:
                plaintext = zstandard.ZstdDecompressor().decompress(payload)
            except zstandard.ZstdError as error:
                raise ObjectCorrupt(f"object{_naming(expected_key)} authenticated but does not "
                                    f"decompress ({error}); it was sealed by a faulty writer") from None
        else:
            plaintext = payload
        # A key-bound blob authenticated with expected_key: it is that object.
        if expected_key is not None and not flags & FLAG_KEY_BOUND and self.object_key(plaintext) != expected_key:
            raise ObjectCorrupt(f"object {expected_key} holds the content of another object; "
                                "it was stored under the wrong key")
        return plaintext


def _compress(plaintext: bytes) -> bytes | None:
    """zstd of the plaintext, or None when samples of it show it will not shrink:
    photos, films and archives are most of what people store, and compressing a
    4 MiB chunk of them only to throw the result away cost a millisecond each."""
    if len(plaintext) >= 4 * SAMPLE_BYTES:
        middle = len(plaintext) // 2
        samples = (plaintext[:SAMPLE_BYTES], plaintext[middle:middle + SAMPLE_BYTES])
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        if all(len(compressor.compress(sample)) > SAMPLE_BYTES * INCOMPRESSIBLE_RATIO for sample in samples):
            return None
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(plaintext)


def _associated(header: bytes, flags: int, object_key: str | None) -> bytes:
    """What GCM authenticates besides the ciphertext: the header, and the object key if bound."""
    if flags & FLAG_KEY_BOUND:
        return header + object_key.encode("ascii")
    return header


def _naming(key: str | None) -> str:
    return f" {key}" if key else ""
