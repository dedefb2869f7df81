"""MLSteam load hook written by mlflow-archive-plugin: loads this package's MLflow model(s).

MLSteam's SDK calls ``load(env=env)`` with ``env['MLSTEAM_MODEL_DIR']`` set to the package's
``models`` folder; without it, the ``models`` folder next to ``hooks/`` is used. Each model is
loaded with ``mlflow.pyfunc``. With one model, ``load`` returns it; with several, a dict of
them by name (``predict`` picks one by ``inputs['model']``).

An encrypted package (``model-enc.mlarchive``) holds every model file as ``<file>.enc``,
AES-256-GCM in chunks. ``load`` decrypts them with the key in ``MLSTEAM_MODEL_KEY`` (64 hex
characters or base64) or the file named by ``MLSTEAM_MODEL_KEY_FILE``, looked up in ``env``
and then in the process environment, and writes the plain files next to the encrypted ones.
A wrong key or an altered file is refused before any plain file appears. With
``enc_model_cleanup: after-load`` in ``manifest.json``, the files matching
``enc_model_cleanup_files`` (glob patterns relative to the package root, never beyond it) are
deleted once the models are loaded, or if loading fails.

This file must run without mlflow-archive-plugin installed: it needs ``mlflow`` and, for an
encrypted package, ``cryptography``. The plugin imports its decryption from here, so both
read encrypted files the same way.
"""

import base64
import binascii
import glob
import hashlib
import json
import os
import shutil
import uuid

# Written by mlflow-archive-plugin at export: each model's name and folder under models/.
CONFIG = {"models": [{"name": "model", "path": "."}], "encryption": None}

MODEL_DIR_ENV = "MLSTEAM_MODEL_DIR"
KEY_ENV = "MLSTEAM_MODEL_KEY"
KEY_FILE_ENV = "MLSTEAM_MODEL_KEY_FILE"
MANIFEST_NAME = "manifest.json"
MODELS_DIR = "models"

KEY_SIZE = 32
SCHEME = "aes-256-gcm-chunked-v1"
SUFFIX = ".enc"
# An encrypted file: MAGIC, the chunk size (4 bytes, big-endian), then one record per chunk:
# a random 12-byte nonce and the chunk's AES-256-GCM ciphertext with its 16-byte tag.
MAGIC = b"MLAENC1\n"
HEADER_SIZE = len(MAGIC) + 4
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_CHUNK_SIZE = 64 * 1024 * 1024
# Bound into every chunk: the header, the file's path in the package (models/...), the
# chunk's index and whether it is the last, so no chunk can be moved, swapped or dropped.
AAD_PREFIX = b"mlflow-archive-plugin mlarchive " + SCHEME.encode("ascii") + b"\x00"

CLEANUP_POLICIES = ("never", "after-load")
DEFAULT_CLEANUP_FILES = ["models"]


class PackageError(Exception):
    """The package cannot be loaded as it is: no key, a wrong key, an altered file, or a
    manifest setting that is not allowed."""


def load(*args, env=None, **kwargs):
    """The package's model (or a dict of its models by name), loaded with ``mlflow.pyfunc``;
    decrypted first when the package is encrypted (``key=`` may also give the key)."""
    env = env if env is not None else {}
    models_dir = model_dir(env)
    root = os.path.dirname(models_dir)
    encryption = CONFIG.get("encryption")
    policies = cleanup_settings(root) if encryption else []
    key = find_key(env, kwargs.get("key")) if encryption else None
    decrypted = False
    try:
        if encryption:
            for entry in CONFIG["models"]:
                folder = os.path.normpath(os.path.join(models_dir, entry["path"]))
                decrypt_tree(folder, folder, key, encryption, package_path(entry["path"]),
                             staging_parent=root)
                decrypted = True
        import mlflow.pyfunc

        loaded = {}
        for entry in CONFIG["models"]:
            folder = os.path.normpath(os.path.join(models_dir, entry["path"]))
            loaded[entry["name"]] = mlflow.pyfunc.load_model(folder)
    finally:
        # Plain files exist only once something was decrypted; a wrong key deletes nothing.
        for policy, patterns in policies if decrypted else []:
            if policy == "after-load":
                clean_up(root, patterns)
    return next(iter(loaded.values())) if len(loaded) == 1 else loaded


