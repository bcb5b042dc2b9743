"""Key files: round trips, passphrases, damage of every kind, modes, and no leaked secrets."""

from __future__ import annotations

import logging
import os
import stat
import unicodedata
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag.crypto import keystore
from qudag.crypto.canonical import pack, unpack
from qudag.crypto.keystore import (
    MAGIC,
    Argon2Params,
    CorruptKeyFileError,
    KeyFileExistsError,
    KeyFileNotFoundError,
    KeystoreError,
    PassphraseRequiredError,
    WrongPassphraseError,
    dump_identity,
    load_identity,
    parse_identity,
    read_key_file_info,
    save_identity,
)
from qudag.crypto.signing import BACKENDS, Identity, verify

CHEAP = Argon2Params(iterations=1, lanes=1, memory_kib=64)  # tests only: real keys use defaults
PASS = "correct horse battery staple"
IDENTITIES = {name: Identity.generate(name) for name in BACKENDS}
PLAIN = {name: dump_identity(ident) for name, ident in IDENTITIES.items()}
ENCRYPTED = {name: dump_identity(ident, PASS, CHEAP) for name, ident in IDENTITIES.items()}
ALL_FILES = {("plain", n): d for n, d in PLAIN.items()} | {
    ("encrypted", n): d for n, d in ENCRYPTED.items()
}


def assert_no_secret(text: str) -> None:
    for ident in IDENTITIES.values():
        secret = ident.secret_bytes()
        assert secret.hex() not in text
        assert secret[:8].hex() not in text
        assert repr(secret[:8])[2:-1] not in text


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def rewrite(data: bytes, edit: dict[str, object]) -> bytes:
    """Change header fields and recompute the checksum: a forged, not a damaged, file."""
    outer = unpack(data[len(MAGIC) :], 1 << 16)
    outer["header"].update(edit)
    aad = MAGIC + pack(outer["header"])
    outer["checksum"] = blake3.blake3(aad + outer["secret"]).digest()
    return MAGIC + pack(outer)


def expect(error: type[KeystoreError], data: bytes, passphrase: str | None = PASS) -> str:
    with pytest.raises(error) as info:
        parse_identity(data, passphrase)
    assert info.value.__cause__ is None  # no chained exception that could carry key bytes
    assert_no_secret(str(info.value))
    assert_no_secret(repr(info.value))
    return str(info.value)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("encrypted", [False, True])
def test_file_round_trip(tmp_path: Path, backend: str, encrypted: bool) -> None:
    ident = IDENTITIES[backend]
    path = tmp_path / "node.key"
    save_identity(ident, path, PASS if encrypted else None, kdf=CHEAP)
    loaded = load_identity(path, PASS if encrypted else None)
    assert loaded == ident
    assert loaded.backend == backend
    signature = loaded.sign(b"m", b"ctx")
    assert verify(ident.public_key, b"m", signature, b"ctx")
    info = read_key_file_info(path)
    assert (info.backend, info.public_key, info.encrypted) == (backend, ident.public_key, encrypted)
    assert info.key_id == ident.key_id
    assert ident.public_key.hex() not in repr(info)


