"""Model signatures through the real OpenSSF model-signing library, with real EC keys.

Keys are generated here with ``cryptography``; nothing is mocked. A signature made by
``signing.sign_model_dir`` must verify with model-signing's own Python API and CLI, and
every way of breaking the model, the signature or the key must end in one
``SignatureError`` line. model-signing is a test requirement: without it these tests fail.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mlflow_archive_plugin.errors import (
    IntegrityError,
    SourceNotFoundError,
    UnsupportedError,
)
from mlflow_archive_plugin.trust import signing
from mlflow_archive_plugin.trust.signing import SIGNATURE_NAME, SignatureError

MODEL_FILES = {
    "MLmodel": b"artifact_path: model\nflavors:\n  python_function:\n    loader_module: x\n",
    "requirements.txt": b"mlflow\n",
    "data/nested/weights.bin": bytes(range(256)) * 64 + b"\x00\x00tail",
    "code/.hidden": b"dotfiles are model files too\n",
}


@dataclass
class KeyPair:
    """Paths of one PEM key pair."""

    private: Path
    public: Path


@dataclass
class SignedArchive:
    """An extracted archive: ``model/``, root documents and ``model.sig`` at the root."""

    root: Path
    model: Path
    signature: Path
    keys: KeyPair


def write_keypair(folder: Path, name: str, curve: ec.EllipticCurve | None = None) -> KeyPair:
    """A fresh EC key pair (P-256 unless told) as PKCS#8 and SubjectPublicKeyInfo PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(curve or ec.SECP256R1())
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(private, public)


def make_archive_tree(root: Path) -> Path:
    """A model folder with nested and binary files, beside the archive's root documents."""
    model = root / "model"
    for name, data in MODEL_FILES.items():
        path = model / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "mlflow-archive.json").write_text('{"schema_version": 1}\n')
    (root / "checksum.txt").write_text("not part of the signature\n")
    return model


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> KeyPair:
    """The publisher's key pair."""
    return write_keypair(tmp_path_factory.mktemp("keys"), "publisher")


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory) -> KeyPair:
    """A second, unrelated key pair."""
    return write_keypair(tmp_path_factory.mktemp("other-keys"), "other")


@pytest.fixture
def signed(tmp_path, keys) -> SignedArchive:
    """A freshly signed archive tree in its own folder."""
    root = tmp_path / "archive"
    model = make_archive_tree(root)
    signature = root / SIGNATURE_NAME
    signing.sign_model_dir(model, keys.private, signature)
    return SignedArchive(root, model, signature, keys)


def refused(archive: SignedArchive, public_key: Path | None = None) -> SignatureError:
    """The SignatureError that verifying ``archive`` raises; its message must be one line."""
    with pytest.raises(SignatureError) as caught:
        signing.verify_model_dir(
            archive.model, archive.signature, public_key or archive.keys.public
        )
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message, message
    return caught.value


def signed_resources(signature: Path) -> dict:
    """The in-toto statement's predicate inside a model-signing bundle."""
    bundle = json.loads(signature.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    return statement["predicate"]


def model_signing_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """model-signing's own command line, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "model_signing", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --------------------------------------------------------------------------- installed


def test_model_signing_is_installed():
    """The signing extra is a test requirement: its absence fails, it is never skipped."""
    import model_signing

    assert model_signing.verifying.Config, "model-signing lacks its verifying API"


# --------------------------------------------------------------------------- good signatures


def test_signature_verifies_with_this_module(signed, capfd):
    """A fresh signature verifies, and neither signing nor verifying prints anything."""
    signing.verify_model_dir(signed.model, signed.signature, signed.keys.public)
    assert signed.signature.parent == signed.root
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_signature_verifies_with_model_signing_python_api(signed):
    """model-signing's own API, left to read its hashing setup from the signature."""
    import model_signing

    model_signing.verifying.Config().use_elliptic_key_verifier(
        public_key=signed.keys.public
    ).verify(signed.model, signed.signature)


def test_signature_verifies_with_model_signing_cli(signed):
    """The documented check of an extracted archive, run in its root, passes as it is."""
    result = model_signing_cli(
        "verify", "key", "model",
        "--signature", SIGNATURE_NAME,
        "--public_key", signed.keys.public,
        cwd=signed.root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Verification succeeded" in result.stdout


def test_model_signing_cli_refuses_a_tampered_model(signed):
    """model-signing's CLI and this module agree that a changed file breaks the signature."""
    weights = signed.model / "data/nested/weights.bin"
    weights.write_bytes(weights.read_bytes()[:-1] + b"X")
    result = model_signing_cli(
        "verify", "key", "model",
        "--signature", SIGNATURE_NAME,
        "--public_key", signed.keys.public,
        cwd=signed.root,
    )  # fmt: skip
    assert result.returncode != 0
    assert "data/nested/weights.bin" in result.stderr
    refused(signed)


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()], ids=lambda c: c.name)
def test_larger_curves_sign_and_verify(tmp_path, curve):
    """P-384 and P-521 keys work as P-256 does."""
    pair = write_keypair(tmp_path / "keys", "big", curve)
    model = make_archive_tree(tmp_path / "archive")
    signature = tmp_path / "archive" / SIGNATURE_NAME
    signing.sign_model_dir(model, pair.private, signature)
    signing.verify_model_dir(model, signature, pair.public)