def model_dir(env):
    """The package's ``models`` folder: ``env['MLSTEAM_MODEL_DIR']``, the environment's, or
    the one next to ``hooks/``."""
    given = env.get(MODEL_DIR_ENV) or os.environ.get(MODEL_DIR_ENV)
    if given:
        return os.path.abspath(given)
    here = globals().get("__file__")
    if not here:
        raise PackageError(f"set env['{MODEL_DIR_ENV}'] to the package's models folder")
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(here))), MODELS_DIR)


def package_path(path):
    """The name a model's files are encrypted under: ``models/`` plus their path below it."""
    return MODELS_DIR + "/" if path in (".", "") else f"{MODELS_DIR}/{path.strip('/')}/"


# --------------------------------------------------------------------------- keys


def parse_key(data, source):
    """A 32-byte key from ``data``: the raw bytes, 64 hex characters, or base64."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) == KEY_SIZE:
        return bytes(data)
    text = bytes(data).strip()
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    for alphabet in (text, text.replace(b"-", b"+").replace(b"_", b"/")):
        try:
            key = base64.b64decode(alphabet, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_SIZE:
            return key
    if len(text) == KEY_SIZE:
        return text
    raise PackageError(
        f"{source} does not hold a 32-byte key (raw, 64 hex characters or base64); "
        "make one with: openssl rand -hex 32"
    )


def key_id(key):
    """A short fingerprint of a key, stored with the package so a wrong key is named as such."""
    return hashlib.sha256(b"mlflow-archive-plugin key id\x00" + key).hexdigest()[:16]


def find_key(env, given=None):
    """The key from ``given``, else ``MLSTEAM_MODEL_KEY`` or ``MLSTEAM_MODEL_KEY_FILE`` in
    ``env`` or the process environment."""
    if given:
        return parse_key(given, "the key given to load()")
    for where, mapping in (("env", env), ("the environment", os.environ)):
        if mapping.get(KEY_ENV):
            return parse_key(mapping[KEY_ENV], f"{KEY_ENV} in {where}")
        if mapping.get(KEY_FILE_ENV):
            path = mapping[KEY_FILE_ENV]
            try:
                with open(path, "rb") as handle:
                    return parse_key(handle.read(), f"key file {path}")
            except OSError as exc:
                raise PackageError(f"cannot read key file {path} ({exc.strerror})") from exc
    raise PackageError(f"this package is encrypted: set {KEY_ENV} (64 hex characters or "
                       f"base64) or {KEY_FILE_ENV}, in env or the environment")


# --------------------------------------------------------------------------- decryption


def chunk_aad(header, name, index, last):
    """What a chunk's tag authenticates besides its bytes."""
    return (AAD_PREFIX + header + name.encode("utf-8") + b"\x00"
            + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00"))


def decrypt_file(source, target, key, name):
    """Decrypt the encrypted file ``source`` (package path ``name``) into a new ``target``."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher = AESGCM(key)
    with open(source, "rb") as handle:
        header = handle.read(HEADER_SIZE)
        chunk_size = int.from_bytes(header[len(MAGIC):], "big")
        if len(header) != HEADER_SIZE or not header.startswith(MAGIC) \
                or not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise PackageError(f"{name}: not a file this package's encryption wrote")
        record_size = NONCE_SIZE + chunk_size + TAG_SIZE
        with open(target, "xb") as out:
            index = 0
            record = handle.read(record_size)
            while True:
                following = handle.read(record_size) if len(record) == record_size else b""
                last = not following
                if len(record) < NONCE_SIZE + TAG_SIZE:
                    raise PackageError(f"{name}: truncated; extract the package again")
                try:
                    out.write(cipher.decrypt(record[:NONCE_SIZE], record[NONCE_SIZE:],
                                             chunk_aad(header, name, index, last)))
                except InvalidTag:
                    raise PackageError(
                        f"{name}: does not decrypt with this key; the key is wrong or the file "
                        "was altered"
                    ) from None
                if last:
                    return
                record, index = following, index + 1


def decrypt_tree(sealed_dir, plain_dir, key, encryption, name_prefix, staging_parent):
    """Decrypt every ``*.enc`` file below ``sealed_dir`` into ``plain_dir`` (which may be the
    same folder). Files are decrypted into a staging folder in ``staging_parent`` and moved
    into place only once all of them decrypted, so a wrong key leaves no plain file."""
    if encryption.get("scheme") != SCHEME:
        raise PackageError(f"the package is encrypted with {encryption.get('scheme')!r}, which "
                           f"this hook does not know (it knows {SCHEME})")
    if encryption.get("key_id") not in (None, key_id(key)):
        raise PackageError(f"the key is not the one this package was encrypted with (key id "
                           f"{encryption['key_id']}, given {key_id(key)})")
    sealed = sorted(
        os.path.relpath(os.path.join(folder, name), sealed_dir).replace(os.sep, "/")
        for folder, _, names in os.walk(sealed_dir) for name in names if name.endswith(SUFFIX)
    )
    if not sealed:
        raise PackageError(f"{name_prefix} holds no encrypted model files (were they cleaned "
                           "up after an earlier load?); extract the package again")
    staging = os.path.join(staging_parent, f".decrypting-{uuid.uuid4().hex}")
    try:
        for rel in sealed:
            plain = rel[:-len(SUFFIX)]
            target = os.path.join(staging, *plain.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            decrypt_file(os.path.join(sealed_dir, *rel.split("/")), target, key,
                         name_prefix + plain)
        for rel in sealed:
            plain = rel[:-len(SUFFIX)]
            final = os.path.join(plain_dir, *plain.split("/"))
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(os.path.join(staging, *plain.split("/")), final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- cleanup


def check_pattern(pattern):
    """Refuse a cleanup pattern that is not relative to the package root or could leave it."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise PackageError(f"enc_model_cleanup_files pattern {pattern!r} is not a path pattern")
    parts = pattern.replace("\\", "/").split("/")
    if ("\x00" in pattern or pattern.startswith(("/", "\\", "~")) or os.path.isabs(pattern)
            or (len(pattern) > 1 and pattern[1] == ":") or ".." in parts):
        raise PackageError(f"enc_model_cleanup_files pattern {pattern!r} reaches outside the "
                           "package root; use a path relative to it, without '..'")
    if os.path.normpath(pattern) in (".", ""):
        raise PackageError(f"enc_model_cleanup_files pattern {pattern!r} is the package root "
                           "itself; name the files to delete")
    return pattern


def cleanup_settings(root):
    """Each model's ``(enc_model_cleanup, enc_model_cleanup_files)`` from ``manifest.json``
    (else from ``CONFIG``), every pattern checked before anything is decrypted."""
    entries = None
    path = os.path.join(root, MANIFEST_NAME)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as handle:
                entries = json.load(handle).get("models")
        except (OSError, ValueError, AttributeError) as exc:
            raise PackageError(f"{MANIFEST_NAME} cannot be read ({exc})") from exc
    if not isinstance(entries, list):
        entries = CONFIG["models"]
    settings = []
    for entry in entries:
        entry = entry if isinstance(entry, dict) else {}
        policy = entry.get("enc_model_cleanup") or "never"
        patterns = entry.get("enc_model_cleanup_files") or DEFAULT_CLEANUP_FILES
        if policy not in CLEANUP_POLICIES:
            raise PackageError(f"enc_model_cleanup {policy!r} is not one of: "
                               f"{', '.join(CLEANUP_POLICIES)}")
        if not isinstance(patterns, list):
            raise PackageError("enc_model_cleanup_files is not a list of patterns")
        settings.append((policy, [check_pattern(pattern) for pattern in patterns]))
    return settings


def clean_up(root, patterns):
    """Delete what each pattern matches below ``root``, in order; a match that resolves
    outside the root (through a link) is left alone and reported once the rest is gone."""
    real_root = os.path.realpath(root)
    refused = []
    for pattern in patterns:
        for match in sorted(glob.glob(os.path.join(glob.escape(root), pattern),
                                      recursive=True)):
            real = os.path.realpath(os.path.dirname(match))
            inside = real == real_root or real.startswith(real_root + os.sep)
            if not inside or os.path.realpath(match) == real_root:
                refused.append(match)
            elif os.path.isdir(match) and not os.path.islink(match):
                shutil.rmtree(match)
            elif os.path.lexists(match):
                os.remove(match)
    if refused:
        raise PackageError(f"enc_model_cleanup_files matched {refused[0]}, outside the package "
                           "root; it was not deleted")
