"""Export never packs what is not the model's, and records no secret (issue 15, item 6).

Symbolic links planted in a model's artifacts (generated here, in a real MLflow store whose
artifacts lie on this machine, the case where export reads the model folder where it lies):
one that leads outside the model folder, nowhere, or into a loop, and a FIFO, are each refused
in one line with nothing written at the destination and nothing outside the sandbox changed;
``--follow-symlinks`` packs a target's bytes as a regular file. Secrets (user:password,
signed-URL and token query parameters) in the tracking URI, in tags, params, descriptions and
in ``MLmodel`` are absent from every byte of the archive in every format, while the model's
files stay byte-identical and ``MLmodel`` changes in its URIs only.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import assert_user_error, cli, global_tracking_uri, sha256_file, unique
from mlflow import MlflowClient
from mlflow.models import infer_signature

from mlflow_archive_plugin.storage.location import (
    is_secret_name,
    redact_data,
    redact_text,
    redact_uri,
)

SECRET = "s3cr3t-Pa55"  # every secret planted below contains this, so one search finds all
SIGNED = (f"https://bucket.s3.amazonaws.com/data.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          f"&X-Amz-Credential=AKIA{SECRET}&X-Amz-Signature={SECRET}abc&X-Amz-Expires=60")
WITH_PASSWORD = f"postgresql://trainer:{SECRET}@db.internal:5432/features"
WITH_TOKEN = f"https://hub.example.test/models/7?access_token={SECRET}&rev=main"


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def log_model(tracking_uri: str, **metadata) -> tuple[str, Path]:
    """Log a small pyfunc model (plus a weights file) and return its models:/m-ID URI and
    the local folder its artifacts lie in."""
    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=sandbox_experiment(tracking_uri)) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(),
                                       pip_requirements=["mlflow"], metadata=metadata or None)
    logged = client.get_logged_model(info.model_id)
    folder = Path(logged.artifact_location.removeprefix("file://"))
    assert (folder / "MLmodel").is_file(), logged.artifact_location
    (folder / "weights.bin").write_bytes(os.urandom(4096))
    del run
    return f"models:/{info.model_id}", folder


def sandbox_experiment(tracking_uri: str) -> str:
    """A new experiment whose artifacts lie beside the SQLite file, inside the sandbox."""
    sandbox = Path(tracking_uri.removeprefix("sqlite:///")).parent
    return MlflowClient(tracking_uri).create_experiment(
        unique("hygiene"), artifact_location=(sandbox / "artifacts").as_uri())


def tree_state(root: Path) -> dict[str, str]:
    """Every entry below ``root`` (links as links, never followed) and what it holds."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                state[rel] = "link->" + os.readlink(path)
            elif path.is_file():
                state[rel] = sha256_file(path)
            elif path.is_dir():
                state[rel] = "dir"
            else:
                state[rel] = "special"
    return state


@pytest.fixture()
def store(tmp_path):
    """A real MLflow store on this machine (SQLite and a local artifact root) in a sandbox
    folder with a secret file beside it that no archive may hold."""
    sandbox = tmp_path / "sandbox"
    (sandbox / "outside").mkdir(parents=True)
    (sandbox / "outside" / "id_rsa").write_text(f"PRIVATE KEY {SECRET}\n")
    (sandbox / "out").mkdir()
    return sandbox, f"sqlite:///{sandbox / 'mlflow.db'}"


# ----------------------------------------------------------------------- planted links


def plant_outside(folder: Path, sandbox: Path) -> str:
    (folder / "extra.txt").symlink_to(sandbox / "outside" / "id_rsa")
    return "outside the model folder"


def plant_relative_escape(folder: Path, sandbox: Path) -> str:
    depth = len(folder.relative_to(sandbox).parts)
    (folder / "code").mkdir(exist_ok=True)
    (folder / "code" / "key.py").symlink_to("../" * (depth + 1) + "outside/id_rsa")
    return "outside the model folder"


def plant_folder_outside(folder: Path, sandbox: Path) -> str:
    (folder / "assets").symlink_to(sandbox / "outside", target_is_directory=True)
    return "outside the model folder"


def plant_dangling(folder: Path, sandbox: Path) -> str:
    (folder / "gone.bin").symlink_to(folder / "never-written.bin")
    return "a dangling link"


def plant_loop(folder: Path, sandbox: Path) -> str:
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "again").symlink_to("..", target_is_directory=True)
    return "a loop"