def test_default_kdf_round_trip_and_parameters_are_stored(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_identity(IDENTITIES["cryptography"], path, PASS)  # RFC 9106 setting, ~0.15 s
    outer = unpack(path.read_bytes()[len(MAGIC) :], 1 << 16)
    kdf = outer["header"]["kdf"]
    assert (kdf["name"], kdf["iterations"], kdf["lanes"], kdf["memory_kib"]) == (
        "argon2id",
        3,
        4,
        65536,
    )
    assert outer["header"]["cipher"]["name"] == "chacha20-poly1305"
    assert load_identity(path, PASS) == IDENTITIES["cryptography"]


def test_passphrase_forms() -> None:
    data = ENCRYPTED["cryptography"]
    assert parse_identity(data, PASS.encode()) == IDENTITIES["cryptography"]
    # A passphrase typed in decomposed Unicode opens a file made with the composed form.
    composed = "pässwörd"
    made = dump_identity(IDENTITIES["cryptography"], composed, CHEAP)
    assert parse_identity(made, unicodedata.normalize("NFD", composed)) is not None
    # A passphrase given for a plain file is ignored: the file is usable either way.
    assert parse_identity(PLAIN["cryptography"], "anything") == IDENTITIES["cryptography"]
    with pytest.raises(KeystoreError, match="empty"):
        dump_identity(IDENTITIES["cryptography"], "", CHEAP)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_wrong_or_missing_passphrase(backend: str) -> None:
    data = ENCRYPTED[backend]
    assert "wrong passphrase" in expect(WrongPassphraseError, data, PASS + "!")
    assert "passphrase is required" in expect(PassphraseRequiredError, data, None)


def test_every_proper_prefix_is_a_corrupt_file() -> None:
    """Exhaustive: a file cut at any byte (~16,700 prefixes over the four files) is corrupt."""
    for data in ALL_FILES.values():
        for length in range(len(data)):
            with pytest.raises(CorruptKeyFileError):
                parse_identity(data[:length], PASS)
    expect(CorruptKeyFileError, ENCRYPTED["pqcrypto"][:-1])


@settings(max_examples=30, deadline=None)
@given(which=st.sampled_from(sorted(ALL_FILES)), position=st.floats(0, 1, exclude_max=True))
def test_truncation_messages_are_clean(which: tuple[str, str], position: float) -> None:
    data = ALL_FILES[which]
    assert "corrupt or truncated" in expect(CorruptKeyFileError, data[: int(position * len(data))])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.sampled_from(sorted(ALL_FILES)), position=st.floats(0, 1, exclude_max=True))
def test_any_flipped_bit_is_reported_as_corruption(which: tuple[str, str], position: float) -> None:
    data = ALL_FILES[which]
    bit = int(position * len(data) * 8)
    # The checksum catches damage before the passphrase is even tried, so damage is never
    # misreported as a wrong passphrase.
    expect(CorruptKeyFileError, flip(data, bit))


def test_every_single_bit_flip_of_a_small_file_is_corruption() -> None:
    """Exhaustive over all ~18,000 bits of an encrypted cryptography-backend file (~0.5 s)."""
    data = ENCRYPTED["cryptography"]
    for bit in range(len(data) * 8):
        with pytest.raises(CorruptKeyFileError):
            parse_identity(flip(data, bit), PASS)


@settings(max_examples=30, deadline=None)
@given(which=st.sampled_from(sorted(ALL_FILES)), extra=st.binary(min_size=1, max_size=8))
def test_appended_bytes_are_corruption(which: tuple[str, str], extra: bytes) -> None:
    expect(CorruptKeyFileError, ALL_FILES[which] + extra)


def test_not_a_key_file() -> None:
    assert "bad magic" in expect(CorruptKeyFileError, b"-----BEGIN PRIVATE KEY-----\n")
    assert "magic" in expect(CorruptKeyFileError, b"")
    assert "magic" in expect(CorruptKeyFileError, MAGIC[:5])


def test_forged_plain_file_with_a_foreign_public_key_is_rejected() -> None:
    forged = rewrite(PLAIN["cryptography"], {"public_key": IDENTITIES["pqcrypto"].public_key})
    assert "does not belong" in expect(CorruptKeyFileError, forged)
    forged = rewrite(PLAIN["pqcrypto"], {"public_key": Identity.generate("pqcrypto").public_key})
    assert "does not belong" in expect(CorruptKeyFileError, forged)
    forged = rewrite(PLAIN["cryptography"], {"backend": "pqcrypto"})
    expect(CorruptKeyFileError, forged)


def test_encrypted_header_is_authenticated() -> None:
    """Editing the header (with a valid checksum) breaks the AEAD: the header is the AAD."""
    data = ENCRYPTED["cryptography"]
    forged = rewrite(data, {"public_key": IDENTITIES["pqcrypto"].public_key})
    expect(WrongPassphraseError, forged)


