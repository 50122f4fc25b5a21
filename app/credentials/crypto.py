"""The key ring for secrets at rest: AES-256-GCM under named keys, the first one encrypting."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.settings import Settings

log = logging.getLogger("chargegate.crypto")

_KID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NONCE_BYTES = 12
DEV_KEY_FILE = "encryption-keys"


class KeyRingError(Exception):
    """A key ring that cannot be used; the message never holds key material."""


class KeyRing:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise KeyRingError("the key ring is empty")
        self.primary_id = keys[0][0]
        self._ciphers = {kid: AESGCM(key) for kid, key in keys}

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    @classmethod
    def parse(cls, value: str) -> KeyRing:
        """`kid:base64(32 bytes)` entries, comma-separated (CHARGEGATE_ENCRYPTION_KEYS)."""
        keys: list[tuple[str, bytes]] = []
        for position, entry in enumerate(filter(None, (e.strip() for e in value.split(","))), 1):
            kid, sep, encoded = entry.partition(":")
            if not sep or not _KID.match(kid):
                raise KeyRingError(
                    f"entry {position} must look like kid:base64 (kid: A-Z a-z 0-9 _ . -)"
                )
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise KeyRingError(f"entry {position} ({kid}) is not valid base64") from None
            if len(key) != 32:
                raise KeyRingError(f"entry {position} ({kid}) must decode to 32 bytes")
            if any(kid == known for known, _ in keys):
                raise KeyRingError(f"key id {kid} appears twice")
            keys.append((kid, key))
        return cls(keys)

    def seal(self, plaintext: bytes, associated: bytes) -> tuple[str, bytes]:
        """Encrypts under the primary key; `associated` binds the result to its owner."""
        nonce = os.urandom(_NONCE_BYTES)
        return self.primary_id, nonce + self._ciphers[self.primary_id].encrypt(
            nonce, plaintext, associated
        )

    def open(self, key_id: str, sealed: bytes, associated: bytes) -> bytes:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise KeyRingError(f"key {key_id} is not in CHARGEGATE_ENCRYPTION_KEYS")
        try:
            return cipher.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated)
        except InvalidTag:
            raise KeyRingError(
                f"a secret sealed under key {key_id} does not authenticate"
            ) from None


def new_key_entry(kid: str) -> str:
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def load_keyring(settings: Settings) -> KeyRing:
    """The configured key ring; in development a generated one kept under var/."""
    if settings.encryption_keys is not None:
        return KeyRing.parse(settings.encryption_keys.get_secret_value())
    if not settings.is_embedded_database and not settings.allow_insecure_defaults:
        raise KeyRingError(
            "CHARGEGATE_ENCRYPTION_KEYS is not set. With a PostgreSQL database the key ring must "
            "be given explicitly, e.g. CHARGEGATE_ENCRYPTION_KEYS=k1:$(openssl rand -base64 32); "
            "set CHARGEGATE_ALLOW_INSECURE_DEFAULTS=true only for a throw-away development setup."
        )
    path = settings.var_dir / DEV_KEY_FILE
    if not path.exists() and _write_private(path, new_key_entry("dev1") + "\n"):
        log.warning("generated a development encryption key", extra={"path": str(path)})
    return KeyRing.parse(path.read_text())


def _write_private(path: Path, text: str) -> bool:
    """Creates `path` (mode 0600) with `text` unless it exists; False when another won.

    `serve --workers N` starts N processes that may all get here at once: the file is
    written aside and linked into place, so none sees it half-written or fails on it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(staging, path)
        except FileExistsError:
            return False
        return True
    finally:
        staging.unlink(missing_ok=True)