def test_signature_covers_every_model_file_and_nothing_else(signed):
    """Every file under model/ is signed, dotfiles included; root documents are not."""
    predicate = signed_resources(signed.signature)
    names = {item["name"] for item in predicate["resources"]}
    assert names == set(MODEL_FILES)
    assert SIGNATURE_NAME not in names
    assert "ignore_paths" not in predicate["serialization"]
    assert predicate["serialization"]["method"] == "files"
    assert predicate["serialization"]["hash_type"] == "sha256"


def test_signature_file_and_root_documents_are_outside_what_is_signed(signed, tmp_path):
    """Moving, re-creating or changing root-level files leaves the signature valid."""
    (signed.root / "checksum.txt").write_text("rewritten\n")
    (signed.root / "mlflow-archive.json").write_text("{}\n")
    moved = tmp_path / "elsewhere" / "renamed.sig"
    moved.parent.mkdir()
    shutil.move(signed.signature, moved)
    signing.verify_model_dir(signed.model, moved, signed.keys.public)

    signing.sign_model_dir(signed.model, signed.keys.private, signed.signature)
    signing.verify_model_dir(signed.model, signed.signature, signed.keys.public)
    signing.verify_model_dir(signed.model, moved, signed.keys.public)
    assert signed_resources(moved)["resources"] == signed_resources(signed.signature)["resources"]