def plant_fifo(folder: Path, sandbox: Path) -> str:
    os.mkfifo(folder / "pipe")
    return "not a regular file"


PLANTS = {
    "absolute-link-outside": plant_outside,
    "relative-link-escaping": plant_relative_escape,
    "folder-link-outside": plant_folder_outside,
    "dangling-link": plant_dangling,
    "link-loop": plant_loop,
    "fifo": plant_fifo,
}


@pytest.mark.parametrize("plant", list(PLANTS))
@pytest.mark.parametrize("fmt", ["mlflow", "mar"])
def test_export_refuses_what_is_not_the_models_in_one_line(store, plant, fmt):
    sandbox, uri = store
    model_uri, folder = log_model(uri)
    words = PLANTS[plant](folder, sandbox)
    before = tree_state(sandbox)
    proc = cli("export", model_uri, "-o", str(sandbox / "out" / f"a.{fmt}.zip"),
               "--format", fmt, "--tracking-uri", uri, "-q", cwd=sandbox)
    line = assert_user_error(proc)
    assert words in line, line
    assert "refused model file" in line, line
    assert not any((sandbox / "out").iterdir()), "something was written at the destination"
    after = tree_state(sandbox)
    assert {k: v for k, v in after.items() if k != "mlflow.db"} == {
        k: v for k, v in before.items() if k != "mlflow.db"}


def test_an_escaping_link_names_the_option_that_packs_it(store):
    sandbox, uri = store
    model_uri, folder = log_model(uri)
    plant_outside(folder, sandbox)
    line = assert_user_error(cli("export", model_uri, "-o", str(sandbox / "out" / "a.zip"),
                                 "--tracking-uri", uri, "-q", cwd=sandbox))
    assert "--follow-symlinks" in line and "'extra.txt'" in line, line


def test_follow_symlinks_packs_the_targets_bytes_as_regular_files(store):
    sandbox, uri = store
    model_uri, folder = log_model(uri)
    plant_outside(folder, sandbox)
    plant_folder_outside(folder, sandbox)
    (folder / "weights-alias.bin").symlink_to("weights.bin")  # a link that stays inside
    model_before = tree_state(folder)
    dest = sandbox / "out" / "followed.zip"
    proc = cli("export", model_uri, "-o", str(dest), "--tracking-uri", uri, "-q",
               "--follow-symlinks", cwd=sandbox)
    assert proc.returncode == 0, proc.stderr
    secret = (sandbox / "outside" / "id_rsa").read_bytes()
    with zipfile.ZipFile(dest) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        for name in ("model/extra.txt", "model/assets/id_rsa"):
            assert archive.read(name) == secret, name
            mode = infos[name].external_attr >> 16
            assert mode & 0o170000 != 0o120000, f"{name} packed as a link"
        assert archive.read("model/weights-alias.bin") == (folder / "weights.bin").read_bytes()
    assert tree_state(folder) == model_before, "export wrote into the model's own folder"
    verified = cli("verify", str(dest), cwd=sandbox)
    assert "checksums match" in verified.stdout + verified.stderr or verified.returncode == 0


def test_a_link_inside_the_model_is_packed_without_the_option(store):
    sandbox, uri = store
    model_uri, folder = log_model(uri)
    (folder / "weights-alias.bin").symlink_to(folder / "weights.bin")
    dest = sandbox / "out" / "inside.zip"
    proc = cli("export", model_uri, "-o", str(dest), "--tracking-uri", uri, "-q", cwd=sandbox)
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(dest) as archive:
        assert archive.read("model/weights-alias.bin") == (folder / "weights.bin").read_bytes()


