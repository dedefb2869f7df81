"""Encrypted model files for MLSteam packages: AES-256-GCM in chunks, from ``cryptography``.

Each model file becomes ``<file>.enc``: a header (magic and chunk size) and, per 1 MiB chunk,
a random 96-bit nonce and the chunk's ciphertext with its 128-bit tag. Every tag also covers
the header, the file's path in the package (``models/...``), the chunk's index and whether it
is the last, so a chunk cannot be altered, reordered, dropped or moved to another file without
decryption failing. Memory stays at one chunk whatever the file's size.

Decryption lives in the package's own load hook (:mod:`mlflow_archive_plugin.formats.mlsteam.load`),
which must work without this plugin; import uses that same code.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import EncryptionError
from mlflow_archive_plugin.formats.mlsteam import load as hook

KEY_SIZE = hook.KEY_SIZE
SCHEME = hook.SCHEME
SUFFIX = hook.SUFFIX
CHUNK_SIZE = 1024 * 1024
KEY_ENV = hook.KEY_ENV
KEY_FILE_ENV = hook.KEY_FILE_ENV


def read_key(key_file: str | os.PathLike | None = None, key_env: str | None = None) -> bytes:
    """The 32-byte key in ``key_file`` or in the environment variable ``key_env``: raw bytes,
    64 hex characters, or base64."""
    if (key_file is None) == (key_env is None):
        raise EncryptionError("give the key one way: a key file or an environment variable")
    try:
        if key_file is not None:
            try:
                data = Path(key_file).read_bytes()
            except OSError as exc:
                raise EncryptionError(f"cannot read key file {key_file} ({exc.strerror}); "
                                      "check the path") from exc
            return hook.parse_key(data, f"key file {key_file}")
        value = os.environ.get(str(key_env))
        if not value:
            raise EncryptionError(f"environment variable {key_env} is not set or empty; "
                                  "export the key in it (openssl rand -hex 32)")
        return hook.parse_key(value, f"environment variable {key_env}")
    except hook.PackageError as exc:
        raise EncryptionError(str(exc)) from None


def check_key(key: bytes) -> bytes:
    """``key`` if it is 32 bytes, else a one-line error."""
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise EncryptionError(f"an encryption key is {KEY_SIZE} bytes (AES-256); make one "
                              "with: openssl rand -hex 32")
    return bytes(key)


def describe(key: bytes) -> dict[str, Any]:
    """What a package records about its encryption: the scheme and the key's fingerprint."""
    return {"scheme": SCHEME, "key_id": hook.key_id(key), "suffix": SUFFIX}


def encrypt_file(source: Path, target: Path, key: bytes, name: str,
                 chunk_size: int = CHUNK_SIZE) -> None:
    """Encrypt ``source`` into a new file ``target``; ``name`` is its path in the package."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher = AESGCM(key)
    header = hook.MAGIC + chunk_size.to_bytes(4, "big")
    with source.open("rb") as handle, target.open("xb") as out:
        out.write(header)
        index = 0
        chunk = handle.read(chunk_size)
        while True:
            following = handle.read(chunk_size) if len(chunk) == chunk_size else b""
            last = not following
            nonce = os.urandom(hook.NONCE_SIZE)
            out.write(nonce + cipher.encrypt(nonce, chunk,
                                             hook.chunk_aad(header, name, index, last)))
            if last:
                return
            chunk, index = following, index + 1


def encrypt_tree(source_dir: Path, target_dir: Path, key: bytes, name_prefix: str) -> Path:
    """Encrypt every file below ``source_dir`` into ``target_dir`` as ``<path>.enc``; each is
    bound to ``name_prefix + <path>``, its path in the package. Returns ``target_dir``."""
    check_key(key)
    for path in sorted(p for p in source_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(source_dir).as_posix()
        target = target_dir / (rel + SUFFIX)
        target.parent.mkdir(parents=True, exist_ok=True)
        encrypt_file(path, target, key, name_prefix + rel)
    return target_dir


def decrypt_tree(sealed_dir: Path, plain_dir: Path, key: bytes, encryption: dict[str, Any],
                 name_prefix: str) -> Path:
    """Decrypt a model folder of an encrypted package into ``plain_dir`` (created); nothing
    is left there unless every file decrypts. Returns ``plain_dir``."""
    check_key(key)
    stray = sorted(p.relative_to(sealed_dir).as_posix() for p in sealed_dir.rglob("*")
                   if p.is_file() and not p.name.endswith(SUFFIX))
    if stray:
        raise EncryptionError(f"{name_prefix}{stray[0]} is not encrypted, though the archive "
                              "says its model files are; export it again")
    plain_dir.mkdir(parents=True)
    try:
        hook.decrypt_tree(str(sealed_dir), str(plain_dir), key, encryption, name_prefix,
                          staging_parent=str(plain_dir.parent))
    except hook.PackageError as exc:
        shutil.rmtree(plain_dir, ignore_errors=True)
        raise EncryptionError(str(exc)) from None
    return plain_dir
