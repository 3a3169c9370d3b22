"""The object format: round trips, golden vectors, and every kind of damage."""

import os
import random

import pytest

from zero.errors import ObjectCorrupt
from zero.remote import codec as codec_module
from zero.remote.codec import FLAG_KEY_BOUND, FLAG_ZSTD, HEADER_BYTES, MAGIC, Codec

HASH_KEY = bytes(range(32))
ENCRYPTION_KEY = bytes(range(32, 64))
NONCE = bytes(range(100, 112))

COMPRESSIBLE = b"zero golden vector\n" * 8
# Sealed once with the keys and nonce above and pasted here. If one of these
# changes, the on-remote format changed and objects already uploaded would
# no longer open: bump MAGIC and keep reading the old format instead.
GOLDEN_COMPRESSED = bytes.fromhex(
    "5a524f31016465666768696a6b6c6d6e6f9dd8a12eff2921cddccca5bdf878be0aa6ee811b50ea1828a034010d7d4827"
    "2628db250ffda816e76acd0e7606a7bf93a8f46e")
GOLDEN_RAW_ABC = bytes.fromhex(
    "5a524f31006465666768696a6b6c6d6e6fd40fede616741a5743500e6f0dd268b6e3106a")
GOLDEN_KEY_ABC = "d63a32d3e44738d7907f964316c241adaba0abfeabc32349677578a15a203f7f"
GOLDEN_KEY_COMPRESSIBLE = "02ab7c8db8f2701edef22b7083e6ebb9309875314289a639ff71a7796b4d9324"
# "abc" sealed as a chunk object bound to GOLDEN_KEY_ABC (flag bit 1).
GOLDEN_KEY_BOUND_ABC = bytes.fromhex(
    "5a524f31026465666768696a6b6c6d6e6fd40fed9cd99f00d392570467585578e12ece22")


@pytest.fixture
def codec():
    return Codec(HASH_KEY, ENCRYPTION_KEY)


def incompressible(size):
    return random.Random(size).randbytes(size)


@pytest.mark.parametrize("plaintext", [b"", b"x", COMPRESSIBLE, b"\0" * (4 * 1024 * 1024), incompressible(70000)])
def test_round_trip(codec, plaintext):
    blob = codec.seal(plaintext)
    assert codec.open(blob) == plaintext
    assert codec.open(blob, expected_key=codec.object_key(plaintext)) == plaintext


def test_object_key_golden(codec):
    assert codec.object_key(b"abc") == GOLDEN_KEY_ABC
    assert codec.object_key(COMPRESSIBLE) == GOLDEN_KEY_COMPRESSIBLE


def test_object_key_depends_on_hash_key(codec):
    other = Codec(bytes(32), ENCRYPTION_KEY)
    assert other.object_key(b"abc") != codec.object_key(b"abc")


def test_seal_golden_raw(codec):
    # Stored raw, so nothing but zero's own format decides these bytes.
    assert codec.seal(b"abc", nonce=NONCE) == GOLDEN_RAW_ABC


def test_seal_golden_compressed(codec):
    # Another zstd release may compress differently, which is no format change;
    # what must hold is that the pinned blob opens, and the header layout.
    assert codec.open(GOLDEN_COMPRESSED, expected_key=GOLDEN_KEY_COMPRESSIBLE) == COMPRESSIBLE
    sealed = codec.seal(COMPRESSIBLE, nonce=NONCE)
    assert sealed[:HEADER_BYTES] == GOLDEN_COMPRESSED[:HEADER_BYTES] == MAGIC + bytes([FLAG_ZSTD]) + NONCE
    assert codec.open(sealed) == COMPRESSIBLE


def test_open_golden_raw(codec):
    assert codec.open(GOLDEN_RAW_ABC, expected_key=GOLDEN_KEY_ABC) == b"abc"


def test_seal_uses_a_fresh_nonce(codec):
    first, second = codec.seal(b"same"), codec.seal(b"same")
    assert first != second
    assert first[len(MAGIC) + 1:HEADER_BYTES] != second[len(MAGIC) + 1:HEADER_BYTES]


def test_compressible_data_is_compressed(codec):
    plaintext = b"\0" * 65536
    blob = codec.seal(plaintext)
    assert blob[len(MAGIC)] == FLAG_ZSTD
    assert len(blob) < 1000


def test_incompressible_data_is_stored_raw(codec):
    plaintext = incompressible(4096)
    blob = codec.seal(plaintext)
    assert blob[len(MAGIC)] == 0
    assert len(blob) == HEADER_BYTES + len(plaintext) + 16
    assert codec.open(blob) == plaintext


@pytest.mark.parametrize("plaintext", [b"abc", COMPRESSIBLE], ids=["raw", "compressed"])
def test_every_flipped_byte_is_detected(codec, plaintext):
    blob = codec.seal(plaintext, nonce=NONCE)
    for position in range(len(blob)):
        for mask in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[position] ^= mask
            with pytest.raises(ObjectCorrupt):
                codec.open(bytes(tampered))


@pytest.mark.parametrize("plaintext", [b"abc", COMPRESSIBLE], ids=["raw", "compressed"])
def test_every_truncation_is_detected(codec, plaintext):
    blob = codec.seal(plaintext, nonce=NONCE)
    for length in range(len(blob)):
        with pytest.raises(ObjectCorrupt):
            codec.open(blob[:length])


