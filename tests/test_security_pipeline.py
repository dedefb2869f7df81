"""Signatures and pickle scanning through the public API, on a model in an embedded registry."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import register_iris_model
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mlflow import MlflowClient

from mlflow_archive_plugin import export_model, import_archive, inspect_archive, verify_archive
from mlflow_archive_plugin.errors import SignatureError, UnsafeArchiveError
from mlflow_archive_plugin.storage.integrity import CHECKSUM_NAME, FileRecord, render_checksums

MODEL_NAME = "signed-iris"


class _RunsSystem:
    """Pickling this records a call to os.system; nothing here ever unpickles it."""

    def __reduce__(self):
        return os.system, ("touch /tmp/mlflow-archive-pickle-ran",)


def _write_key_pair(folder: Path, stem: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = folder / f"{stem}.pem"
    public = folder / f"{stem}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A registered sklearn model in an embedded SQLite registry, and two EC key pairs."""
    folder = tmp_path_factory.mktemp("security-source")
    uri = f"sqlite:///{folder / 'source.db'}"
    register_iris_model(uri, MODEL_NAME)
    keys = {"good": _write_key_pair(folder, "good"), "other": _write_key_pair(folder, "other")}
    return folder, uri, keys


def _target(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'target.db'}"


def _registered_names(uri: str) -> list[str]:
    return [m.name for m in MlflowClient(uri).search_registered_models()]


def test_signed_export_verifies_with_its_public_key(source, tmp_path):
    _, uri, keys = source
    result = export_model(f"models:/{MODEL_NAME}/1", tmp_path / "a.zip", tracking_uri=uri,
                          sign_key=keys["good"][0])
    report = verify_archive(result.location, key=keys["good"][1])
    assert report.ok, report.problems
    assert inspect_archive(result.location).signed


def test_verify_with_another_key_fails_and_says_so(source, tmp_path):
    _, uri, keys = source
    result = export_model(f"models:/{MODEL_NAME}/1", tmp_path / "a.zip", tracking_uri=uri,
                          sign_key=keys["good"][0])
    report = verify_archive(result.location, key=keys["other"][1])
    assert not report.ok
    assert "different key" in report.problems[0]


def test_verify_with_a_key_refuses_an_unsigned_archive(source, tmp_path):
    _, uri, keys = source
    result = export_model(f"models:/{MODEL_NAME}/1", tmp_path / "a.zip", tracking_uri=uri)
    report = verify_archive(result.location, key=keys["good"][1])
    assert not report.ok
    assert "not signed" in report.problems[0]


def test_import_with_the_wrong_key_registers_nothing(source, tmp_path):
    _, uri, keys = source
    result = export_model(f"models:/{MODEL_NAME}/1", tmp_path / "a.zip", tracking_uri=uri,
                          sign_key=keys["good"][0])
    with pytest.raises(SignatureError):
        import_archive(result.location, tracking_uri=_target(tmp_path),
                       verify_key=keys["other"][1])
    assert _registered_names(_target(tmp_path)) == []


def test_import_with_the_right_key_registers_the_version(source, tmp_path):
    _, uri, keys = source
    result = export_model(f"models:/{MODEL_NAME}/1", tmp_path / "a.zip", tracking_uri=uri,
                          sign_key=keys["good"][0])
    imported = import_archive(result.location, tracking_uri=_target(tmp_path),
                              verify_key=keys["good"][1])
    assert (imported.name, imported.version) == (MODEL_NAME, "1")


def _rewrite_checksums(root: Path) -> None:
    records = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != CHECKSUM_NAME):
        records.append(FileRecord.of_bytes(path.relative_to(root).as_posix(), path.read_bytes()))
    (root / CHECKSUM_NAME).write_bytes(render_checksums(records))


def test_a_signature_made_by_model_signings_own_cli_verifies(source, tmp_path):
    """The other direction: model-signing signs an extracted archive, the plugin verifies it."""
    _, uri, keys = source
    folder = Path(export_model(f"models:/{MODEL_NAME}/1", tmp_path / "a", tracking_uri=uri,
                               container="folder").location)
    signed = subprocess.run(
        [sys.executable, "-m", "model_signing", "sign", "key", "model",
         "--signature", "model.sig", "--private_key", str(keys["good"][0])],
        cwd=folder, capture_output=True, text=True, check=False,
    )
    assert signed.returncode == 0, signed.stderr
    _rewrite_checksums(folder)
    signed = subprocess.run(
        [sys.executable, "-m", "model_signing", "sign", "key", CHECKSUM_NAME,
         "--signature", "checksum.sig", "--private_key", str(keys["good"][0])],
        cwd=folder, capture_output=True, text=True, check=False,
    )
    assert signed.returncode == 0, signed.stderr
    report = verify_archive(folder, key=keys["good"][1])
    assert report.ok, report.problems
    assert report.authenticated


def _archive_with_pickle(source, tmp_path: Path, payload: object) -> Path:
    _, uri, _ = source
    folder = Path(export_model(f"models:/{MODEL_NAME}/1", tmp_path / "p", tracking_uri=uri,
                               container="folder").location)
    (folder / "model" / "extra.pkl").write_bytes(pickle.dumps(payload))
    # Keep the metadata's file list honest too, so only the pickle is under test.
    document = json.loads((folder / "mlflow-archive.json").read_text())
    document["files"].append(FileRecord.of_bytes(
        "model/extra.pkl", (folder / "model" / "extra.pkl").read_bytes()).to_dict())
    (folder / "mlflow-archive.json").write_text(json.dumps(document))
    _rewrite_checksums(folder)
    return folder


def test_strict_scan_refuses_a_pickle_that_calls_os_system(source, tmp_path):
    archive = _archive_with_pickle(source, tmp_path, _RunsSystem())
    with pytest.raises(UnsafeArchiveError, match="extra.pkl"):
        import_archive(archive, tracking_uri=_target(tmp_path), scan="strict")
    assert _registered_names(_target(tmp_path)) == []
    assert not Path("/tmp/mlflow-archive-pickle-ran").exists()


def test_default_scan_imports_but_warns_about_the_pickle(source, tmp_path):
    archive = _archive_with_pickle(source, tmp_path, _RunsSystem())
    imported = import_archive(archive, tracking_uri=_target(tmp_path))
    assert any("extra.pkl" in line and "os" in line for line in imported.warnings)
    assert not Path("/tmp/mlflow-archive-pickle-ran").exists()


def test_inspect_lists_the_pickle_and_its_dangerous_global(source, tmp_path):
    archive = _archive_with_pickle(source, tmp_path, _RunsSystem())
    pickles = {entry["path"]: entry for entry in inspect_archive(archive).pickles}
    assert "model/extra.pkl" in pickles
    assert any("system" in name for name in pickles["model/extra.pkl"]["dangerous"])