def test_version_algorithm_and_hostile_kdf_settings() -> None:
    data = ENCRYPTED["cryptography"]
    assert "format version 2" in expect(CorruptKeyFileError, rewrite(data, {"version": 2}))
    assert "algorithm" in expect(CorruptKeyFileError, rewrite(data, {"algorithm": "ml-dsa-87"}))
    assert "backend" in expect(CorruptKeyFileError, rewrite(data, {"backend": "openssl"}))
    outer = unpack(data[len(MAGIC) :], 1 << 16)
    for edit in ({"memory_kib": 1 << 40}, {"iterations": 10**6}, {"lanes": 0}, {"salt": b""}):
        kdf = dict(outer["header"]["kdf"], **edit)
        # Rejected before any key derivation: a hostile file cannot make us allocate a TB.
        expect(CorruptKeyFileError, rewrite(data, {"kdf": kdf}))
    expect(CorruptKeyFileError, rewrite(data, {"kdf": None}))
    expect(CorruptKeyFileError, rewrite(data, {"kdf": {"name": "scrypt"}}))


def test_file_mode_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "node.key"
        save_identity(IDENTITIES["cryptography"], path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        save_identity(IDENTITIES["pqcrypto"], path, PASS, overwrite=True, kdf=CHEAP)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]  # no temp files left


def test_the_key_is_never_readable_by_others_not_even_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real_link, real_replace = os.link, os.replace

    def spy_link(src: str | Path, dst: str | Path) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_link(src, dst)

    def spy_replace(src: str | Path, dst: str | Path) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    monkeypatch.setattr(keystore.os, "link", spy_link)
    monkeypatch.setattr(keystore.os, "replace", spy_replace)
    old = os.umask(0)
    try:
        save_identity(IDENTITIES["cryptography"], tmp_path / "a.key")
        save_identity(IDENTITIES["cryptography"], tmp_path / "a.key", overwrite=True)
    finally:
        os.umask(old)
    assert seen == [0o600, 0o600]


def test_a_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.key"
    save_identity(IDENTITIES["cryptography"], path)
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keystore.os, "fsync", failing_fsync)
    with pytest.raises(KeystoreError, match="No space left"):
        save_identity(IDENTITIES["pqcrypto"], path, overwrite=True)
    with pytest.raises(KeystoreError, match="No space left"):
        save_identity(IDENTITIES["pqcrypto"], tmp_path / "other.key")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]
    assert path.read_bytes() == before


def test_refuses_to_overwrite_without_permission(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_identity(IDENTITIES["cryptography"], path)
    before = path.read_bytes()
    with pytest.raises(KeyFileExistsError, match="already exists"):
        save_identity(IDENTITIES["pqcrypto"], path)
    assert path.read_bytes() == before
    save_identity(IDENTITIES["pqcrypto"], path, overwrite=True)
    assert load_identity(path) == IDENTITIES["pqcrypto"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]


def test_file_system_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(KeyFileNotFoundError, match="not found"):
        load_identity(tmp_path / "missing.key")
    with pytest.raises(KeystoreError, match="directory"):
        load_identity(tmp_path)
    with pytest.raises(KeystoreError, match="directory does not exist"):
        save_identity(IDENTITIES["cryptography"], tmp_path / "no" / "such" / "node.key")
    with pytest.raises(KeystoreError, match="is a directory"):
        save_identity(IDENTITIES["cryptography"], tmp_path, overwrite=True)
    big = tmp_path / "big.key"
    big.write_bytes(MAGIC + b"\x00" * (keystore.MAX_FILE_SIZE + 1))
    with pytest.raises(CorruptKeyFileError, match="too large"):
        load_identity(big)


def test_a_readable_by_others_file_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "node.key"
    save_identity(IDENTITIES["cryptography"], path)
    with caplog.at_level(logging.WARNING, logger="qudag.crypto.keystore"):
        assert load_identity(path) == IDENTITIES["cryptography"]
    assert not caplog.records
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="qudag.crypto.keystore"):
        assert load_identity(path) == IDENTITIES["cryptography"]
    assert "chmod 600" in caplog.text
    assert_no_secret(caplog.text)


def test_no_secret_in_reprs() -> None:
    for ident in IDENTITIES.values():
        assert_no_secret(repr(ident))
        assert_no_secret(str(ident))
