"""Identity key files: our own small format, optionally passphrase-encrypted, written atomically.

Why our own format: PKCS#8 has no standard form for pqcrypto's 4032-byte expanded ML-DSA key,
and we want the public key and backend readable, the file self-checking, and every byte
covered by a checksum (plain files) or by the AEAD tag (encrypted files). The byte layout is
specified in docs/keystore-format.md:

    file   = MAGIC (8 bytes) || canonical msgpack {"header": header, "secret": bin, "checksum": bin}
    header = {"version": 1, "algorithm": "ml-dsa-65", "backend": str, "public_key": bin,
              "kdf": nil | {"name": "argon2id", "salt", "iterations", "lanes", "memory_kib"},
              "cipher": nil | {"name": "chacha20-poly1305", "nonce": bin}}
    aad    = MAGIC || pack(header)            (what the AEAD authenticates besides the secret)
    checksum = BLAKE3(aad || secret)          (tells "damaged file" apart from "wrong passphrase")

Encrypted files derive a 32-byte key with Argon2id (RFC 9106's second recommended setting by
default: 64 MiB, 3 passes, 4 lanes, ~0.15 s here) and encrypt the secret with
ChaCha20-Poly1305; `secret` then holds ciphertext || tag. Loading checks that the public key
belongs to the secret (exactly for the cryptography backend, which re-derives it from the seed;
through the FIPS 204 fingerprints stored in the expanded key for pqcrypto).

Secrets never appear in messages: every error names the file and the problem, nothing else.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from qudag.crypto.canonical import DecodeError, fields, pack, unpack
from qudag.crypto.signing import BACKENDS, PUBLIC_KEY_SIZE, Identity, SignatureError, key_id

log = logging.getLogger(__name__)

MAGIC = b"QUDAGKEY"
VERSION = 1
ALGORITHM = "ml-dsa-65"
KDF_NAME = "argon2id"
CIPHER_NAME = "chacha20-poly1305"
MAX_FILE_SIZE = 16 * 1024  # the largest real file (pqcrypto, encrypted) is ~6.1 KB
_SALT_SIZE = 16
_NONCE_SIZE = 12
_KEY_SIZE = 32
# Bounds on the KDF parameters a file may ask for, so a hostile file cannot make us allocate
# terabytes or spin for hours. The defaults sit well inside them.
_MAX_MEMORY_KIB = 1024 * 1024
_MAX_ITERATIONS = 64
_MAX_LANES = 64


class KeystoreError(Exception):
    """A key file cannot be written or used. The message names the file, never key bytes."""


class KeyFileNotFoundError(KeystoreError):
    """The key file does not exist."""


class KeyFileExistsError(KeystoreError):
    """Refused to overwrite an existing key file."""


class PassphraseRequiredError(KeystoreError):
    """The key file is encrypted and no passphrase was given."""


class WrongPassphraseError(KeystoreError):
    """The passphrase does not decrypt the (intact) key file."""


class CorruptKeyFileError(KeystoreError):
    """The file is not a well-formed key file: truncated, damaged, or not ours."""


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id cost settings, stored in the file so that loading uses the same ones."""

    iterations: int = 3
    lanes: int = 4
    memory_kib: int = 64 * 1024

    def check(self) -> None:
        if not 1 <= self.iterations <= _MAX_ITERATIONS:
            raise ValueError(f"argon2id iterations must be in 1..{_MAX_ITERATIONS}")
        if not 1 <= self.lanes <= _MAX_LANES:
            raise ValueError(f"argon2id lanes must be in 1..{_MAX_LANES}")
        if not 8 * self.lanes <= self.memory_kib <= _MAX_MEMORY_KIB:
            raise ValueError(f"argon2id memory must be in 8*lanes..{_MAX_MEMORY_KIB} KiB")


DEFAULT_KDF = Argon2Params()


@dataclass(frozen=True)
class KeyFileInfo:
    """The public part of a key file, readable without the passphrase."""

    backend: str
    public_key: bytes = field(repr=False)
    encrypted: bool = False

    @property
    def key_id(self) -> bytes:
        return key_id(self.public_key)


def _normalize_passphrase(passphrase: str | bytes) -> bytes:
    """UTF-8 of the NFC form, so the same typed passphrase works across input methods."""
    data = (
        unicodedata.normalize("NFC", passphrase).encode("utf-8", "surrogateescape")
        if isinstance(passphrase, str)
        else bytes(passphrase)
    )
    if not data:
        raise KeystoreError("the passphrase is empty")
    return data


def _derive_key(passphrase: bytes, salt: bytes, params: Argon2Params) -> bytes:
    return Argon2id(
        salt=salt,
        length=_KEY_SIZE,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    ).derive(passphrase)