def test_git_files_at_the_model_root_are_signed_too(tmp_path, keys):
    """model-signing skips root .git* files by default; ours are signed like any file."""
    model = make_archive_tree(tmp_path / "archive")
    (model / ".gitignore").write_text("*.tmp\n")
    signature = tmp_path / "archive" / SIGNATURE_NAME
    signing.sign_model_dir(model, keys.private, signature)
    assert ".gitignore" in {item["name"] for item in signed_resources(signature)["resources"]}
    signing.verify_model_dir(model, signature, keys.public)
    result = model_signing_cli(
        "verify", "key", "model", "--no-ignore-git-paths",
        "--signature", SIGNATURE_NAME,
        "--public_key", keys.public,
        cwd=tmp_path / "archive",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    (model / ".gitignore").write_text("*\n")
    archive = SignedArchive(tmp_path / "archive", model, signature, keys)
    assert "model/.gitignore: differs from the signed file" in str(refused(archive))


# --------------------------------------------------------------------------- refusals


def test_unsigned_model_is_refused(signed):
    """No signature file: the archive is not signed, and the message says so."""
    signed.signature.unlink()
    error = refused(signed)
    assert str(error).startswith("the archive is not signed")
    assert isinstance(error, IntegrityError)


def test_other_key_is_refused(signed, other_keys):
    """A signature checked with an unrelated public key is refused, naming that key."""
    error = refused(signed, other_keys.public)
    assert "different key" in str(error)
    assert str(other_keys.public) in str(error)


def test_signature_made_with_other_key_is_refused(signed, other_keys):
    """Re-signing by someone else does not pass for the publisher's signature."""
    signing.sign_model_dir(signed.model, other_keys.private, signed.signature)
    assert "different key" in str(refused(signed))


def test_signature_without_key_hint_still_checks_the_key_quietly(signed, other_keys, capfd):
    """Old-format bundles make model-signing print a warning; the cryptography decides."""
    bundle = json.loads(signed.signature.read_text())
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    signed.signature.write_text(json.dumps(bundle))
    signing.verify_model_dir(signed.model, signed.signature, signed.keys.public)
    error = refused(signed, other_keys.public)
    assert "does not verify with public key" in str(error)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize("name", ["MLmodel", "data/nested/weights.bin", "code/.hidden"])
def test_flipped_byte_is_refused_and_named(signed, name):
    """One changed byte in any model file is refused, and the file is named."""
    path = signed.model / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    error = refused(signed)
    assert error.problems == [f"model/{name}: differs from the signed file"]
    assert f"model/{name}" in str(error)
    assert "changed after it was signed" in str(error)


@pytest.mark.parametrize("name", ["extra.txt", "data/nested/new.bin", ".gitattributes"])
def test_added_file_is_refused_and_named(signed, name):
    """A file added to the model after signing is refused, wherever it is."""
    path = signed.model / name
    path.write_bytes(b"smuggled in\n")
    error = refused(signed)
    assert error.problems == [f"model/{name}: added after signing"]


def test_removed_file_is_refused_and_named(signed):
    """A signed file that went missing is refused."""
    (signed.model / "requirements.txt").unlink()
    assert refused(signed).problems == ["model/requirements.txt: signed but missing"]


def test_several_problems_are_all_listed(signed):
    """Each changed, added and missing file gets its own line in ``problems``."""
    (signed.model / "MLmodel").write_bytes(b"changed\n")
    (signed.model / "new.txt").write_bytes(b"new\n")
    (signed.model / "requirements.txt").unlink()
    error = refused(signed)
    assert error.problems == [
        "model/MLmodel: differs from the signed file",
        "model/new.txt: added after signing",
        "model/requirements.txt: signed but missing",
    ]
    assert "(and 2 more)" in str(error)


def _payload_without_a_file(bundle: dict) -> dict:
    """The bundle with one resource dropped from its payload but the old signature kept."""
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"] = statement["predicate"]["resources"][1:]
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return bundle


def _flipped_signature(bundle: dict) -> dict:
    """The bundle with one byte of its ECDSA signature changed."""
    raw = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[10] ^= 0xFF
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    return bundle


def _wrong_media_type(bundle: dict) -> dict:
    bundle["mediaType"] = "application/octet-stream"
    return bundle


def _no_signatures(bundle: dict) -> dict:
    bundle["dsseEnvelope"]["signatures"] = []
    return bundle


def _no_verification_material(bundle: dict) -> dict:
    del bundle["verificationMaterial"]
    return bundle


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda text: b"",
        lambda text: b"\xff\xfe\x00binary garbage",
        lambda text: text.encode()[: len(text) // 2],
        lambda text: b"[1, 2, 3]",
        lambda text: b"{}",
        lambda text: b'{"dsseEnvelope": 5}',
        lambda text: json.dumps(_payload_without_a_file(json.loads(text))).encode(),
        lambda text: json.dumps(_flipped_signature(json.loads(text))).encode(),
        lambda text: json.dumps(_wrong_media_type(json.loads(text))).encode(),
        lambda text: json.dumps(_no_signatures(json.loads(text))).encode(),
        lambda text: json.dumps(_no_verification_material(json.loads(text))).encode(),
    ],
    ids=[
        "empty",
        "binary",
        "truncated",
        "json-list",
        "json-empty",
        "bad-envelope",
        "payload-edited",
        "signature-flipped",
        "media-type",
        "no-signatures",
        "no-verification-material",
    ],
)
def test_corrupt_signature_is_refused_with_signature_error(signed, corrupt):
    """Any damage to model.sig ends in a SignatureError line, never a raw exception."""
    signed.signature.write_bytes(corrupt(signed.signature.read_text()))
    error = refused(signed)
    assert SIGNATURE_NAME in str(error) or "public key" in str(error)


