"""The key ring for secrets at rest: parsing, sealing, rotation and the development key file."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from app.credentials.crypto import DEV_KEY_FILE, KeyRing, KeyRingError, load_keyring, new_key_entry
from app.settings import Settings

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
B64_A = base64.b64encode(KEY_A).decode()
B64_B = base64.b64encode(KEY_B).decode()
AAD = b"acme"


def entry(kid: str, key: bytes) -> str:
    return f"{kid}:{base64.b64encode(key).decode()}"


# ---------------------------------------------------------------------------
# Parsing CHARGEGATE_ENCRYPTION_KEYS.


def test_parse_reads_every_entry_and_the_first_is_primary() -> None:
    ring = KeyRing.parse(f"{entry('k2', KEY_B)}, {entry('k1', KEY_A)}")
    assert ring.primary_id == "k2"
    assert ring.key_ids == ["k2", "k1"]


def test_parse_accepts_a_generated_entry() -> None:
    ring = KeyRing.parse(new_key_entry("dev1"))
    assert ring.key_ids == ["dev1"]


@pytest.mark.parametrize(
    ("value", "material"),
    [
        pytest.param("k1:" + B64_A.replace("A", "*", 1), B64_A[:20], id="not-base64"),
        pytest.param("k1:" + B64_A.rstrip("="), B64_A[:20], id="missing-padding"),
        pytest.param(
            "k1:" + base64.urlsafe_b64encode(b"\xfb" * 32).decode(), "-_-_", id="urlsafe-alphabet"
        ),
        pytest.param(
            "k1:" + base64.b64encode(KEY_A[:16]).decode(),
            base64.b64encode(KEY_A[:16]).decode(),
            id="16-bytes",
        ),
        pytest.param(
            "k1:" + base64.b64encode(KEY_A + b"x").decode(),
            base64.b64encode(KEY_A + b"x").decode()[:20],
            id="33-bytes",
        ),
        pytest.param(B64_A, B64_A[:20], id="no-colon"),
        pytest.param(f"{entry('k1', KEY_A)},{entry('k1', KEY_B)}", B64_B[:20], id="duplicate-kid"),
        pytest.param("bad kid!:" + B64_A, B64_A[:20], id="bad-kid"),
        pytest.param("", None, id="empty"),
        pytest.param(" , ", None, id="only-separators"),
    ],
)
def test_parse_rejects_bad_entries_without_echoing_key_material(
    value: str, material: str | None
) -> None:
    with pytest.raises(KeyRingError) as caught:
        KeyRing.parse(value)
    message = str(caught.value)
    assert message
    if material is not None:
        assert material not in message
    # Never chained to the base64 error (whose message could quote the input).
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


def test_parse_error_names_the_entry_and_kid() -> None:
    with pytest.raises(KeyRingError, match=r"entry 2 \(k2\) must decode to 32 bytes"):
        KeyRing.parse(f"{entry('k1', KEY_A)},{entry('k2', KEY_A[:31])}")


def test_parse_error_names_a_duplicate_kid() -> None:
    with pytest.raises(KeyRingError, match="key id k1 appears twice"):
        KeyRing.parse(f"{entry('k1', KEY_A)},{entry('k1', KEY_B)}")


# ---------------------------------------------------------------------------
# Sealing and opening.


def test_seal_then_open_round_trips() -> None:
    ring = KeyRing([("k1", KEY_A)])
    kid, sealed = ring.seal(b"the secret", AAD)
    assert kid == "k1"
    assert b"the secret" not in sealed
    assert ring.open(kid, sealed, AAD) == b"the secret"


def test_seal_uses_a_fresh_nonce_each_time() -> None:
    ring = KeyRing([("k1", KEY_A)])
    first = ring.seal(b"same", AAD)[1]
    second = ring.seal(b"same", AAD)[1]
    assert first != second
    assert first[:12] != second[:12]


def test_open_with_other_associated_data_fails() -> None:
    ring = KeyRing([("k1", KEY_A)])
    kid, sealed = ring.seal(b"the secret", b"acme")
    with pytest.raises(KeyRingError, match="does not authenticate") as caught:
        ring.open(kid, sealed, b"other")
    assert "the secret" not in str(caught.value)


def test_open_of_tampered_ciphertext_fails() -> None:
    ring = KeyRing([("k1", KEY_A)])
    kid, sealed = ring.seal(b"the secret", AAD)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(KeyRingError):
        ring.open(kid, tampered, AAD)


def test_open_with_the_wrong_key_under_the_same_kid_fails() -> None:
    kid, sealed = KeyRing([("k1", KEY_A)]).seal(b"the secret", AAD)
    with pytest.raises(KeyRingError, match="does not authenticate"):
        KeyRing([("k1", KEY_B)]).open(kid, sealed, AAD)


def test_open_under_an_unknown_kid_fails() -> None:
    kid, sealed = KeyRing([("k1", KEY_A)]).seal(b"the secret", AAD)
    with pytest.raises(KeyRingError, match="key k1 is not in CHARGEGATE_ENCRYPTION_KEYS"):
        KeyRing([("k2", KEY_B)]).open(kid, sealed, AAD)


def test_rotation_new_first_key_still_opens_old_ciphertexts_and_seals_with_the_new_one() -> None:
    old_ring = KeyRing.parse(entry("k1", KEY_A))
    old_kid, old_sealed = old_ring.seal(b"old secret", AAD)

    rotated = KeyRing.parse(f"{entry('k2', KEY_B)},{entry('k1', KEY_A)}")
    assert rotated.open(old_kid, old_sealed, AAD) == b"old secret"

    new_kid, new_sealed = rotated.seal(b"new secret", AAD)
    assert new_kid == "k2"
    # Only the new key opens what the rotated ring sealed.
    assert KeyRing.parse(entry("k2", KEY_B)).open(new_kid, new_sealed, AAD) == b"new secret"
    with pytest.raises(KeyRingError):
        old_ring.open(new_kid, new_sealed, AAD)


def test_empty_ring_is_refused() -> None:
    with pytest.raises(KeyRingError, match="empty"):
        KeyRing([])


# ---------------------------------------------------------------------------
# load_keyring: explicit keys, refusal without them, the development key file.


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(var_dir=tmp_path / "var", **values)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHARGEGATE_ENCRYPTION_KEYS", "CHARGEGATE_ALLOW_INSECURE_DEFAULTS"):
        monkeypatch.delenv(name, raising=False)


def test_load_keyring_uses_configured_keys(tmp_path: Path) -> None:
    ring = load_keyring(
        _settings(
            tmp_path,
            database_url="postgresql://db/x",
            encryption_keys=f"{entry('k2', KEY_B)},{entry('k1', KEY_A)}",
        )
    )
    assert ring.key_ids == ["k2", "k1"]
    assert not (tmp_path / "var").exists()


def test_load_keyring_refuses_postgres_without_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="CHARGEGATE_ENCRYPTION_KEYS is not set"):
        load_keyring(_settings(tmp_path, database_url="postgresql://db/x"))
    assert not (tmp_path / "var" / DEV_KEY_FILE).exists()


def test_load_keyring_allows_postgres_without_keys_with_insecure_defaults(tmp_path: Path) -> None:
    ring = load_keyring(
        _settings(tmp_path, database_url="postgresql://db/x", allow_insecure_defaults=True)
    )
    assert len(ring.key_ids) == 1


def test_load_keyring_rejects_bad_configured_keys_without_echoing_them(tmp_path: Path) -> None:
    secret = base64.b64encode(KEY_A[:20]).decode()
    with pytest.raises(KeyRingError) as caught:
        load_keyring(_settings(tmp_path, encryption_keys="k1:" + secret))
    assert secret not in str(caught.value)


def test_load_keyring_generates_a_private_dev_key_file_for_sqlite(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.is_embedded_database
    ring = load_keyring(settings)

    path = tmp_path / "var" / DEV_KEY_FILE
    assert path.is_file()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text().strip()
    assert text.startswith(f"{ring.primary_id}:")
    assert len(base64.b64decode(text.split(":", 1)[1], validate=True)) == 32


def test_load_keyring_reuses_the_dev_key_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path, database_url="sqlite:///" + str(tmp_path / "x.db"))
    first = load_keyring(settings)
    kid, sealed = first.seal(b"kept", AAD)
    second = load_keyring(settings)
    assert second.open(kid, sealed, AAD) == b"kept"


def test_load_keyring_reads_an_existing_dev_key_file(tmp_path: Path) -> None:
    path = tmp_path / "var" / DEV_KEY_FILE
    path.parent.mkdir(parents=True)
    path.write_text(entry("mine", KEY_A) + "\n")
    ring = load_keyring(_settings(tmp_path))
    assert ring.key_ids == ["mine"]


def test_load_keyring_loses_a_creation_race_gracefully(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another worker process created the file between our existence check and our write.
    path = tmp_path / "var" / DEV_KEY_FILE
    path.parent.mkdir(parents=True)
    path.write_text(entry("winner", KEY_A) + "\n")
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: False if self == path else real_exists(self))

    ring = load_keyring(_settings(tmp_path))

    assert ring.key_ids == ["winner"]
    assert sorted(p.name for p in path.parent.iterdir()) == [DEV_KEY_FILE]