def test_the_api_refuses_an_escaping_link_from_a_runs_uri(store):
    """``runs:/<run>/model``, where MLflow's own download would copy the link's target."""
    from mlflow_archive_plugin import export_model
    from mlflow_archive_plugin.errors import UnsafeArchiveError

    sandbox, uri = store
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=sandbox_experiment(uri)) as run:
        mlflow.log_text("hello", "model/MLmodel_placeholder.txt")
    root = Path(client.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://"))
    folder = root / "model"
    (folder / "MLmodel").write_text("artifact_path: model\nflavors: {}\n")
    plant_outside(folder, sandbox)
    with pytest.raises(UnsafeArchiveError, match="outside the model folder"):
        export_model(f"runs:/{run.info.run_id}/model", sandbox / "out" / "r.zip",
                     tracking_uri=uri, progress=False)
    assert not any((sandbox / "out").iterdir())


# ----------------------------------------------------------------------- secrets in URIs


def all_member_bytes(path: Path) -> dict[str, bytes]:
    """Every member of a zip or tar archive, or every file of a folder, with the members of
    archives inside (a .mar's, a bento's) opened too."""
    found: dict[str, bytes] = {}

    def walk(prefix: str, blob: bytes) -> None:
        found[prefix or path.name] = blob
        if zipfile.is_zipfile(io.BytesIO(blob)):
            with zipfile.ZipFile(io.BytesIO(blob)) as archive:
                for name in archive.namelist():
                    walk(f"{prefix}/{name}", archive.read(name))
            return
        try:
            archive = tarfile.open(fileobj=io.BytesIO(blob))  # noqa: SIM115 - closed below
        except tarfile.TarError:
            return
        with archive:
            for member in archive.getmembers():
                if member.isfile():
                    walk(f"{prefix}/{member.name}", archive.extractfile(member).read())

    if path.is_dir():  # a folder container: each file, archives in it opened too
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            walk(file.relative_to(path).as_posix(), file.read_bytes())
    else:
        walk("", path.read_bytes())
    return found


@pytest.fixture(scope="module")
def secret_model(server_a):
    """A registered version on a real server whose tags, params, description and MLmodel
    metadata hold URIs with secrets."""
    client = MlflowClient(server_a.url)
    experiment = client.create_experiment(unique("secrets"))
    name = unique("secretive")
    # a module fixture runs before the per-test restore: the global URI is put back here
    with global_tracking_uri(server_a.url), mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_param("feature_store", WITH_PASSWORD)
        mlflow.set_tag("training_data", SIGNED)
        mlflow.set_tag("homepage", "https://example.test/models?author=me&design=round")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Echo(), pip_requirements=["mlflow"],
            signature=infer_signature(pd.DataFrame({"x": [1.0]}), pd.DataFrame({"x": [1.0]})),
            metadata={"source_data": SIGNED, "hub": WITH_TOKEN, "note": "plain text"},
            registered_model_name=name)
    version = info.registered_model_version
    client.update_model_version(name, str(version), description=f"weights from {WITH_TOKEN}")
    client.set_model_version_tag(name, str(version), "db", WITH_PASSWORD)
    client.update_registered_model(name, description=f"see {SIGNED}")
    host = server_a.url.removeprefix("http://")
    return {
        "name": name, "version": str(version), "run_id": run.info.run_id,
        "uri": f"models:/{name}/{version}",
        "tracking_uri": f"http://alice:{SECRET}@{host}/?token={SECRET}",
        "plain_tracking_uri": server_a.url,
    }


@pytest.mark.parametrize("fmt", ["mlflow", "mar", "mlarchive", "portable", "bentoml"])
def test_no_secret_in_any_byte_of_the_archive(secret_model, tmp_path, fmt):
    from mlflow_archive_plugin import export_model

    result = export_model(secret_model["uri"], tmp_path / "out", format=fmt,
                          tracking_uri=secret_model["plain_tracking_uri"], progress=False)
    members = all_member_bytes(Path(result.location))
    leaking = sorted(name for name, blob in members.items() if SECRET.encode() in blob)
    assert leaking == [], f"{fmt}: secrets in {leaking}"


def test_a_tracking_uri_with_credentials_is_recorded_without_them(secret_model, tmp_path):
    from mlflow_archive_plugin import export_model

    result = export_model(secret_model["uri"], tmp_path / "out", container="folder",
                          tracking_uri=secret_model["plain_tracking_uri"], progress=False)
    document = yaml.safe_load((Path(result.location) / "mlflow-archive.json").read_text())
    lineage = document["lineage"]
    assert lineage["source_tracking_uri"] == secret_model["plain_tracking_uri"]
    assert redact_uri(secret_model["tracking_uri"]).startswith(
        secret_model["plain_tracking_uri"]), redact_uri(secret_model["tracking_uri"])
    assert SECRET not in redact_uri(secret_model["tracking_uri"])


