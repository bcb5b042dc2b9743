"""`qudag-node keygen` and `qudag-node id`: make an identity key file, show a key file's id.

The passphrase comes from an environment variable named on the command line, never from an
argument (arguments are visible to every user through `ps`).
"""

from __future__ import annotations

import argparse
import os

from qudag.crypto.keystore import (
    KeystoreError,
    PassphraseRequiredError,
    load_identity,
    save_identity,
)
from qudag.crypto.signing import BACKENDS, DEFAULT_BACKEND, Identity
from qudag.node.errors import UserError


def _passphrase(var: str | None) -> str | None:
    """The passphrase in environment variable `var`; a clear error if it is unset or empty."""
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise UserError(f"--passphrase-env {var}: environment variable {var} is not set")
    if not value:
        raise UserError(f"--passphrase-env {var}: environment variable {var} is empty")
    return value


def _keygen(args: argparse.Namespace) -> int:
    passphrase = _passphrase(args.passphrase_env)
    identity = Identity.generate(args.backend)
    try:
        save_identity(identity, args.out, passphrase, overwrite=args.force)
    except KeystoreError as exc:
        raise UserError(str(exc)) from None
    print(identity.key_id.hex())
    return 0


def _id(args: argparse.Namespace) -> int:
    passphrase = _passphrase(args.passphrase_env)
    try:
        identity = load_identity(args.key, passphrase)
    except KeystoreError as exc:
        message = str(exc)
        if isinstance(exc, PassphraseRequiredError):
            message += " (name the variable that holds it with --passphrase-env VAR)"
        raise UserError(message) from None
    print(identity.key_id.hex())
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = subparsers.add_parser(
        "keygen",
        help="create an ML-DSA-65 identity key file and print its key id",
        description=(
            "Create an ML-DSA-65 identity, write it to a key file with mode 0600 (encrypted "
            "with Argon2id + ChaCha20-Poly1305 when a passphrase is given) and print the key "
            "id (BLAKE3 of the public key) in hex."
        ),
    )
    keygen.add_argument("--out", required=True, metavar="PATH", help="key file to create")
    keygen.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="encrypt the key with the passphrase held in environment variable VAR",
    )
    keygen.add_argument(
        "--backend",
        choices=sorted(BACKENDS),
        default=DEFAULT_BACKEND,
        help=f"signing library that makes and uses the key (default: {DEFAULT_BACKEND})",
    )
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key file")
    keygen.set_defaults(handler=_keygen)

    show = subparsers.add_parser(
        "id",
        help="print the key id of a key file",
        description="Load and check a key file, then print its key id in hex.",
    )
    show.add_argument("--key", required=True, metavar="PATH", help="key file to read")
    show.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="the key file's passphrase is in environment variable VAR",
    )
    show.set_defaults(handler=_id)
