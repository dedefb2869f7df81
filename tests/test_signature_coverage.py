"""What a signature covers: with a key, every file that is registered or loaded is signed, or
the archive is refused in one line; without a key, verify says what it could not authenticate.

A model with a 2 MiB weights file (stored, so import would leave it in the archive and read it
once) is registered in an embedded SQLite registry and exported signed. Each attack below is
that archive with one change an attacker without the private key can make: add, alter or
swap files, rewrite ``checksum.txt`` to match, drop or replay a signature, or sign again with
a key of their own. Every one must be refused by ``import_archive(verify_key=...)`` and by
``verify_archive(key=...)`` with its own one-line message, leave the sandbox as it was and
register nothing. The signed archive repacked without a change imports, so each refusal is
due to the attack alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import pytest
import test_hostile
from conftest import assert_user_error, cli, global_tracking_uri, registry_census
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_hostile import EMPTY_REGISTRY, Member, Sandbox, patch_zip_entry

from mlflow_archive_plugin import export_model, import_archive, verify_archive
from mlflow_archive_plugin.errors import ArchiveError, IntegrityError, SignatureError
from mlflow_archive_plugin.snapshot import METADATA_NAME
from mlflow_archive_plugin.storage.integrity import CHECKSUM_NAME, CHECKSUM_SIGNATURE_NAME
from mlflow_archive_plugin.trust.signing import SIGNATURE_NAME, sign_file

# test_hostile's sandbox (TMPDIR, working directory and an empty registry inside tmp_path).
sandbox = test_hostile.sandbox
base_members = test_hostile.base_members
base_archive = test_hostile.base_archive
template_registry = test_hostile.template_registry

MODEL_NAME = "signed-coverage"
WEIGHTS = "model/artifacts/weights.bin"
WEIGHTS_SIZE = 2 * 1024 * 1024


class Echo(mlflow.pyfunc.PythonModel):
    """Returns its input; the model only needs to carry a large weights file."""

    def predict(self, context, model_input):
        return model_input


@dataclass
class Keys:
    private: Path
    public: Path


def write_keys(folder: Path, stem: str) -> Keys:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{stem}.pem", folder / f"{stem}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return Keys(private, public)


@dataclass
class Source:
    folder: Path
    tracking_uri: str
    keys: Keys
    attacker: Keys
    signed: Path  # the signed zip, as export wrote it
    other_signed: Path  # another model's archive, signed with the same key
    unsigned: Path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Source:
    folder = tmp_path_factory.mktemp("signature-coverage")
    uri = f"sqlite:///{folder / 'source.db'}"
    weights = folder / "weights.bin"
    weights.write_bytes(random.Random(7).randbytes(WEIGHTS_SIZE))
    for name, artifacts in ((MODEL_NAME, {"weights": str(weights)}), ("other-model", None)):
        with global_tracking_uri(uri), mlflow.start_run():
            mlflow.pyfunc.log_model(name="model", python_model=Echo(), artifacts=artifacts,
                                    registered_model_name=name)
    keys, attacker = write_keys(folder, "publisher"), write_keys(folder, "attacker")
    signed = export_model(f"models:/{MODEL_NAME}/1", folder / "signed.zip", tracking_uri=uri,
                          sign_key=keys.private)
    other = export_model("models:/other-model/1", folder / "other.zip", tracking_uri=uri,
                         sign_key=keys.private)
    unsigned = export_model(f"models:/{MODEL_NAME}/1", folder / "unsigned.zip",
                            tracking_uri=uri)
    return Source(folder, uri, keys, attacker, Path(signed.location), Path(other.location),
                  Path(unsigned.location))


# --------------------------------------------------------------------------- archive surgery


def members_of(path: Path) -> list[Member]:
    with zipfile.ZipFile(path) as handle:
        return [Member(info.filename, handle.read(info)) for info in handle.infolist()]


def write_members(path: Path, members: list[Member]) -> Path:
    """Repack as a zip, each entry stored: the weights stay on import's one-pass path."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as handle:
        for member in members:
            handle.writestr(member.name, member.data)
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rewrite_checksums(members: list[Member]) -> list[Member]:
    """What anyone can do without a key: make checksum.txt match whatever the files are."""
    files = {m.name: sha256(m.data) for m in members
             if m.name not in (CHECKSUM_NAME, CHECKSUM_SIGNATURE_NAME)}
    text = "".join(f"{digest}  {name}\n" for name, digest in sorted(files.items())).encode()
    return [replace(m, data=text) if m.name == CHECKSUM_NAME else m for m in members]