def test_only_the_uris_of_mlmodel_change_and_every_other_file_is_identical(
        secret_model, tmp_path):
    from mlflow_archive_plugin import export_model

    client = MlflowClient(secret_model["plain_tracking_uri"])
    with global_tracking_uri(secret_model["plain_tracking_uri"]):  # models:/ needs the registry
        source = Path(mlflow.artifacts.download_artifacts(
            secret_model["uri"], dst_path=str(tmp_path / "source")))
    del client
    result = export_model(secret_model["uri"], tmp_path / "out", container="folder",
                          tracking_uri=secret_model["plain_tracking_uri"], progress=False)
    packed = Path(result.location) / "model"
    original = yaml.safe_load((source / "MLmodel").read_text())
    rewritten_text = (packed / "MLmodel").read_text()
    assert yaml.safe_load(rewritten_text) == redact_data(original)
    assert yaml.safe_load(rewritten_text)["metadata"]["note"] == "plain text"
    # the rewrite replaced the URIs where they were written: every other line is the same
    changed = [line for line in rewritten_text.splitlines()
               if line not in (source / "MLmodel").read_text().splitlines()]
    assert changed and all("://" in line for line in changed), changed
    # registered_model_meta is written by MLflow's download of a models:/ URI, not logged
    logged = ("MLmodel", "registered_model_meta")
    for path in sorted(p for p in source.rglob("*") if p.is_file() and p.name not in logged):
        rel = path.relative_to(source).as_posix()
        assert hashlib.sha256((packed / rel).read_bytes()).hexdigest() == sha256_file(path), rel


def test_an_mlmodel_without_secrets_is_packed_byte_for_byte(store):
    sandbox, uri = store
    model_uri, folder = log_model(uri, note="nothing secret", link="https://example.test/a")
    dest = sandbox / "out" / "plain.zip"
    proc = cli("export", model_uri, "-o", str(dest), "--tracking-uri", uri, "-q", cwd=sandbox)
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(dest) as archive:
        assert archive.read("model/MLmodel") == (folder / "MLmodel").read_bytes()


def test_imported_metadata_keeps_what_is_not_secret(secret_model, tmp_path, server_b):
    from mlflow_archive_plugin import export_model, import_archive

    result = export_model(secret_model["uri"], tmp_path / "a.zip",
                          tracking_uri=secret_model["plain_tracking_uri"], progress=False)
    imported = import_archive(result.location, tracking_uri=server_b.url,
                              name=unique("redacted"))
    client = MlflowClient(server_b.url)
    version = client.get_model_version(imported.name, str(imported.version))
    assert version.tags["db"] == "postgresql://db.internal:5432/features"
    assert version.description == "weights from https://hub.example.test/models/7?rev=main"
    run = client.get_run(version.run_id)
    assert run.data.tags["homepage"] == "https://example.test/models?author=me&design=round"
    assert SECRET not in run.data.params["feature_store"]


# ----------------------------------------------------------------------- the one redaction


@pytest.mark.parametrize("uri, expected", [
    (f"https://u:{SECRET}@h:8443/p?a=1", "https://h:8443/p?a=1"),
    (SIGNED, "https://bucket.s3.amazonaws.com/data.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Expires=60"),
    (WITH_TOKEN, "https://hub.example.test/models/7?rev=main"),
    (f"https://acct.blob.core.windows.net/c/b?sv=2022&sig={SECRET}",
     "https://acct.blob.core.windows.net/c/b?sv=2022"),
    (f"s3://bucket/key?apiKey={SECRET}", "s3://bucket/key"),
    (f"http://h/#id_token={SECRET}&state=1", "http://h/#state=1"),
    ("sqlite:///tmp/a%20b.db", "sqlite:///tmp/a%20b.db"),
    ("https://example.test/x?author=me&design=round", "https://example.test/x?author=me&design=round"),
    ("file:///models/m?x=1", "file:///models/m?x=1"),
    ("models:/name@champion", "models:/name@champion"),
])
def test_redact_uri_removes_secrets_and_keeps_the_rest_byte_for_byte(uri, expected):
    assert redact_uri(uri) == expected


def test_redact_text_finds_uris_inside_prose():
    text = f"trained on {SIGNED} and {WITH_PASSWORD}; see https://docs.example.test/"
    redacted = redact_text(text)
    assert SECRET not in redacted
    assert redacted.endswith("see https://docs.example.test/")
    assert "postgresql://db.internal:5432/features;" in redacted


@pytest.mark.parametrize("name, secret", [
    ("X-Amz-Security-Token", True), ("aws_secret_access_key", True), ("sig", True),
    ("accessToken", True), ("connection_string", True), ("passphrase", True),
    ("author", False), ("design", False), ("region", False), ("rev", False),
])
def test_secret_names_are_matched_by_word(name, secret):
    assert is_secret_name(name) is secret
