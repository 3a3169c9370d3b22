"""The data keys, sealed so that a remote can hold them without being able to use them.

    envelope = canonical JSON {"ciphertext", "fs_id", "kdf": {...}, "nonce", "salt", "sealed_with", "version"}
    ciphertext = AES-256-GCM(key = Argon2id(secret, salt, kdf), nonce,
                             plaintext = canonical JSON {"encryption_key", "hash_key"},
                             associated data = the canonical JSON of every other field)

The secret is the user's passphrase or a random recovery key; the envelope
says which (``sealed_with``) so a restore can ask for the right one. Every
field but the ciphertext is authenticated, so weakening the KDF parameters
or moving the envelope to another filesystem fails to open. The envelope must
be byte for byte the canonical encoding of what it parses to: any other
spelling of the same values is refused as damaged, so no byte can change
without ``open_keys`` noticing. Golden vectors in tests/unit/test_keys.py pin
the format.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from zero.errors import ObjectCorrupt, WrongSecret

VERSION = 1
KDF_NAME = "argon2id"
SALT_BYTES = 16
NONCE_BYTES = 12
KEY_BYTES = 32
PASSPHRASE = "passphrase"
RECOVERY_KEY = "recovery-key"
SEALED_WITH = (PASSPHRASE, RECOVERY_KEY)
RECOVERY_KEY_BYTES = 20          # 160 random bits: 32 base32 characters
RECOVERY_GROUP_CHARS = 4
_FIELDS = {"ciphertext", "fs_id", "kdf", "nonce", "salt", "sealed_with", "version"}
_KDF_FIELDS = {"memory_kib", "name", "parallelism", "time_cost"}


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost. The default is RFC 9106's second recommendation (64 MiB,
    3 passes, 4 lanes): about a quarter second here, once per restore or key
    change, never on the data path. Tests pass cheaper parameters."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4

    def check(self) -> None:
        # Bounds on what an envelope may ask for: a hostile remote must not be
        # able to make a restore allocate without limit.
        if not (1 <= self.time_cost <= 64 and 8 * self.parallelism <= self.memory_kib <= 4 * 1024 * 1024
                and 1 <= self.parallelism <= 64):
            raise ObjectCorrupt(f"the sealed keys ask for KDF parameters out of bounds ({self}); "
                                "they were not written by zero")

    def as_json(self) -> dict:
        return {"memory_kib": self.memory_kib, "name": KDF_NAME, "parallelism": self.parallelism,
                "time_cost": self.time_cost}


@dataclass(frozen=True)
class DataKeys:
    hash_key: bytes
    encryption_key: bytes

    def __post_init__(self):
        if len(self.hash_key) != KEY_BYTES or len(self.encryption_key) != KEY_BYTES:
            raise ValueError(f"data keys are {KEY_BYTES} bytes each")


def _canonical(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text, field: str, size: int | None = None) -> bytes:
    try:
        data = base64.b64decode(text, validate=True) if isinstance(text, str) else None
    except binascii.Error:
        data = None
    if data is None or _b64(data) != text or (size is not None and len(data) != size):
        raise ObjectCorrupt(f"the sealed keys' {field} is damaged")
    return data


def derive(secret: str, salt: bytes, params: KdfParams) -> bytes:
    if not secret:
        raise WrongSecret("an empty passphrase cannot seal or open the keys; choose a real one")
    return hash_secret_raw(secret.encode("utf-8"), salt, time_cost=params.time_cost, memory_cost=params.memory_kib,
                           parallelism=params.parallelism, hash_len=KEY_BYTES, type=Type.ID)


def seal_keys(keys: DataKeys, secret: str, sealed_with: str, fs_id: str, params: KdfParams = KdfParams(),
              salt: bytes | None = None, nonce: bytes | None = None) -> bytes:
    """The envelope to store at ``layout.sealed_key_key(fs_id, "data")``. ``salt``
    and ``nonce`` are for golden vectors only; production leaves them random."""
    if sealed_with not in SEALED_WITH:
        raise ValueError(f"sealed_with must be one of {SEALED_WITH}")
    params.check()
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    header = {"fs_id": fs_id, "kdf": params.as_json(), "nonce": _b64(nonce), "salt": _b64(salt),
              "sealed_with": sealed_with, "version": VERSION}
    plaintext = _canonical({"encryption_key": keys.encryption_key.hex(), "hash_key": keys.hash_key.hex()})
    ciphertext = AESGCM(derive(secret, salt, params)).encrypt(nonce, plaintext, _canonical(header))
    return _canonical({**header, "ciphertext": _b64(ciphertext)})


@dataclass(frozen=True)
class Envelope:
    fs_id: str
    sealed_with: str
    params: KdfParams
    salt: bytes
    nonce: bytes
    ciphertext: bytes
    header: dict


def parse_envelope(blob: bytes) -> Envelope:
    """The envelope's fields, without opening it; ObjectCorrupt if it is not
    exactly a canonical envelope of a format this zero knows."""
    try:
        value = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ObjectCorrupt("the sealed keys are not valid JSON: damaged, or not written by zero") from None
    if not isinstance(value, dict) or set(value) != _FIELDS or _canonical(value) != bytes(blob):
        raise ObjectCorrupt("the sealed keys are damaged: their fields or their encoding were changed")
    if value["version"] != VERSION:
        raise ObjectCorrupt(f"the sealed keys use format {value['version']!r}; this zero reads format "
                            f"{VERSION}: upgrade zero")
    kdf = value["kdf"]
    if not isinstance(kdf, dict) or set(kdf) != _KDF_FIELDS or kdf["name"] != KDF_NAME \
            or not all(isinstance(kdf[k], int) and not isinstance(kdf[k], bool)
                       for k in ("memory_kib", "parallelism", "time_cost")):
        raise ObjectCorrupt("the sealed keys name a key derivation this zero does not know")
    params = KdfParams(time_cost=kdf["time_cost"], memory_kib=kdf["memory_kib"], parallelism=kdf["parallelism"])
    params.check()
    if value["sealed_with"] not in SEALED_WITH or not isinstance(value["fs_id"], str):
        raise ObjectCorrupt("the sealed keys are damaged: unknown secret kind or filesystem id")
    header = {k: v for k, v in value.items() if k != "ciphertext"}
    return Envelope(fs_id=value["fs_id"], sealed_with=value["sealed_with"], params=params,
                    salt=_unb64(value["salt"], "salt", SALT_BYTES), nonce=_unb64(value["nonce"], "nonce", NONCE_BYTES),
                    ciphertext=_unb64(value["ciphertext"], "ciphertext"), header=header)


def open_keys(blob: bytes, secret: str, fs_id: str | None = None) -> DataKeys:
    """The data keys in an envelope. ObjectCorrupt when the envelope is damaged
    or belongs to another filesystem; WrongSecret when ``secret`` does not open
    it (GCM cannot tell a wrong secret from a changed ciphertext)."""
    envelope = parse_envelope(blob)
    if fs_id is not None and envelope.fs_id != fs_id:
        raise ObjectCorrupt(f"the sealed keys belong to filesystem {envelope.fs_id}, not {fs_id}")
    try:
        plaintext = AESGCM(derive(secret, envelope.salt, envelope.params)).decrypt(
            envelope.nonce, envelope.ciphertext, _canonical(envelope.header))
    except InvalidTag:
        what = "passphrase" if envelope.sealed_with == PASSPHRASE else "recovery key"
        raise WrongSecret(f"that {what} does not open the keys of filesystem {envelope.fs_id} "
                          "(a wrong secret, or the stored keys were changed)") from None
    value = json.loads(plaintext)
    return DataKeys(hash_key=bytes.fromhex(value["hash_key"]), encryption_key=bytes.fromhex(value["encryption_key"]))


# -- recovery keys ------------------------------------------------------------------------------

def new_recovery_key() -> str:
    """A random recovery key in its canonical form: base32, without padding."""
    return base64.b32encode(secrets.token_bytes(RECOVERY_KEY_BYTES)).decode().rstrip("=")


def for_paper(recovery_key: str) -> str:
    """Groups of four, to copy by hand: ABCD-EFGH-..."""
    key = normalize_recovery_key(recovery_key)
    return "-".join(key[i:i + RECOVERY_GROUP_CHARS] for i in range(0, len(key), RECOVERY_GROUP_CHARS))


def normalize_recovery_key(text: str) -> str:
    """What the user typed (any case, with dashes or spaces) in canonical form."""
    key = "".join(text.split()).replace("-", "").upper()
    expected = len(new_recovery_key())
    if len(key) != expected or any(ch not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for ch in key):
        raise WrongSecret(f"that is not a zero recovery key: expected {expected} letters and digits 2-7, "
                          "in groups of four (as `zero key export` prints it)")
    return key