def dump_identity(
    identity: Identity,
    passphrase: str | bytes | None = None,
    kdf: Argon2Params = DEFAULT_KDF,
) -> bytes:
    """The bytes of a key file for `identity`, encrypted when a passphrase is given."""
    secret = identity.secret_bytes()
    kdf_field: dict[str, object] | None = None
    cipher_field: dict[str, object] | None = None
    salt = secrets.token_bytes(_SALT_SIZE)
    nonce = secrets.token_bytes(_NONCE_SIZE)
    if passphrase is not None:
        kdf.check()
        kdf_field = {
            "name": KDF_NAME,
            "salt": salt,
            "iterations": kdf.iterations,
            "lanes": kdf.lanes,
            "memory_kib": kdf.memory_kib,
        }
        cipher_field = {"name": CIPHER_NAME, "nonce": nonce}
    header = {
        "version": VERSION,
        "algorithm": ALGORITHM,
        "backend": identity.backend,
        "public_key": identity.public_key,
        "kdf": kdf_field,
        "cipher": cipher_field,
    }
    aad = MAGIC + pack(header)
    if passphrase is not None:
        key = _derive_key(_normalize_passphrase(passphrase), salt, kdf)
        secret = ChaCha20Poly1305(key).encrypt(nonce, secret, aad)
    checksum = blake3.blake3(aad + secret).digest()
    return MAGIC + pack({"header": header, "secret": secret, "checksum": checksum})


_FILE_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "header": dict,
    "secret": bytes,
    "checksum": bytes,
}
_HEADER_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "algorithm": str,
    "backend": str,
    "public_key": bytes,
    "kdf": (dict, type(None)),
    "cipher": (dict, type(None)),
}
_KDF_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "salt": bytes,
    "iterations": int,
    "lanes": int,
    "memory_kib": int,
}
_CIPHER_SCHEMA: dict[str, type | tuple[type, ...]] = {"name": str, "nonce": bytes}


@dataclass(frozen=True)
class _Parsed:
    """A structurally valid, checksummed key file (maps already checked against the schemas)."""

    backend: str
    public_key: bytes
    kdf: dict[str, Any] | None
    cipher: dict[str, Any] | None
    secret: bytes
    aad: bytes


def _parse(data: bytes, source: str) -> _Parsed:
    """Structure, version and checksum; everything that needs no passphrase."""

    def corrupt(why: str) -> CorruptKeyFileError:
        return CorruptKeyFileError(f"corrupt or truncated key file {source}: {why}")

    if len(data) <= len(MAGIC) and MAGIC.startswith(data):
        raise corrupt("file ends inside the magic number")
    if not data.startswith(MAGIC):
        raise CorruptKeyFileError(f"{source} is not a QuDAG-Evo key file (bad magic number)")
    try:
        outer = fields(unpack(data[len(MAGIC) :], MAX_FILE_SIZE), _FILE_SCHEMA, "key file")
        header = outer["header"]
        version = header.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version != VERSION:
            raise CorruptKeyFileError(
                f"key file {source} has format version {version}; this program reads {VERSION}"
            )
        fields(header, _HEADER_SCHEMA, "header")
        if header["kdf"] is not None:
            fields(header["kdf"], _KDF_SCHEMA, "header.kdf")
        if header["cipher"] is not None:
            fields(header["cipher"], _CIPHER_SCHEMA, "header.cipher")
    except DecodeError as exc:
        raise corrupt(str(exc)) from None
    aad = MAGIC + pack(header)
    if blake3.blake3(aad + outer["secret"]).digest() != outer["checksum"]:
        raise corrupt("checksum mismatch")
    # The checksum matched, so from here on a problem is a file we did not write, not damage.
    if header["algorithm"] != ALGORITHM:
        raise corrupt(f"unsupported algorithm {header['algorithm']!r}")
    if header["backend"] not in BACKENDS:
        raise corrupt(f"unknown signing backend {header['backend']!r}")
    if len(header["public_key"]) != PUBLIC_KEY_SIZE:
        raise corrupt("public key has the wrong size")
    if (header["kdf"] is None) != (header["cipher"] is None):
        raise corrupt("kdf and cipher must be both present or both absent")
    return _Parsed(
        backend=header["backend"],
        public_key=header["public_key"],
        kdf=header["kdf"],
        cipher=header["cipher"],
        secret=outer["secret"],
        aad=aad,
    )


def _kdf_params(kdf: dict[str, Any], source: str) -> tuple[bytes, Argon2Params]:
    if kdf["name"] != KDF_NAME:
        raise CorruptKeyFileError(f"key file {source}: unsupported kdf {kdf['name']!r}")
    params = Argon2Params(
        iterations=kdf["iterations"], lanes=kdf["lanes"], memory_kib=kdf["memory_kib"]
    )
    salt: bytes = kdf["salt"]
    try:
        params.check()
        if not 8 <= len(salt) <= 64:
            raise ValueError("salt must be 8..64 bytes")
    except ValueError as exc:
        raise CorruptKeyFileError(f"key file {source}: {exc}") from None
    return salt, params