def edit_metadata(members: list[Member], edit: Callable[[dict], None]) -> list[Member]:
    result = []
    for member in members:
        if member.name == METADATA_NAME:
            document = json.loads(member.data)
            edit(document)
            member = replace(member, data=json.dumps(document).encode())
        result.append(member)
    return result


def replace_file(members: list[Member], name: str, data: bytes) -> list[Member]:
    """``name`` holds ``data`` now, and the metadata's file list says so too."""

    def relist(document: dict) -> None:
        for record in document["files"]:
            if record["path"] == name:
                record.update(size=len(data), sha256=sha256(data))

    changed = [replace(m, data=data) if m.name == name else m for m in members]
    return edit_metadata(changed, relist)


def without(members: list[Member], *names: str) -> list[Member]:
    return [m for m in members if m.name not in names]


# --------------------------------------------------------------------------- the attacks


@dataclass(frozen=True)
class Attack:
    id: str
    build: Callable[[Source, list[Member], Path], list[Member] | Path]
    error: type[ArchiveError]
    part: str  # a substring of the one-line refusal


def _renamed_with_rewritten_checksums(src, members, folder):
    def rename(document):
        document["registered_model"]["name"] = "payroll-model"
        document["model_version"]["aliases"] = ["champion"]
        document["model_version"]["tags"] = {"approved": "yes"}

    return rewrite_checksums(edit_metadata(members, rename))


def _unsigned_member_listed_in_rewritten_checksums(src, members, folder):
    evil = Member("model/code/loader.py", b"import os\nos.system('id')\n")
    return rewrite_checksums([*members, evil])


def _second_mlmodel_outside_model_folder(src, members, folder):
    extra = Member("other/MLmodel", b"flavors:\n  python_function:\n    loader_module: os\n")
    return rewrite_checksums([*members, extra])


def _mlmodel_changed_with_rewritten_checksums(src, members, folder):
    mlmodel = next(m for m in members if m.name == "model/MLmodel")
    hostile = mlmodel.data.replace(b"loader_module: mlflow.pyfunc.model",
                                   b"loader_module: evil_loader")
    assert hostile != mlmodel.data
    return rewrite_checksums(replace_file(members, "model/MLmodel", hostile))


def _unlisted_member_beside_intact_checksums(src, members, folder):
    return [*members, Member("model/extra.py", b"print('not listed anywhere')\n")]


def _stored_weights_swapped_in_place(src, members, folder):
    """Same size, CRC fixed up: only the sha256 in the signed checksum.txt tells."""
    path = folder / "swapped.zip"
    path.write_bytes(src.signed.read_bytes())
    with zipfile.ZipFile(path) as handle:
        info = handle.getinfo(WEIGHTS)
        assert info.compress_type == zipfile.ZIP_STORED
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw = bytearray(path.read_bytes())
    raw[start:start + 16] = b"\xff" * 16
    path.write_bytes(bytes(raw))
    patch_zip_entry(path, WEIGHTS, crc=zlib.crc32(raw[start:start + info.file_size]))
    return path


def _signature_replayed_from_another_archive(src, members, folder):
    theirs = {m.name: m for m in members_of(src.other_signed)}
    return [theirs[CHECKSUM_SIGNATURE_NAME] if m.name == CHECKSUM_SIGNATURE_NAME else m
            for m in members]


def _checksum_signature_removed_model_signature_kept(src, members, folder):
    return rewrite_checksums(edit_metadata(without(members, CHECKSUM_SIGNATURE_NAME),
                                           lambda d: d["model_version"].update(aliases=["x"])))


def _both_signatures_removed(src, members, folder):
    return rewrite_checksums(without(members, CHECKSUM_SIGNATURE_NAME, SIGNATURE_NAME))


def _signed_again_with_the_attackers_key(src, members, folder):
    changed = rewrite_checksums(edit_metadata(
        members, lambda d: d["registered_model"].update(name="payroll-model")))
    text = next(m.data for m in changed if m.name == CHECKSUM_NAME)
    (folder / CHECKSUM_NAME).write_bytes(text)
    sign_file(folder / CHECKSUM_NAME, src.attacker.private, folder / "forged.sig")
    forged = (folder / "forged.sig").read_bytes()
    return [replace(m, data=forged) if m.name == CHECKSUM_SIGNATURE_NAME else m
            for m in changed]