def test_appended_bytes_are_detected(codec):
    with pytest.raises(ObjectCorrupt):
        codec.open(GOLDEN_RAW_ABC + b"\0")


def test_wrong_encryption_key_is_detected():
    blob = Codec(HASH_KEY, ENCRYPTION_KEY).seal(b"secret")
    with pytest.raises(ObjectCorrupt, match="authentication"):
        Codec(HASH_KEY, bytes(32)).open(blob)


def test_bad_magic_says_so(codec):
    with pytest.raises(ObjectCorrupt, match="does not start with"):
        codec.open(b"PK\x03\x04" + GOLDEN_RAW_ABC[4:])


def test_expected_key_mismatch(codec):
    blob = codec.seal(b"one object")
    with pytest.raises(ObjectCorrupt, match="another object"):
        codec.open(blob, expected_key=codec.object_key(b"another object"))


def test_keys_must_be_32_bytes():
    with pytest.raises(ValueError):
        Codec(b"short", ENCRYPTION_KEY)
    with pytest.raises(ValueError):
        Codec(HASH_KEY, ENCRYPTION_KEY[:16])


def test_nonce_must_be_12_bytes(codec):
    with pytest.raises(ValueError):
        codec.seal(b"abc", nonce=os.urandom(8))


def sealed_by_hand(flags, payload):
    """A blob that authenticates but that seal() would never write."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    header = MAGIC + bytes([flags]) + NONCE
    return header + AESGCM(ENCRYPTION_KEY).encrypt(NONCE, payload, header)


def test_unknown_flags_ask_for_an_upgrade(codec):
    with pytest.raises(ObjectCorrupt, match="upgrade zero"):
        codec.open(sealed_by_hand(0x80, b"abc"))


def test_authenticated_but_undecompressible_payload(codec):
    with pytest.raises(ObjectCorrupt, match="does not decompress"):
        codec.open(sealed_by_hand(FLAG_ZSTD, b"not a zstd frame"))


# --- chunk objects bound to their object key (flag bit 1, decision 69) ---------------------------

def test_a_key_bound_object_opens_with_its_key_without_hashing_it_again(codec, monkeypatch):
    key = codec.object_key(COMPRESSIBLE)
    blob = codec.seal(COMPRESSIBLE, object_key=key)
    assert blob[len(MAGIC)] & FLAG_KEY_BOUND
    monkeypatch.setattr(codec_module.hashlib, "blake2b", None)  # would fail if called
    assert codec.open(blob, expected_key=key) == COMPRESSIBLE


def test_a_key_bound_object_under_another_key_fails_authentication(codec):
    blob = codec.seal(b"one object", object_key=codec.object_key(b"one object"))
    with pytest.raises(ObjectCorrupt, match="failed authentication"):
        codec.open(blob, expected_key=codec.object_key(b"another object"))


def test_a_key_bound_object_needs_its_key_to_open(codec):
    blob = codec.seal(b"abc", object_key=codec.object_key(b"abc"))
    with pytest.raises(ObjectCorrupt, match="only be opened with its object key"):
        codec.open(blob)


def test_clearing_or_setting_the_key_bound_flag_is_detected(codec):
    key = codec.object_key(b"abc")
    bound = bytearray(codec.seal(b"abc", object_key=key))
    bound[len(MAGIC)] &= ~FLAG_KEY_BOUND
    with pytest.raises(ObjectCorrupt, match="failed authentication"):
        codec.open(bytes(bound), expected_key=key)
    plain = bytearray(codec.seal(b"abc"))
    plain[len(MAGIC)] |= FLAG_KEY_BOUND
    with pytest.raises(ObjectCorrupt, match="failed authentication"):
        codec.open(bytes(plain), expected_key=key)


def test_an_object_sealed_before_key_binding_still_opens_and_is_hashed(codec):
    assert codec.open(GOLDEN_RAW_ABC, expected_key=GOLDEN_KEY_ABC) == b"abc"
    with pytest.raises(ObjectCorrupt, match="another object"):
        codec.open(GOLDEN_RAW_ABC, expected_key=GOLDEN_KEY_COMPRESSIBLE)


def test_seal_golden_key_bound(codec):
    assert codec.seal(b"abc", nonce=NONCE, object_key=GOLDEN_KEY_ABC) == GOLDEN_KEY_BOUND_ABC


def test_a_big_incompressible_plaintext_is_stored_raw_without_compressing_it_whole(codec, monkeypatch):
    plaintext = incompressible(1024 * 1024)
    compressed_sizes = []
    real = codec_module.zstandard.ZstdCompressor

    class Counting:
        def __init__(self, **kwargs):
            self.real = real(**kwargs)

        def compress(self, data):
            compressed_sizes.append(len(data))
            return self.real.compress(data)

    monkeypatch.setattr(codec_module.zstandard, "ZstdCompressor", Counting)
    blob = codec.seal(plaintext)
    assert not blob[len(MAGIC)] & FLAG_ZSTD
    assert max(compressed_sizes) == codec_module.SAMPLE_BYTES, "the whole chunk was compressed anyway"
    assert codec.open(blob) == plaintext


def test_a_big_plaintext_compressible_only_in_its_middle_is_compressed(codec):
    plaintext = incompressible(512 * 1024) + b"\0" * (1024 * 1024) + incompressible(512 * 1024 + 1)
    blob = codec.seal(plaintext)
    assert blob[len(MAGIC)] & FLAG_ZSTD and len(blob) < len(plaintext) * 0.6
    assert codec.open(blob) == plaintext