def parse_identity(
    data: bytes, passphrase: str | bytes | None = None, source: str = "<bytes>"
) -> Identity:
    """The identity stored in key-file bytes, or a KeystoreError saying what is wrong.

    A passphrase given for an unencrypted file is ignored (the file is usable either way).
    """
    parsed = _parse(data, source)
    secret = parsed.secret
    if parsed.kdf is not None and parsed.cipher is not None:
        salt, params = _kdf_params(parsed.kdf, source)
        cipher = parsed.cipher
        if cipher["name"] != CIPHER_NAME or len(cipher["nonce"]) != _NONCE_SIZE:
            raise CorruptKeyFileError(f"key file {source}: unsupported cipher settings")
        if passphrase is None:
            raise PassphraseRequiredError(
                f"key file {source} is encrypted: a passphrase is required"
            )
        key = _derive_key(_normalize_passphrase(passphrase), salt, params)
        try:
            secret = ChaCha20Poly1305(key).decrypt(cipher["nonce"], secret, parsed.aad)
        except InvalidTag:
            raise WrongPassphraseError(f"wrong passphrase for key file {source}") from None
    backend, public_key = parsed.backend, parsed.public_key
    try:
        matches = BACKENDS[backend].pair_matches(public_key, secret)
    except SignatureError:
        matches = False
    if not matches:
        raise CorruptKeyFileError(
            f"key file {source}: the public key does not belong to the secret key"
        )
    return Identity(public_key=public_key, backend=backend, _secret=secret)


def _warn_if_shared(path: Path, mode: int) -> None:
    """Warn (not fail: the key still works) when a loaded key file is open to other users."""
    if mode & 0o077:
        log.warning(
            "key file %s is accessible by other users (mode %03o); run: chmod 600 %s",
            path,
            stat.S_IMODE(mode),
            path,
        )


def _read(path: Path) -> tuple[bytes, int]:
    """The file's bytes (bounded) and its mode, with one clear error per failure."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileNotFoundError(f"key file not found: {path}") from None
    except IsADirectoryError:
        raise KeystoreError(f"{path} is a directory, not a key file") from None
    except PermissionError:
        raise KeystoreError(f"permission denied reading key file {path}") from None
    except OSError as exc:
        raise KeystoreError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise KeystoreError(f"{path} is a directory, not a key file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_FILE_SIZE + len(MAGIC) + 1)
    except OSError as exc:
        raise KeystoreError(f"cannot read key file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_SIZE + len(MAGIC):
        raise CorruptKeyFileError(f"{path} is too large to be a key file")
    return data, info.st_mode


def load_identity(path: str | os.PathLike[str], passphrase: str | bytes | None = None) -> Identity:
    """Read and check a key file written by `save_identity`."""
    path = Path(path)
    data, mode = _read(path)
    identity = parse_identity(data, passphrase, source=str(path))
    _warn_if_shared(path, mode)
    return identity


def read_key_file_info(path: str | os.PathLike[str]) -> KeyFileInfo:
    """Backend and public key of a key file, checked against its checksum; no passphrase needed.

    For an encrypted file the public key is only *checksummed* here, not authenticated: use
    `load_identity` when it matters that the file was not forged.
    """
    path = Path(path)
    parsed = _parse(_read(path)[0], str(path))
    return KeyFileInfo(
        backend=parsed.backend, public_key=parsed.public_key, encrypted=parsed.kdf is not None
    )


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # not every platform lets us open a directory; the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_identity(
    identity: Identity,
    path: str | os.PathLike[str],
    passphrase: str | bytes | None = None,
    *,
    overwrite: bool = False,
    kdf: Argon2Params = DEFAULT_KDF,
) -> None:
    """Write `identity` to `path` atomically with mode 0600.

    The bytes go to a temporary file created 0600 in the same directory (never readable by
    others, not even for a moment), are fsynced, then linked into place (which fails if `path`
    exists, so there is no check-then-write race) or, with `overwrite`, renamed over it. A crash
    leaves either the old file or the new one, never a partial key.
    """
    path = Path(path)
    data = dump_identity(identity, passphrase, kdf)
    directory = path.parent
    if not directory.is_dir():
        raise KeystoreError(f"directory does not exist: {directory}")
    if path.is_dir():
        raise KeystoreError(f"{path} is a directory")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise KeyFileExistsError(f"{path} already exists (use --force to overwrite)")
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
    except OSError as exc:
        raise KeystoreError(f"cannot create a file in {directory}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask can only remove bits; make the mode exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileExistsError(
                    f"{path} already exists (use --force to overwrite)"
                ) from None
            except OSError as exc:
                # Filesystems without hard links: fall back to check-then-rename.
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                if path.exists():
                    raise KeyFileExistsError(f"{path} already exists (use --force)") from None
                os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as exc:
        raise KeystoreError(f"cannot write key file {path}: {exc.strerror}") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