REWRITTEN = "checksum.txt was changed after it was signed"
ATTACKS = [
    Attack("renamed-with-rewritten-checksums", _renamed_with_rewritten_checksums,
           SignatureError, REWRITTEN),
    Attack("unsigned-member-listed-in-rewritten-checksums",
           _unsigned_member_listed_in_rewritten_checksums, SignatureError, REWRITTEN),
    Attack("second-mlmodel-outside-model-folder", _second_mlmodel_outside_model_folder,
           SignatureError, REWRITTEN),
    Attack("mlmodel-changed-with-rewritten-checksums",
           _mlmodel_changed_with_rewritten_checksums, SignatureError, REWRITTEN),
    Attack("unlisted-member-beside-intact-checksums", _unlisted_member_beside_intact_checksums,
           IntegrityError, "model/extra.py: extra file not listed in checksum.txt"),
    Attack("stored-weights-swapped-in-place", _stored_weights_swapped_in_place,
           IntegrityError, "weights.bin"),
    Attack("signature-replayed-from-another-archive", _signature_replayed_from_another_archive,
           SignatureError, REWRITTEN),
    Attack("checksum-signature-removed-model-signature-kept",
           _checksum_signature_removed_model_signature_kept, SignatureError,
           "covers its model/ folder only"),
    Attack("both-signatures-removed", _both_signatures_removed, SignatureError,
           "the archive is not signed"),
    Attack("signed-again-with-the-attackers-key", _signed_again_with_the_attackers_key,
           SignatureError, "different key"),
]


def build(attack: Attack, src: Source, sb: Sandbox) -> Path:
    scratch = sb.root / "attacker"
    scratch.mkdir(exist_ok=True)
    built = attack.build(src, members_of(src.signed), scratch)
    path = sb.archives / f"{attack.id}.zip"
    if isinstance(built, Path):
        path.write_bytes(built.read_bytes())
        return path
    return write_members(path, built)


# --------------------------------------------------------------------------- with a key


def test_signed_archive_repacked_unchanged_imports_with_the_key(source, sandbox):
    path = write_members(sandbox.archives / "repacked.zip", members_of(source.signed))
    result = import_archive(path, tracking_uri=sandbox.registry_uri,
                            verify_key=source.keys.public)
    assert (result.name, result.version) == (MODEL_NAME, "1")
    report = verify_archive(path, key=source.keys.public)
    assert (report.ok, report.authenticated, report.signature) == (True, True, "verified")


def test_every_file_of_a_signed_archive_is_listed_by_the_signed_checksums(source):
    """The claim the design rests on: checksum.txt lists every member but its signature."""
    members = {m.name: m.data for m in members_of(source.signed)}
    listed = {line.split("  ", 1)[1] for line in members[CHECKSUM_NAME].decode().splitlines()}
    assert listed == set(members) - {CHECKSUM_NAME, CHECKSUM_SIGNATURE_NAME}
    assert {METADATA_NAME, SIGNATURE_NAME, "model/MLmodel", WEIGHTS} <= listed


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_import_with_a_key_refuses_the_attack_in_one_line(source, sandbox, attack):
    path = build(attack, source, sandbox)
    with sandbox.unchanged(), pytest.raises(attack.error) as caught:
        import_archive(path, tracking_uri=sandbox.registry_uri, verify_key=source.keys.public)
    message = str(caught.value)
    assert "\n" not in message
    assert attack.part in message
    assert registry_census(sandbox.registry_uri) == EMPTY_REGISTRY


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_verify_with_a_key_refuses_the_attack(source, sandbox, attack):
    path = build(attack, source, sandbox)
    report = verify_archive(path, key=source.keys.public)
    assert not report.ok and not report.authenticated, report
    assert any(attack.part in problem for problem in report.problems), report.problems


@pytest.mark.parametrize("attack", ATTACKS[:1] + ATTACKS[-3:], ids=lambda a: a.id)
def test_cli_import_with_a_key_refuses_the_attack_with_one_error_line(source, sandbox, attack):
    path = build(attack, source, sandbox)
    proc = cli("import", str(path), "--tracking-uri", sandbox.registry_uri, "--verify-key",
               str(source.keys.public), "-q", cwd=sandbox.cwd)
    assert attack.part in assert_user_error(proc)
    assert registry_census(sandbox.registry_uri) == EMPTY_REGISTRY


def test_import_with_a_key_refuses_an_unsigned_archive_before_reading_its_metadata(
        source, sandbox):
    """With a key, the metadata is not even parsed unless the signature covers it."""
    members = edit_metadata(members_of(source.unsigned), lambda d: d.clear())
    path = write_members(sandbox.archives / "unsigned.zip", rewrite_checksums(members))
    with pytest.raises(SignatureError, match="the archive is not signed"):
        import_archive(path, tracking_uri=sandbox.registry_uri, verify_key=source.keys.public)


# --------------------------------------------------------------------------- without a key


