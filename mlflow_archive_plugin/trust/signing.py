"""Signatures over an archive, made and checked by OpenSSF ``model-signing``.

A signed archive carries two Sigstore bundles, written by ``model-signing`` with one
elliptic-curve key (PEM), offline:

- ``checksum.sig`` signs ``checksum.txt``. ``checksum.txt`` lists every other file of the
  archive with its SHA-256 (the metadata document and ``model.sig`` included), and reading
  refuses any file it does not list, so this one signature covers everything that is
  registered or loaded: model files, ``MLmodel``, names, aliases, tags. ``checksum.sig`` is
  the one file ``checksum.txt`` cannot list. This is the signature ``--verify-key`` checks.
- ``model.sig`` signs the ``model/`` folder alone, so the model keeps verifying with
  ``model_signing verify key model --signature model.sig --public_key KEY.pub`` once it is
  extracted, without this plugin and without the archive around it.

Both verify with model-signing's own CLI: ``model_signing verify key checksum.txt
--signature checksum.sig --public_key KEY.pub && sha256sum -c checksum.txt`` authenticates a
whole extracted archive.

``model-signing`` is an optional extra (``mlflow-archive-plugin[sign]``): it is imported only
when a signature is made or checked, so everything else works without it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from mlflow_archive_plugin.errors import (
    CorruptArchiveError,
    SignatureError,
    SourceNotFoundError,
    UnsafeArchiveError,
    UnsupportedError,
)
from mlflow_archive_plugin.storage.integrity import CHECKSUM_SIGNATURE_NAME
from mlflow_archive_plugin.trust.parsing import load_json

__all__ = [
    "CHECKSUM_SIGNATURE_NAME",
    "SIGNATURE_NAME",
    "SignatureError",
    "sign_file",
    "sign_model_dir",
    "signed_digest",
    "verify_checksum_signature",
    "verify_model_dir",
]

SIGNATURE_NAME = "model.sig"

_INSTALL = "install it with: pip install 'mlflow-archive-plugin[sign]'"
_FRESH_COPY = "do not use it, and get a fresh copy from its publisher"
# A bundle lists one name and digest per signed file: about 150 bytes each.
MAX_BUNDLE_BYTES = 16 * 1024**2
# Exception texts can be long or span lines; a message stays one short line.
_DETAIL_LIMIT = 200


def sign_model_dir(model_dir: Path, private_key: Path, signature: Path) -> None:
    """Sign every file under ``model_dir`` with an EC ``private_key`` (PEM) into ``signature``.

    ``signature`` must lie outside ``model_dir``: a signature cannot cover itself.

    Raises:
        UnsupportedError: ``model-signing`` is not installed, or the key cannot sign
            (not a PEM elliptic-curve private key, password protected, unsupported curve),
            or the model folder holds something that cannot be hashed (a symlink).
        SourceNotFoundError: ``model_dir`` or ``private_key`` does not exist.
        ValueError: ``signature`` lies inside ``model_dir``.
    """
    model_dir = Path(model_dir)
    _require_model_dir(model_dir)
    _sign(model_dir, Path(private_key), Path(signature))


def sign_file(path: Path, private_key: Path, signature: Path) -> None:
    """Sign the one file ``path`` (an archive's ``checksum.txt``) into ``signature``.

    Raises the same errors as :func:`sign_model_dir`.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceNotFoundError(f"file to sign {path} does not exist")
    _sign(path, Path(private_key), Path(signature))


def _sign(target: Path, private_key: Path, signature: Path) -> None:
    _require_outside(target, signature)
    model_signing = _import_model_signing()
    if not private_key.exists():
        raise SourceNotFoundError(
            f"signing key {private_key} does not exist; pass the path of a PEM private key"
        )
    problem = _key_problem(private_key, private=True)
    if problem is None:
        try:
            with _quiet():
                config = model_signing.signing.Config().use_elliptic_key_signer(
                    private_key=private_key
                )
        except Exception as exc:  # the library's own key checks, e.g. the curve
            problem = _detail(exc)
    if problem is not None:
        raise UnsupportedError(
            f"cannot sign with {private_key}: {problem}; "
            "use an unencrypted elliptic-curve (P-256, P-384 or P-521) private key in PEM"
        )
    try:
        with _quiet():
            config.set_hashing_config(_hashing_config(model_signing)).sign(target, signature)
    except ValueError as exc:  # raised while hashing: a symlink or special file
        raise UnsupportedError(
            f"cannot sign {target}: {_detail(exc)}; keep only regular files in the model"
        ) from exc


def verify_model_dir(model_dir: Path, signature: Path, public_key: Path) -> None:
    """Check that ``signature`` signs exactly the files of ``model_dir`` with ``public_key``.

    Every file must be signed and unchanged, and no file may have been added or removed.

    Raises:
        SignatureError: the signature file is missing or damaged, was made with another key,
            or the model files differ from what was signed (``problems`` then names each
            file), or the public key cannot be read.
        UnsupportedError: ``model-signing`` is not installed.
        SourceNotFoundError: ``model_dir`` does not exist.
        ValueError: ``signature`` lies inside ``model_dir``.
    """
    model_dir = Path(model_dir)
    _require_model_dir(model_dir)
    _verify(model_dir, Path(signature), Path(public_key),
            lambda model_signing, bundle, text: _mismatch_error(
                model_signing, model_dir, bundle, text))


def verify_checksum_signature(checksums: Path, signature: Path, public_key: Path) -> None:
    """Check that ``signature`` signs the file ``checksums`` (an archive's ``checksum.txt``)
    as it is now, with ``public_key``.

    Raises:
        SignatureError: the archive has no such signature, the signature is damaged or was
            made with another key, ``checksums`` changed after signing, or the key cannot
            be read.
        UnsupportedError: ``model-signing`` is not installed.
    """
    checksums, signature = Path(checksums), Path(signature)
    if signature.is_file() and not checksums.is_file():
        raise SignatureError(f"the archive has {signature.name} but no {checksums.name}, the "
                             f"file it signs; {_FRESH_COPY}")

    def rewritten(model_signing, bundle, text) -> SignatureError:
        return SignatureError(
            f"{checksums.name} was changed after it was signed ({signature.name} signs "
            f"another {checksums.name}), so the archive's files are not the signed ones: "
            + _FRESH_COPY
        )

    _verify(checksums, signature, Path(public_key), rewritten)


def signed_digest(signature: Path) -> str | None:
    """The SHA-256 that ``signature`` claims for the one file it signs, read without a key.

    This authenticates nothing (anyone can write such a claim); it only tells, when the
    claim and the file disagree, that the file was changed by someone who could not sign it
    again. None when the signature is not a model-signing bundle over a single file.
    """
    try:
        statement = json.loads(base64.b64decode(
            _read_bundle(Path(signature))["dsseEnvelope"]["payload"], validate=True))
        (resource,) = statement["predicate"]["resources"]
        digest = resource["digest"]
    except (SignatureError, KeyError, TypeError, ValueError):
        return None
    return digest if isinstance(digest, str) else None


def _verify(target: Path, signature: Path, public_key: Path, mismatch) -> None:
    _require_outside(target, signature)
    # Checked before the import: an unsigned archive is refused even without the extra.
    if not signature.is_file():
        raise SignatureError(
            f"the archive is not signed (it has no {signature.name}); ask its publisher for "
            "an archive exported with --sign-key, or leave out the key to check checksums only"
        )
    model_signing = _import_model_signing()
    bundle = _read_bundle(signature)
    config = _verifier(model_signing, public_key)
    from cryptography.exceptions import InvalidSignature

    try:
        with _quiet():
            config.set_hashing_config(_hashing_config(model_signing)).verify(target, signature)
    except InvalidSignature as exc:
        raise SignatureError(
            f"{signature.name} does not verify with public key {public_key}: it was made with "
            "another key or altered; check the key with the archive's publisher"
        ) from exc
    except ValueError as exc:
        # model-signing refuses everything with ValueError; only the text tells which refusal
        # it is (the tests pin these texts against the installed version).
        text = str(exc)
        if text.startswith("Key mismatch"):
            raise SignatureError(
                f"{signature.name} was signed with a different key than public key "
                f"{public_key}; check that you have the publisher's public key"
            ) from exc
        if text.startswith("Signature mismatch"):
            raise mismatch(model_signing, bundle, text) from exc
        if text.startswith("Cannot use"):  # raised while hashing: a symlink or special file
            raise SignatureError(f"cannot check {target}: {_detail(exc)}") from exc
        raise _damaged(signature, exc) from exc
    except OSError as exc:
        raise SignatureError(
            f"cannot read {exc.filename or target} to check its signature: "
            f"{exc.strerror or _detail(exc)}"
        ) from exc
    except Exception as exc:  # whatever a malformed bundle makes the parser raise
        raise _damaged(signature, exc) from exc


def _import_model_signing() -> ModuleType:
    try:
        with _quiet():
            import model_signing
    except ImportError as exc:
        raise UnsupportedError(
            f"signatures need the model-signing package, which cannot be imported ({exc}); "
            + _INSTALL
        ) from exc
    return model_signing


def _hashing_config(model_signing: ModuleType) -> Any:
    """The one hashing setup used to sign and to verify.

    SHA-256 per file is what ``model_signing verify`` hashes with by default, so its CLI
    checks our signatures as they are. Its default also skips ``.git*`` paths at the model
    root; those are signed here too, so no file of a model escapes the signature.
    """
    return (
        model_signing.hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256")
        .set_ignored_paths(paths=[], ignore_git_paths=False)
    )


def _verifier(model_signing: ModuleType, public_key: Path) -> Any:
    problem = _key_problem(public_key, private=False)
    if problem is None:
        try:
            with _quiet():
                return model_signing.verifying.Config().use_elliptic_key_verifier(
                    public_key=public_key
                )
        except Exception as exc:  # the library's own key checks, e.g. the curve
            problem = _detail(exc)
    raise SignatureError(
        f"cannot use public key {public_key}: {problem}; pass the PEM public key "
        "that pairs with the archive's signing key"
    )


def _key_problem(path: Path, *, private: bool) -> str | None:
    """What makes ``path`` unusable as an EC key of the wanted kind, or None.

    ``model-signing`` would fail on these too, but with messages (or an AttributeError for
    an RSA key) that do not say what to do.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or _detail(exc)})"
    if private and b"PUBLIC KEY-----" in data:
        return "it holds a public key, and signing needs the private key"
    if not private and b"PRIVATE KEY-----" in data:
        return "it holds a private key; derive its public key (openssl ec -in KEY -pubout)"
    try:
        if private:
            key: Any = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_pem_public_key(data)
    except TypeError:  # cryptography's way of saying a password is needed
        return "it is protected by a password, which is not supported"
    except Exception as exc:  # ValueError or UnsupportedAlgorithm: not a key we can read
        return f"not a PEM key ({_detail(exc)})"
    wanted = ec.EllipticCurvePrivateKey if private else ec.EllipticCurvePublicKey
    if not isinstance(key, wanted):
        return "not an elliptic-curve key"
    return None


def _read_bundle(signature: Path) -> dict[str, Any]:
    """The signature file as JSON, refused early with one clear message if it is not; its
    size and nesting are bounded before it is parsed (it comes from the archive)."""
    try:
        bundle = load_json(signature.read_bytes(), what=signature.name,
                           max_bytes=MAX_BUNDLE_BYTES)
    except OSError as exc:
        raise SignatureError(f"cannot read {signature}: {exc.strerror or _detail(exc)}") from exc
    except (CorruptArchiveError, UnsafeArchiveError) as exc:
        raise _damaged(signature, exc) from exc
    if not isinstance(bundle, dict) or "dsseEnvelope" not in bundle:
        raise _damaged(signature, "it is not a Sigstore bundle")
    return bundle


def _mismatch_error(
    model_signing: ModuleType, model_dir: Path, bundle: dict[str, Any], text: str
) -> SignatureError:
    """The refusal of a model whose files differ from the signed ones, naming each file."""
    try:
        problems = _file_problems(model_signing, model_dir, bundle)
    except Exception:  # the names are a courtesy; the refusal stands without them
        problems = []
    if not problems:
        problems = [_detail(text)]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return SignatureError(
        f"signature check failed: {problems[0]}{more}; the model was changed after it was "
        f"signed: {_FRESH_COPY}",
        problems,
    )


def _file_problems(model_signing: ModuleType, model_dir: Path, bundle: dict[str, Any]) -> list[str]:
    """One line per model file that was changed, added or removed since signing.

    Only called after ``model-signing`` verified the signature and refused the files, so
    the payload read here is authentic; it is read for the file names alone.
    """
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    predicate = statement["predicate"]
    signed = {item["name"]: item["digest"] for item in predicate["resources"]}
    hashing = _hashing_config(model_signing)
    ignored = predicate["serialization"].get("ignore_paths", [])
    if ignored:
        hashing.add_ignored_paths(model_path=model_dir, paths=ignored)
    with _quiet():
        found = {
            item.identifier: item.digest.digest_hex
            for item in hashing.hash(model_dir).resource_descriptors()
        }
    prefix = f"{model_dir.name}/"
    problems = [
        f"{prefix}{name}: differs from the signed file"
        for name in sorted(signed.keys() & found.keys())
        if signed[name] != found[name]
    ]
    problems += [f"{prefix}{name}: added after signing" for name in sorted(found - signed.keys())]
    problems += [f"{prefix}{name}: signed but missing" for name in sorted(signed - found.keys())]
    return problems


def _damaged(signature: Path, cause: object) -> SignatureError:
    # A KeyError's text is the bare key, which reads as nothing without this.
    detail = f"no {cause} field" if isinstance(cause, KeyError) else _detail(cause)
    return SignatureError(
        f"{signature.name} is damaged or not a model-signing signature ({detail}); " + _FRESH_COPY
    )


def _require_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise SourceNotFoundError(f"model folder {model_dir} does not exist")


def _require_outside(target: Path, signature: Path) -> None:
    if signature.resolve().is_relative_to(target.resolve()):
        raise ValueError(f"signature {signature} must lie outside what it signs, {target}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow what ``model-signing`` prints (it warns on stdout), so ours stays clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _detail(cause: object) -> str:
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."