def _rsa_public(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.mark.parametrize(
    ("make_key", "expected"),
    [
        (lambda folder, pair: folder / "absent.pem", "no such file"),
        (lambda folder, pair: folder, "cannot read it"),
        (lambda folder, pair: _write(folder / "garbage.pem", b"hello"), "not a PEM key"),
        (lambda folder, pair: pair.private, "holds a private key"),
        (lambda folder, pair: _rsa_public(folder / "rsa.pub.pem"), "not an elliptic-curve key"),
        (
            lambda folder, pair: write_keypair(folder, "k1", ec.SECP256K1()).public,
            "Unsupported key for curve",
        ),
    ],
    ids=["missing", "a-folder", "garbage", "private-key", "rsa", "secp256k1"],
)
def test_unusable_public_key_is_refused(signed, tmp_path, make_key, expected):
    """A public key that cannot be used says which file and why, on one line."""
    folder = tmp_path / "bad-keys"
    folder.mkdir()
    key = make_key(folder, signed.keys)
    error = refused(signed, key)
    assert str(error).startswith(f"cannot use public key {key}: ")
    assert expected in str(error)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _encrypted_private(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


def _rsa_private(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.mark.parametrize(
    ("make_key", "expected"),
    [
        (lambda folder, pair: _write(folder / "garbage.pem", b"hello"), "not a PEM key"),
        (lambda folder, pair: pair.public, "holds a public key"),
        (lambda folder, pair: _encrypted_private(folder / "locked.pem"), "password"),
        (lambda folder, pair: _rsa_private(folder / "rsa.pem"), "not an elliptic-curve key"),
        (
            lambda folder, pair: write_keypair(folder, "k1", ec.SECP256K1()).private,
            "Unsupported key for curve",
        ),
    ],
    ids=["garbage", "public-key", "encrypted", "rsa", "secp256k1"],
)
def test_unusable_private_key_is_refused_on_sign(tmp_path, keys, make_key, expected):
    """A private key that cannot sign is an UnsupportedError, and no signature is written."""
    folder = tmp_path / "bad-keys"
    folder.mkdir()
    model = make_archive_tree(tmp_path / "archive")
    signature = tmp_path / "archive" / SIGNATURE_NAME
    key = make_key(folder, keys)
    with pytest.raises(UnsupportedError) as caught:
        signing.sign_model_dir(model, key, signature)
    assert str(caught.value).startswith(f"cannot sign with {key}: ")
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not signature.exists()


def test_missing_private_key_is_source_not_found(tmp_path):
    """A signing key path that does not exist is named as such."""
    model = make_archive_tree(tmp_path / "archive")
    with pytest.raises(SourceNotFoundError, match="absent.pem does not exist"):
        signing.sign_model_dir(model, tmp_path / "absent.pem", tmp_path / SIGNATURE_NAME)


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_symlink_in_model_is_refused_on_sign_and_verify(signed):
    """model-signing does not follow symlinks; both directions say so in one line."""
    (signed.model / "link").symlink_to(signed.model / "MLmodel")
    with pytest.raises(UnsupportedError, match="symlink"):
        signing.sign_model_dir(signed.model, signed.keys.private, signed.root / "again.sig")
    assert "symlink" in str(refused(signed))


def test_signature_inside_the_model_folder_is_a_caller_error(signed):
    """A signature cannot cover itself, so it must live outside model/."""
    with pytest.raises(ValueError, match="must lie outside what it signs"):
        signing.sign_model_dir(signed.model, signed.keys.private, signed.model / SIGNATURE_NAME)
    with pytest.raises(ValueError, match="must lie outside what it signs"):
        signing.verify_model_dir(signed.model, signed.model / SIGNATURE_NAME, signed.keys.public)


def test_missing_model_folder_is_source_not_found(signed):
    """Nothing to sign or check is a missing source, not a signature problem."""
    shutil.rmtree(signed.model)
    with pytest.raises(SourceNotFoundError):
        signing.verify_model_dir(signed.model, signed.signature, signed.keys.public)
    with pytest.raises(SourceNotFoundError):
        signing.sign_model_dir(signed.model, signed.keys.private, signed.signature)


# --------------------------------------------------------------------------- without the extra


def test_without_model_signing_both_directions_ask_for_the_extra(signed, monkeypatch):
    """With model_signing unimportable, sign and verify raise UnsupportedError naming the extra.

    ``None`` in ``sys.modules`` is how Python itself marks a module as unimportable; the
    entry is restored after the test.
    """
    monkeypatch.setitem(sys.modules, "model_signing", None)
    for call in (
        lambda: signing.sign_model_dir(signed.model, signed.keys.private, signed.signature),
        lambda: signing.verify_model_dir(signed.model, signed.signature, signed.keys.public),
    ):
        with pytest.raises(UnsupportedError) as caught:
            call()
        assert "pip install 'mlflow-archive-plugin[sign]'" in str(caught.value)
        assert "\n" not in str(caught.value)


def test_unsigned_archive_is_refused_even_without_the_extra(signed, monkeypatch):
    """Refusing an unsigned archive needs no signing library."""
    monkeypatch.setitem(sys.modules, "model_signing", None)
    signed.signature.unlink()
    assert str(refused(signed)).startswith("the archive is not signed")


def test_importing_the_module_does_not_import_model_signing():
    """The plugin works without the extra: model_signing is imported only when used."""
    code = (
        "import sys\n"
        "import mlflow_archive_plugin.trust.signing\n"
        "assert 'model_signing' not in sys.modules, 'imported eagerly'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