def verify_cli(path: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("verify", str(path), "-q", *extra, cwd=cwd)


def test_verify_without_a_key_says_an_unsigned_archive_is_not_authenticated(source, tmp_path):
    report = verify_archive(source.unsigned)
    assert (report.ok, report.authenticated, report.signature) == (True, False, "unsigned")
    proc = verify_cli(source.unsigned, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("intact: "), proc.stdout
    assert "unsigned" in proc.stdout and "not who made them" in proc.stdout
    assert not proc.stdout.startswith("OK")


def test_verify_without_a_key_says_the_signature_was_not_checked(source, tmp_path):
    report = verify_archive(source.signed)
    assert (report.ok, report.authenticated, report.signature) == (True, False, "unchecked")
    proc = verify_cli(source.signed, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "signature was not checked" in proc.stdout and "--key" in proc.stdout
    assert not proc.stdout.startswith("OK")


def test_verify_without_a_key_catches_checksums_rewritten_after_signing(source, sandbox):
    path = build(ATTACKS[0], source, sandbox)
    report = verify_archive(path)
    assert not report.ok and report.signature == "rewritten"
    proc = verify_cli(path, sandbox.cwd)
    line = assert_user_error(proc)
    assert "checksum.txt: rewritten after signing" in line


def test_verify_without_a_key_says_a_model_only_signature_leaves_metadata_unsigned(
        source, sandbox):
    members = rewrite_checksums(without(members_of(source.signed), CHECKSUM_SIGNATURE_NAME))
    path = write_members(sandbox.archives / "model-only.zip", members)
    report = verify_archive(path)
    assert (report.ok, report.signature) == (True, "model-only")
    assert METADATA_NAME in report.trust and "not authenticated" in report.trust


def test_verify_with_the_key_prints_ok_only_when_authenticated(source, tmp_path):
    proc = verify_cli(source.signed, tmp_path, "--key", str(source.keys.public))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: ") and "verifies with" in proc.stdout


def test_inspect_tells_a_whole_archive_signature_from_a_model_only_one(source, sandbox):
    assert "signed (checksum.sig" in cli("inspect", str(source.signed), cwd=sandbox.cwd).stdout
    members = rewrite_checksums(without(members_of(source.signed), CHECKSUM_SIGNATURE_NAME))
    path = write_members(sandbox.archives / "model-only.zip", members)
    assert "only model/ signed" in cli("inspect", str(path), cwd=sandbox.cwd).stdout


# --------------------------------------------------------------------------- plain tools


def test_extracted_signed_archive_verifies_with_model_signing_and_sha256sum(source, tmp_path):
    with zipfile.ZipFile(source.signed) as handle:
        handle.extractall(tmp_path)
    public = str(source.keys.public)
    runs = [
        [sys.executable, "-m", "model_signing", "verify", "key", "model",
         "--signature", SIGNATURE_NAME, "--public_key", public],
        [sys.executable, "-m", "model_signing", "verify", "key", CHECKSUM_NAME,
         "--signature", CHECKSUM_SIGNATURE_NAME, "--public_key", public],
        ["sha256sum", "--quiet", "-c", CHECKSUM_NAME],
    ]
    for command in runs:
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
    (tmp_path / METADATA_NAME).write_text("{}")
    with contextlib.suppress(FileNotFoundError):
        proc = subprocess.run(runs[2], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode != 0


@pytest.mark.parametrize("fmt, container", [("mar", "tar.gz"), ("mlarchive", "zip")])
def test_other_layouts_sign_every_file_too(source, tmp_path, fmt, container):
    result = export_model(f"models:/{MODEL_NAME}/1", tmp_path / "out", format=fmt,
                          container=container, tracking_uri=source.tracking_uri,
                          sign_key=source.keys.private)
    report = verify_archive(result.location, key=source.keys.public)
    assert (report.ok, report.authenticated) == (True, True), report.problems
    assert verify_archive(result.location, key=source.attacker.public).ok is False


def test_a_deeply_nested_checksum_signature_is_refused_in_one_line(source, sandbox):
    deep = Member(CHECKSUM_SIGNATURE_NAME, b"[" * 200_000 + b"]" * 200_000)
    members = [deep if m.name == CHECKSUM_SIGNATURE_NAME else m for m in members_of(source.signed)]
    path = write_members(sandbox.archives / "deep-sig.zip", members)
    with pytest.raises(SignatureError, match="checksum.sig is damaged"):
        import_archive(path, tracking_uri=sandbox.registry_uri, verify_key=source.keys.public)
    assert not verify_archive(path).ok
    assert registry_census(sandbox.registry_uri) == EMPTY_REGISTRY
