"""BentoML ``.bentomodel`` and BentoML's other export formats, without BentoML installed.

What the real BentoML makes of these archives is proved in tests/bentoml (``tox -e bentoml``).
Here: how the registry maps onto ``model.yaml`` (read back with tarfile, lzma and zipfile), a
lossless round trip between two real ``mlflow server`` processes in every container, archives
laid out by hand the way BentoML's own export lays them out, one-line errors for bad input,
and remote locations (a real moto S3 server on loopback, reached through s3fs; memory://).
Exports are made once per module and shared.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import hashlib
import io
import json
import lzma
import os
import pickle
import re
import subprocess
import tarfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import fsspec
import mlflow
import numpy as np
import pytest
import yaml
from conftest import (
    CHECKSUM_FILE,
    METADATA_FILE,
    assert_user_error,
    child_env,
    cli,
    download_model,
    free_port,
    global_tracking_uri,
    load_and_predict,
    registry_census,
    sha256_file,
    tree_hashes,
    unique,
)
from mlflow import MlflowClient
from s3_server import moto_s3_in_environment

from mlflow_archive_plugin import export_model, import_archive, verify_archive

pytestmark = pytest.mark.server

# BentoML's rule for a tag's name and version (at most 63 characters), and the label form
# (Kubernetes' label value: letters, digits and "-._" inside, at most 63 characters).
TAG_RULE = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$")
LABEL_RULE = re.compile(r"^[A-Za-z0-9]([-._A-Za-z0-9]*[A-Za-z0-9])?$")
TAG_MAX = 63
MODEL_YAML_KEYS = ["name", "version", "module", "labels", "options", "metadata", "context",
                   "signatures", "api_version", "creation_time"]
XZ_MAGIC = b"\xfd7zXZ\x00"
# --container value -> (container reported, file extension), as BentoML names its exports.
CONTAINERS = {
    "bentomodel": ("tar.xz", ".bentomodel"),
    "gz": ("tar.gz", ".gz"),
    "bz2": ("tar.bz2", ".bz2"),
    "tar": ("tar", ".tar"),
    "zip": ("zip", ".zip"),
    "folder": ("folder", ""),
}
FOREIGN_CREATED = "2024-05-01T12:34:56.789012+00:00"
WRONG_SECRET = "Wr0ngSecret-" + "q" * 28  # noqa: S105 - a credential the server must refuse


def client_for(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def members(location: str | Path) -> dict[str, bytes]:
    """Every regular file of an archive (any container, or a folder) by its name at the root,
    read with the standard library alone; a tar's leading ``./`` is dropped."""
    path = Path(location)
    if path.is_dir():
        return {p.relative_to(path).as_posix(): p.read_bytes()
                for p in sorted(path.rglob("*")) if p.is_file()}
    with path.open("rb") as handle:
        is_zip = handle.read(4) == b"PK\x03\x04"  # not is_zipfile: a tar may hold a zip
    if is_zip:
        with zipfile.ZipFile(path) as zf:
            return {info.filename: zf.read(info) for info in zf.infolist()
                    if not info.is_dir()}
    with tarfile.open(path) as tf:
        return {member.name.removeprefix("./"): tf.extractfile(member).read()
                for member in tf.getmembers() if member.isreg()}


def model_yaml_of(files: dict[str, bytes]) -> dict:
    return yaml.safe_load(files["model.yaml"].decode("utf-8"))


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, int, float]]:
    return sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))


def model_files(model_uri: str, url: str, dst: Path) -> dict[str, str]:
    """The model's files (path -> sha256), without the file naming its registry entry."""
    hashes = tree_hashes(download_model(model_uri, url, dst))
    hashes.pop("registered_model_meta", None)
    return hashes


def register_copy(url: str, name: str, rich_model, model_tags: dict[str, str],
                  version_tags: dict[str, str]) -> str:
    """Register ``name`` version 1 from the rich model's logged model (no upload), with tags."""
    client = client_for(url)
    client.create_registered_model(name, tags=model_tags)
    with global_tracking_uri(url):
        version = client.create_model_version(
            name, source=f"models:/{rich_model.model_id}", run_id=rich_model.run_id,
            tags=version_tags, model_id=rich_model.model_id)
    return str(version.version)


def run_all(calls: dict[str, tuple]) -> dict[str, subprocess.CompletedProcess]:
    """Run several ``cli(*args, **kwargs)`` at once (each is a Python start-up): name -> proc."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(cli, *args, **kwargs) for key, (args, kwargs) in calls.items()}
        return {key: future.result() for key, future in futures.items()}


# --------------------------------------------------------------------------- archives by hand


def bento_version() -> str:
    """A version as BentoML generates them: 16 characters of lower-case base32."""
    return base64.b32encode(uuid.uuid4().bytes).decode()[:16].lower()


def bento_document(name: str, module: str = "bentoml.sklearn", **changes) -> dict:
    """A model.yaml as BentoML 1.4 writes it (keys in its order); ``changes`` override keys,
    and a change to ``None`` removes the key."""
    document = {
        "name": name,
        "version": bento_version(),
        "module": module,
        "labels": {"owner": "alice", "stage": "prod"},
        "options": {},
        "metadata": {"accuracy": 0.93, "dataset": "iris"},
        "context": {
            "framework_name": "sklearn",
            "framework_versions": {"scikit-learn": "1.5.2"},
            "bentoml_version": "1.4.39",
            "python_version": "3.11.9",
        },
        "signatures": {"predict": {"batchable": False}},
        "api_version": "v1",
        "creation_time": FOREIGN_CREATED,
    }
    document.update(changes)
    return {key: value for key, value in document.items() if value is not None}


def dump_yaml(document: dict) -> bytes:
    return yaml.safe_dump(document, sort_keys=False).encode("utf-8")


def write_bento(path: Path, files: dict[str, bytes], container: str = "tar.xz") -> Path:
    """Pack ``files`` as BentoML's export does: every member under ``./``, folders included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if container == "folder":
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return path
    if container == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return path
    mode = {"tar.xz": "w:xz", "tar.gz": "w:gz", "tar": "w"}[container]
    with tarfile.open(path, mode) as tf:
        folders = sorted({"/".join(name.split("/")[:depth]) for name in files
                          for depth in range(1, name.count("/") + 1)})
        for folder in ["", *folders]:
            info = tarfile.TarInfo(f"./{folder}".rstrip("/") if folder else ".")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1714566896
            tf.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1714566896
            tf.addfile(info, io.BytesIO(data))
    return path


def mlflow_bento_files(document: dict, model_dir: Path) -> dict[str, bytes]:
    """A model ``bentoml.mlflow.import_model`` saved: model.yaml and ``mlflow_model/``."""
    files = {"model.yaml": dump_yaml(document)}
    files.update({f"mlflow_model/{p.relative_to(model_dir).as_posix()}": p.read_bytes()
                  for p in sorted(model_dir.rglob("*")) if p.is_file()})
    return files


def sklearn_bento_files(document: dict) -> dict[str, bytes]:
    """A model some other BentoML module saved: model.yaml and its pickled model."""
    return {"model.yaml": dump_yaml(document),
            "saved_model.pkl": pickle.dumps({"coef": [0.5, 1.5], "intercept": 0.25})}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cli_export(rich_model, tmp_path_factory):
    """The rich model exported by the CLI with --format bentoml into a folder:
    (the --json result, the archive's files)."""
    out = tmp_path_factory.mktemp("bento-cli") / "out"
    out.mkdir()
    proc = cli("export", rich_model.uri, "--format", "bentoml", "-o", f"{out}{os.sep}",
               "--tracking-uri", rich_model.url, "--json", "-q", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    return result, members(result["location"])


@pytest.fixture(scope="module")
def cli_yaml(cli_export) -> dict:
    return model_yaml_of(cli_export[1])


@dataclass
class OddModel:
    name: str
    version: str
    tags: dict[str, str]
    location: str
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def odd_model(rich_model, tmp_path_factory) -> OddModel:
    """A version whose name and tags BentoML would refuse as they are, exported by the CLI."""
    suffix = uuid.uuid4().hex[:8]
    name = f"Iris Classifier (Prod) {'Extra Long Segment ' * 3}{suffix}"
    model_tags = {"Team Name": "ML Platform/EU", "owner": "alice"}
    version_tags = {"validated": "true", "note": "needs review: yes", "long": "a" * 80,
                    "-edge-": "_x_"}
    version = register_copy(rich_model.url, name, rich_model, model_tags, version_tags)
    out = tmp_path_factory.mktemp("bento-odd")
    proc = cli("export", f"models:/{name}/{version}", "--format", "bentoml", "-o", f"{out}/",
               "--tracking-uri", rich_model.url, "--json", "-q", cwd=out)
    assert proc.returncode == 0, proc.stderr
    location = json.loads(proc.stdout)["location"]
    return OddModel(name, version, {**model_tags, **version_tags}, location, members(location))


@pytest.fixture(scope="module")
def bento_exports(rich_model, tmp_path_factory):
    """--container -> ExportResult of the rich model exported with --format bentoml into a
    folder of its own (the file name derived)."""
    exports = {}
    for container in CONTAINERS:
        out = tmp_path_factory.mktemp(f"bento-{container}")
        exports[container] = export_model(rich_model.uri, f"{out}{os.sep}", format="bentoml",
                                          container=container, tracking_uri=rich_model.url,
                                          progress=False)
    return exports


@pytest.fixture(scope="module", params=list(CONTAINERS))
def round_trip(request, bento_exports, server_b):
    """(--container, ImportResult) of each export imported into server_b under a new name."""
    container = request.param
    imported = import_archive(bento_exports[container].location,
                              name=unique(f"bento-rt-{container}"), tracking_uri=server_b.url,
                              progress=False)
    return container, imported


@pytest.fixture(scope="module")
def rich_model_dir(rich_model, tmp_path_factory) -> Path:
    """The rich model's MLflow model folder, downloaded from server_a."""
    return download_model(rich_model.uri, rich_model.url, tmp_path_factory.mktemp("rich-files"))


@dataclass
class Foreign:
    name: str
    document: dict
    path: Path


@pytest.fixture(scope="module")
def foreign(rich_model_dir, tmp_path_factory) -> dict[str, Foreign]:
    """Archives as BentoML exports them, written here: kind -> Foreign.

    ``mlflow``: a ``bentoml.mlflow`` model (the rich model under ``mlflow_model/``), tar.xz;
    ``sklearn``: a ``bentoml.sklearn`` model, tar.xz; ``sklearn-gz``, ``sklearn-zip`` and
    ``sklearn-folder``: others in BentoML's ``gz``, ``zip`` and ``folder`` output formats.
    """
    root = tmp_path_factory.mktemp("bento-foreign")
    made = {}
    name = unique("bento-mlflow")
    document = bento_document(name, "bentoml.mlflow", labels={"team": "ml-platform"},
                              metadata={"source": "hand-made"},
                              context={"framework_name": "mlflow",
                                       "framework_versions": {"mlflow": mlflow.__version__},
                                       "bentoml_version": "1.4.39",
                                       "python_version": "3.11.9"})
    path = root / f"{name}-{document['version']}.bentomodel"
    made["mlflow"] = Foreign(name, document,
                             write_bento(path, mlflow_bento_files(document, rich_model_dir)))
    for kind, container, extension in (("sklearn", "tar.xz", ".bentomodel"),
                                       ("sklearn-gz", "tar.gz", ".gz"),
                                       ("sklearn-zip", "zip", ".zip"),
                                       ("sklearn-folder", "folder", "")):
        name = unique(f"bento-{kind}")
        document = bento_document(name)
        path = root / f"{name}-{document['version']}{extension}"
        made[kind] = Foreign(name, document,
                             write_bento(path, sklearn_bento_files(document), container))
    return made


@pytest.fixture(scope="module")
def foreign_imports(foreign, server_b):
    """kind -> ImportResult of each hand-made archive imported into server_b as it is."""
    return {kind: import_archive(str(made.path), tracking_uri=server_b.url, progress=False)
            for kind, made in foreign.items()}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback; this process's environment holds its credentials."""
    with moto_s3_in_environment(tmp_path_factory.mktemp("bento-moto")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_export(s3, rich_model, tmp_path_factory):
    """The rich model exported by the CLI as .bentomodel into an S3 "folder": the --json."""
    proc = cli("export", rich_model.uri, "--format", "bentoml", "-o", f"s3://{s3.bucket}/bento/",
               "--storage-option", f"endpoint_url={s3.endpoint}", "--tracking-uri",
               rich_model.url, "--json", "-q", cwd=tmp_path_factory.mktemp("bento-s3"))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def s3_object(s3, url: str) -> bytes:
    key = url.removeprefix(f"s3://{s3.bucket}/")
    return s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()


# --------------------------------------------------------------------------- export: model.yaml


def test_cli_export_is_a_bentomodel_named_after_the_tag(cli_export, rich_model):
    result, _ = cli_export
    assert (result["format"], result["container"]) == ("bentoml", "tar.xz")
    assert Path(result["location"]).name == f"{rich_model.name}-v{rich_model.version}.bentomodel"
    assert Path(result["location"]).is_file()


def test_bentomodel_passes_xz_integrity_test(cli_export):
    result, _ = cli_export
    proc = subprocess.run(["xz", "-t", result["location"]], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_bentomodel_is_an_xz_stream_holding_a_tar(cli_export):
    result, files = cli_export
    data = Path(result["location"]).read_bytes()
    assert data.startswith(XZ_MAGIC)
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data)), mode="r:") as tf:
        names = {member.name.removeprefix("./") for member in tf.getmembers() if member.isreg()}
    assert names == set(files)


def test_model_yaml_sits_at_the_archive_root(cli_export):
    _, files = cli_export
    assert "model.yaml" in files
    tops = {name.split("/", 1)[0] for name in files}
    assert {"model.yaml", "mlflow_model", METADATA_FILE, CHECKSUM_FILE} <= tops


def test_model_yaml_has_bentoml_keys_in_bentoml_order(cli_yaml):
    assert list(cli_yaml) == MODEL_YAML_KEYS


def test_model_yaml_tag_is_the_registered_name_and_v_version(cli_yaml, rich_model):
    assert (cli_yaml["name"], cli_yaml["version"]) == (rich_model.name, f"v{rich_model.version}")
    for part in (cli_yaml["name"], cli_yaml["version"]):
        assert TAG_RULE.match(part) and len(part) <= TAG_MAX, part


def test_model_yaml_module_is_bentoml_mlflow_with_mlflow_context(cli_yaml):
    assert cli_yaml["module"] == "bentoml.mlflow"
    assert cli_yaml["api_version"] == "v1"
    assert cli_yaml["options"] == {}
    context = cli_yaml["context"]
    assert context["framework_name"] == "mlflow"
    assert context["framework_versions"] == {"mlflow": mlflow.__version__}
    assert {"bentoml_version", "python_version"} <= set(context)


def test_model_yaml_labels_are_the_registry_tags(cli_yaml, rich_model):
    client = client_for(rich_model.url)
    tags = {**client.get_registered_model(rich_model.name).tags,
            **client.get_model_version(rich_model.name, rich_model.version).tags}
    assert {"domain", "owner", "validated", "reviewer"} <= set(tags)
    assert cli_yaml["labels"] == tags


def test_model_yaml_metadata_holds_run_params_and_latest_metrics(cli_yaml, rich_model):
    run = client_for(rich_model.url).get_run(rich_model.run_id)
    metadata = cli_yaml["metadata"]
    assert metadata["params"] == run.data.params
    assert metadata["metrics"] == run.data.metrics
    assert metadata["metrics"]["loss"] == 0.125  # the highest step's value, not the last logged


def test_model_yaml_metadata_keeps_the_original_name_and_version(cli_yaml, rich_model):
    metadata = cli_yaml["metadata"]
    assert metadata["mlflow_registered_model"] == rich_model.name
    assert str(metadata["mlflow_model_version"]) == rich_model.version
    assert metadata["mlflow_run_id"] == rich_model.run_id
    assert metadata["mlflow_model_id"] == rich_model.model_id
    assert None not in metadata.values()


def test_model_yaml_creation_time_is_the_versions_with_a_timezone(cli_yaml, rich_model):
    version = client_for(rich_model.url).get_model_version(rich_model.name, rich_model.version)
    assert isinstance(cli_yaml["creation_time"], str)  # ISO 8601 text, as BentoML writes it
    created = dt.datetime.fromisoformat(cli_yaml["creation_time"])
    assert created.tzinfo is not None
    expected = dt.datetime.fromtimestamp(version.creation_timestamp / 1000, dt.UTC)
    assert created == expected


def test_mlflow_model_is_stored_under_mlflow_model(cli_export, rich_model_dir):
    _, files = cli_export
    inner = {name.removeprefix("mlflow_model/"): hashlib.sha256(data).hexdigest()
             for name, data in files.items() if name.startswith("mlflow_model/")}
    expected = tree_hashes(rich_model_dir)
    expected.pop("registered_model_meta", None)
    assert "MLmodel" in inner
    assert inner == expected


def test_metadata_document_names_the_bentoml_layout_and_model_path(cli_export, rich_model):
    _, files = cli_export
    document = json.loads(files[METADATA_FILE])
    assert (document["layout"], document["model_path"]) == ("bentoml", "mlflow_model")
    assert document["registered_model"]["name"] == rich_model.name


# --------------------------------------------------------------------------- export: odd names


def test_odd_name_becomes_a_valid_bentoml_tag_name(odd_model):
    name = model_yaml_of(odd_model.files)["name"]
    assert TAG_RULE.match(name), name
    assert len(name) <= TAG_MAX
    assert name.startswith("iris-classifier-prod-extra-long-segment-")


def test_odd_model_version_is_v_and_the_number(odd_model):
    assert model_yaml_of(odd_model.files)["version"] == f"v{odd_model.version}"


def test_odd_model_file_is_named_after_the_valid_tag(odd_model):
    document = model_yaml_of(odd_model.files)
    assert Path(odd_model.location).name == (
        f"{document['name']}-{document['version']}.bentomodel")


def test_odd_model_keeps_its_original_name_in_metadata(odd_model):
    metadata = model_yaml_of(odd_model.files)["metadata"]
    assert metadata["mlflow_registered_model"] == odd_model.name
    assert str(metadata["mlflow_model_version"]) == odd_model.version


def test_odd_tags_become_valid_labels(odd_model):
    labels = model_yaml_of(odd_model.files)["labels"]
    assert labels
    for key, value in labels.items():
        assert isinstance(key, str) and LABEL_RULE.match(key) and len(key) <= TAG_MAX, key
        assert isinstance(value, str) and LABEL_RULE.match(value) and len(value) <= TAG_MAX, value


def test_tags_already_valid_as_labels_are_kept_as_they_are(odd_model):
    labels = model_yaml_of(odd_model.files)["labels"]
    assert (labels["owner"], labels["validated"]) == ("alice", "true")


def test_odd_tags_keep_their_original_values_in_metadata(odd_model):
    metadata = model_yaml_of(odd_model.files)["metadata"]
    assert metadata["mlflow_tags"] == odd_model.tags


def test_odd_model_round_trips_its_name_and_tags(odd_model, server_b):
    imported = import_archive(odd_model.location, tracking_uri=server_b.url, progress=False)
    client = client_for(server_b.url)
    assert imported.name == odd_model.name
    model = client.get_registered_model(imported.name)
    version = client.get_model_version(imported.name, imported.version)
    assert {"Team Name": "ML Platform/EU", "owner": "alice"}.items() <= model.tags.items()
    expected = {key: odd_model.tags[key] for key in ("validated", "note", "long", "-edge-")}
    assert expected.items() <= version.tags.items()


# --------------------------------------------------------------------------- export: weights


class ConstantModel(mlflow.pyfunc.PythonModel):
    """A pyfunc model that only carries its artifacts."""

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        return model_input


@pytest.fixture(scope="module")
def weights_export(server_a, tmp_path_factory):
    """A pyfunc model holding 16 MiB of random weights, exported by the CLI as .bentomodel:
    (weights bytes, size of the model's files, archive path)."""
    work = tmp_path_factory.mktemp("bento-weights")
    weights = os.urandom(16 * 1024 * 1024)
    (work / "weights.bin").write_bytes(weights)
    name = unique("bento-weights")
    with global_tracking_uri(server_a.url), mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=ConstantModel(),
                                artifacts={"weights": str(work / "weights.bin")},
                                pip_requirements=["mlflow"], registered_model_name=name)
    out = work / "out"
    out.mkdir()
    proc = cli("export", f"models:/{name}/1", "--format", "bentoml", "-o", f"{out}/",
               "--tracking-uri", server_a.url, "--json", "-q", cwd=work)
    assert proc.returncode == 0, proc.stderr
    location = Path(json.loads(proc.stdout)["location"])
    model_size = sum(p.stat().st_size for p in
                     download_model(f"models:/{name}/1", server_a.url, work / "dl").rglob("*")
                     if p.is_file())
    return weights, model_size, location


def test_weights_export_is_stored_close_to_the_input_size(weights_export):
    weights, model_size, location = weights_export
    assert location.name.endswith("-v1.bentomodel")
    size = location.stat().st_size
    assert model_size >= len(weights)
    # Stored, not compressed: incompressible bytes plus headers and the small text files.
    assert len(weights) <= size <= model_size * 1.01 + 256 * 1024, (size, model_size)


def test_weights_export_passes_xz_integrity_test(weights_export):
    _, _, location = weights_export
    proc = subprocess.run(["xz", "-t", str(location)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_weights_export_holds_the_weights_byte_for_byte(weights_export):
    weights, _, location = weights_export
    with lzma.open(location) as stream, tarfile.open(fileobj=stream, mode="r|") as tf:
        found = {}
        for member in tf:
            if member.isreg() and member.name.endswith("weights.bin"):
                found[member.name] = hashlib.sha256(tf.extractfile(member).read()).hexdigest()
    assert list(found.values()) == [hashlib.sha256(weights).hexdigest()]
    assert next(iter(found)).removeprefix("./").startswith("mlflow_model/")


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_export_container_and_derived_file_name(container, bento_exports, rich_model):
    result = bento_exports[container]
    reported, extension = CONTAINERS[container]
    assert (result.format, result.container) == ("bentoml", reported)
    assert Path(result.location).name == f"{rich_model.name}-v{rich_model.version}{extension}"
    assert model_yaml_of(members(result.location))["module"] == "bentoml.mlflow"


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_export_verifies_in_every_container(container, bento_exports):
    report = verify_archive(bento_exports[container].location, progress=False)
    assert report.ok, report.problems
    assert report.digest == bento_exports[container].digest


def test_round_trip_registers_version_one(round_trip):
    _, imported = round_trip
    assert (imported.version, imported.reused) == ("1", False)


def test_round_trip_keeps_registered_model_description_and_tags(round_trip, rich_model,
                                                                 server_b):
    _, imported = round_trip
    source = client_for(rich_model.url).get_registered_model(rich_model.name)
    target = client_for(server_b.url).get_registered_model(imported.name)
    assert target.description == source.description
    assert source.tags and source.tags.items() <= target.tags.items()


def test_round_trip_keeps_version_description_tags_and_aliases(round_trip, rich_model,
                                                               server_b):
    _, imported = round_trip
    source = client_for(rich_model.url).get_model_version(rich_model.name, rich_model.version)
    target = client_for(server_b.url).get_model_version(imported.name, imported.version)
    assert target.description == source.description
    assert source.tags and source.tags.items() <= target.tags.items()
    assert sorted(target.aliases) == sorted(source.aliases) == ["champion", "stable"]


def test_round_trip_keeps_params_and_metric_histories(round_trip, rich_model, server_b):
    _, imported = round_trip
    source_client, target_client = client_for(rich_model.url), client_for(server_b.url)
    source = source_client.get_run(rich_model.run_id)
    target = target_client.get_run(imported.run_id)
    assert target.data.params == source.data.params
    assert set(target.data.metrics) == set(source.data.metrics) >= {"loss", "lr"}
    for key in source.data.metrics:
        assert history(target_client, imported.run_id, key) == history(
            source_client, rich_model.run_id, key), key


def test_round_trip_keeps_the_model_files_and_predictions(round_trip, rich_model, server_b,
                                                          rich_model_dir, tmp_path):
    _, imported = round_trip
    expected = tree_hashes(rich_model_dir)
    expected.pop("registered_model_meta", None)
    assert model_files(imported.model_uri, server_b.url, tmp_path) == expected
    actual = load_and_predict(imported.model_uri, server_b.url, rich_model.X)
    np.testing.assert_array_equal(actual, rich_model.predictions)


# --------------------------------------------------------------------------- foreign archives


def test_hand_made_archives_are_laid_out_as_bentoml_exports_them(foreign):
    with tarfile.open(foreign["mlflow"].path) as tf:
        names = tf.getnames()
    assert "./model.yaml" in names and "./mlflow_model/MLmodel" in names
    assert all(name == "." or name.startswith("./") for name in names)


def test_bentoml_mlflow_archive_registers_the_inner_model(foreign, foreign_imports, rich_model,
                                                          server_b, rich_model_dir, tmp_path):
    made, imported = foreign["mlflow"], foreign_imports["mlflow"]
    assert (imported.name, imported.version, imported.reused) == (made.name, "1", False)
    expected = tree_hashes(rich_model_dir)
    expected.pop("registered_model_meta", None)
    assert model_files(imported.model_uri, server_b.url, tmp_path) == expected
    actual = load_and_predict(imported.model_uri, server_b.url, rich_model.X)
    np.testing.assert_array_equal(actual, rich_model.predictions)


def test_bentoml_mlflow_archive_version_carries_the_model_yaml(foreign, foreign_imports,
                                                                server_b):
    made, imported = foreign["mlflow"], foreign_imports["mlflow"]
    version = client_for(server_b.url).get_model_version(imported.name, imported.version)
    document = made.document
    assert {
        "bentoml.name": made.name,
        "bentoml.version": document["version"],
        "bentoml.module": "bentoml.mlflow",
        "bentoml.creation_time": FOREIGN_CREATED,
        "bentoml.label.team": "ml-platform",
    }.items() <= version.tags.items()
    assert f"{made.name}:{document['version']}" in version.description


def test_other_module_registers_an_archive_backed_version(foreign, foreign_imports, server_b,
                                                          tmp_path):
    made, imported = foreign["sklearn"], foreign_imports["sklearn"]
    assert (imported.name, imported.version, imported.reused) == (made.name, "1", False)
    files = download_model(imported.model_uri, server_b.url, tmp_path)
    flavor = yaml.safe_load((files / "MLmodel").read_text())["flavors"]["mlflow_archive"]
    assert (flavor["layout"], flavor["container"]) == ("bentoml", "tar.xz")
    assert sha256_file(files / "archive" / made.path.name) == sha256_file(made.path)
    assert (files / "files" / "model.yaml").read_bytes() == dump_yaml(made.document)
    assert (files / "files" / "saved_model.pkl").is_file()


def test_other_module_version_tags_carry_every_model_yaml_field(foreign, foreign_imports,
                                                                server_b):
    made, imported = foreign["sklearn"], foreign_imports["sklearn"]
    tags = client_for(server_b.url).get_model_version(imported.name, imported.version).tags
    document = made.document
    assert {
        "bentoml.name": made.name,
        "bentoml.version": document["version"],
        "bentoml.module": "bentoml.sklearn",
        "bentoml.creation_time": FOREIGN_CREATED,
        "bentoml.api_version": "v1",
        "bentoml.label.owner": "alice",
        "bentoml.label.stage": "prod",
    }.items() <= tags.items()
    assert json.loads(tags["bentoml.metadata"]) == document["metadata"]
    assert json.loads(tags["bentoml.context"]) == document["context"]


def test_other_module_version_description_names_the_bentoml_tag(foreign, foreign_imports,
                                                                 server_b):
    made, imported = foreign["sklearn"], foreign_imports["sklearn"]
    description = client_for(server_b.url).get_model_version(imported.name,
                                                             imported.version).description
    assert f"{made.name}:{made.document['version']}" in description
    assert "bentoml.sklearn" in description
    assert "2024-05-01" in description


@pytest.mark.parametrize(("kind", "container"), [("sklearn-gz", "tar.gz"),
                                               ("sklearn-zip", "zip"),
                                               ("sklearn-folder", "folder")])
def test_bentomls_other_output_formats_import_as_archive_backed_versions(
        kind, container, foreign, foreign_imports, server_b, tmp_path):
    made, imported = foreign[kind], foreign_imports[kind]
    assert (imported.name, imported.version, imported.reused) == (made.name, "1", False)
    files = download_model(imported.model_uri, server_b.url, tmp_path)
    flavor = yaml.safe_load((files / "MLmodel").read_text())["flavors"]["mlflow_archive"]
    assert (flavor["layout"], flavor["container"]) == ("bentoml", container)
    if container == "folder":
        assert tree_hashes(files / "files") == tree_hashes(made.path)
    else:
        assert sha256_file(files / "archive" / made.path.name) == sha256_file(made.path)
    tags = client_for(server_b.url).get_model_version(made.name, imported.version).tags
    assert tags["bentoml.version"] == made.document["version"]


def test_foreign_archive_imported_again_is_reused(foreign, foreign_imports, server_b):
    again = import_archive(str(foreign["sklearn"].path), tracking_uri=server_b.url,
                           progress=False)
    first = foreign_imports["sklearn"]
    assert (again.name, again.version, again.reused) == (first.name, first.version, True)


def test_archive_backed_version_exports_back_byte_identical(foreign, foreign_imports, server_b,
                                                            tmp_path):
    made, imported = foreign["sklearn"], foreign_imports["sklearn"]
    result = export_model(imported.model_uri, f"{tmp_path}/", format="bentoml",
                          tracking_uri=server_b.url, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [made.path.name]
    assert result.sha256 == sha256_file(made.path) == sha256_file(tmp_path / made.path.name)


def test_imported_bentoml_labels_are_the_labels_again_on_export(foreign, foreign_imports,
                                                                server_b, tmp_path):
    made, imported = foreign["mlflow"], foreign_imports["mlflow"]
    result = export_model(imported.model_uri, f"{tmp_path}/", format="bentoml",
                          tracking_uri=server_b.url, progress=False)
    document = model_yaml_of(members(result.location))
    assert (document["name"], document["module"]) == (made.name, "bentoml.mlflow")
    assert document["labels"] == made.document["labels"]


def test_the_plugins_own_import_tags_are_no_labels_on_export(bento_exports, rich_model,
                                                             cli_yaml, server_b, tmp_path):
    imported = import_archive(bento_exports["bentomodel"].location,
                              name=unique("bento-again"), tracking_uri=server_b.url,
                              progress=False)
    tags = client_for(server_b.url).get_model_version(imported.name, imported.version).tags
    assert any(key.startswith("mlflow_archive.") for key in tags)
    result = export_model(imported.model_uri, f"{tmp_path}/", format="bentoml",
                          tracking_uri=server_b.url, progress=False)
    assert model_yaml_of(members(result.location))["labels"] == cli_yaml["labels"]


def test_long_bentoml_metadata_is_kept_whole_on_a_bentoml_mlflow_import(rich_model_dir,
                                                                        server_b, tmp_path):
    name = unique("bento-long-meta")
    metadata = {"notes": "n" * 6000, "accuracy": 0.9}
    document = bento_document(name, "bentoml.mlflow", metadata=metadata)
    path = write_bento(tmp_path / f"{name}.bentomodel",
                       mlflow_bento_files(document, rich_model_dir))
    imported = import_archive(str(path), tracking_uri=server_b.url, progress=False)
    tags = client_for(server_b.url).get_model_version(imported.name, imported.version).tags
    assert json.loads(tags["bentoml.metadata"]) == metadata


# --------------------------------------------------------------------------- bad input


def bad_archives(root: Path) -> dict[str, tuple[Path, str]]:
    """case -> (archive, text the one-line error must contain)."""
    name = unique("bento-bad")

    def bento(case: str, files: dict[str, bytes], container: str = "tar.xz") -> Path:
        return write_bento(root / f"{case}.bentomodel", files, container)

    def with_yaml(case: str, document: dict) -> Path:
        return bento(case, sklearn_bento_files(document))

    def truncated(path: Path) -> Path:
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
        return path

    weights = {"saved_model.pkl": pickle.dumps([1, 2, 3])}
    return {
        "no-model-yaml": (bento("no-model-yaml", weights), "model.yaml"),
        "not-yaml": (bento("not-yaml", {"model.yaml": b"name: [unclosed\n  - : :\n",
                                        **weights}), "not valid YAML"),
        "yaml-not-a-mapping": (bento("yaml-not-a-mapping", {"model.yaml": b"- a\n- b\n",
                                                            **weights}), "mapping"),
        "missing-keys": (with_yaml("missing-keys", bento_document(
            name, module=None, creation_time=None)), "module, creation_time"),
        "naive-creation-time": (with_yaml("naive-creation-time", bento_document(
            name, creation_time="2024-05-01T12:34:56")), "timezone"),
        "bad-tag-name": (with_yaml("bad-tag-name", bento_document("Iris Classifier!")),
                         "Iris Classifier!"),
        "bad-tag-version": (with_yaml("bad-tag-version", bento_document(
            name, version="v" * (TAG_MAX + 1))), "version"),
        "gzip-named-bentomodel": (bento("gzip-named-bentomodel", sklearn_bento_files(
            bento_document(name)), "tar.gz"), "tar.xz"),
        "zip-named-bentomodel": (bento("zip-named-bentomodel", sklearn_bento_files(
            bento_document(name)), "zip"), "tar.xz"),
        "truncated": (truncated(bento("truncated", sklearn_bento_files(bento_document(name)))),
                      "truncated"),
    }


@pytest.fixture(scope="module")
def bad_imports(server_b, tmp_path_factory):
    """case -> (proc, working folder) of `mlflow-archive import` of each bad archive, run at
    once, and the registry census before and after all of them."""
    cases = bad_archives(tmp_path_factory.mktemp("bento-bad"))
    before = registry_census(server_b.url)
    workdirs = {case: tmp_path_factory.mktemp(f"bad-{case}") for case in cases}
    procs = run_all({case: (("import", str(path), "--tracking-uri", server_b.url, "-q"),
                            {"cwd": workdirs[case]}) for case, (path, _) in cases.items()})
    after = registry_census(server_b.url)
    return {case: (procs[case], workdirs[case], cases[case][1]) for case in cases}, before, after


BAD_CASES = ["no-model-yaml", "not-yaml", "yaml-not-a-mapping", "missing-keys",
             "naive-creation-time", "bad-tag-name", "bad-tag-version", "gzip-named-bentomodel",
             "zip-named-bentomodel", "truncated"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_archive_import_is_one_line(case, bad_imports):
    results, _, _ = bad_imports
    proc, _, expected = results[case]
    assert expected in assert_user_error(proc)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_archive_import_writes_nothing(case, bad_imports):
    results, _, _ = bad_imports
    _, workdir, _ = results[case]
    assert list(workdir.iterdir()) == []


def test_bad_archive_imports_register_nothing(bad_imports):
    results, before, after = bad_imports
    assert len(results) == len(BAD_CASES)
    assert after == before


@pytest.fixture(scope="module")
def bad_exports(rich_model, tmp_path_factory):
    """case -> (proc, output folder) of `mlflow-archive export --format bentoml` runs that
    must fail, run at once; the output folder of ``existing`` holds an older archive."""
    name = "\u30e2\u30c7\u30eb" + "".join(chr(0x30A1 + int(c, 16)) for c in uuid.uuid4().hex[:8])
    katakana = register_copy(rich_model.url, name, rich_model, {}, {})
    outs = {case: tmp_path_factory.mktemp(f"bad-export-{case}")
            for case in ("existing", "container-clash", "no-valid-name")}
    (outs["existing"] / "existing.bentomodel").write_bytes(b"an older archive")
    common = ("--format", "bentoml", "--tracking-uri", rich_model.url, "-q")
    procs = run_all({
        "existing": (("export", rich_model.uri, "-o", str(outs["existing"] /
                                                         "existing.bentomodel"), *common),
                     {"cwd": outs["existing"]}),
        "container-clash": (("export", rich_model.uri, "-o", str(outs["container-clash"] /
                                                                "x.bentomodel"),
                             "--container", "zip", *common), {"cwd": outs["container-clash"]}),
        "no-valid-name": (("export", f"models:/{name}/{katakana}", "-o",
                           f"{outs['no-valid-name']}/", *common), {"cwd": outs["no-valid-name"]}),
    })
    return {case: (procs[case], outs[case]) for case in outs}, name


def test_export_onto_an_existing_bentomodel_without_force_is_refused(bad_exports):
    proc, out = bad_exports[0]["existing"]
    assert "--force" in assert_user_error(proc)
    assert [p.name for p in out.iterdir()] == ["existing.bentomodel"]
    assert (out / "existing.bentomodel").read_bytes() == b"an older archive"


def test_a_bentomodel_name_with_another_container_is_refused(bad_exports):
    proc, out = bad_exports[0]["container-clash"]
    line = assert_user_error(proc)
    assert "tar.xz" in line and "zip" in line
    assert list(out.iterdir()) == []


def test_a_name_with_no_letter_or_digit_bentoml_takes_is_refused(bad_exports):
    results, name = bad_exports
    proc, out = results["no-valid-name"]
    line = assert_user_error(proc)
    assert "BentoML" in line and name in line
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------- S3 and memory://


def test_s3_export_into_a_folder_gets_the_derived_bentomodel_name(s3, s3_export, rich_model):
    prefix = f"s3://{s3.bucket}/bento/"
    assert s3_export["location"] == (
        f"{prefix}{rich_model.name}-v{rich_model.version}.bentomodel")
    assert s3.keys("bento/") == [s3_export["location"].removeprefix(f"s3://{s3.bucket}/")]


def test_s3_bentomodel_object_is_a_valid_xz_of_the_export(s3, s3_export):
    data = s3_object(s3, s3_export["location"])
    assert (len(data), hashlib.sha256(data).hexdigest()) == (s3_export["size"],
                                                              s3_export["sha256"])
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data)), mode="r:") as tf:
        document = yaml.safe_load(tf.extractfile(tf.getmember("model.yaml")).read())
    assert document["module"] == "bentoml.mlflow"


def test_s3_bentomodel_imports_with_its_metadata(s3, s3_export, rich_model, server_b):
    name = unique("bento-from-s3")
    imported = import_archive(s3_export["location"], name=name, tracking_uri=server_b.url,
                              storage_options=s3.storage_options(), progress=False)
    assert (imported.digest, imported.reused) == (s3_export["digest"], False)
    source = client_for(rich_model.url).get_model_version(rich_model.name, rich_model.version)
    target = client_for(server_b.url).get_model_version(name, imported.version)
    assert target.description == source.description
    assert source.tags.items() <= target.tags.items()
    assert sorted(target.aliases) == ["champion", "stable"]


def test_export_to_an_s3_key_in_process(s3, rich_model):
    url = f"s3://{s3.bucket}/keyed/{uuid.uuid4().hex}/iris.bentomodel"
    result = export_model(rich_model.uri, url, format="bentoml", tracking_uri=rich_model.url,
                          storage_options=s3.storage_options(), progress=False)
    assert (result.location, result.container) == (url, "tar.xz")
    assert s3_object(s3, url).startswith(XZ_MAGIC)
    assert verify_archive(url, storage_options=s3.storage_options(), progress=False).ok


def test_foreign_bentomodel_imports_from_s3_as_an_archive_backed_version(s3, server_b,
                                                                         tmp_path):
    name = unique("bento-s3-foreign")
    document = bento_document(name)
    path = write_bento(tmp_path / f"{name}.bentomodel", sklearn_bento_files(document))
    key = f"foreign/{path.name}"
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=path.read_bytes())
    imported = import_archive(f"s3://{s3.bucket}/{key}", tracking_uri=server_b.url,
                              storage_options=s3.storage_options(), progress=False)
    assert imported.name == name
    files = download_model(imported.model_uri, server_b.url, tmp_path / "dl")
    assert sha256_file(files / "archive" / path.name) == sha256_file(path)
    tags = client_for(server_b.url).get_model_version(name, imported.version).tags
    assert tags["bentoml.version"] == document["version"]


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def s3_failures(s3, s3_export, rich_model, server_b, tmp_path_factory):
    """case -> (proc, working folder) of CLI runs against an unreachable or refusing S3,
    run at once; with the bucket's keys and server_b's census before and after."""
    no_retries = ["--storage-option", "config_kwargs.retries.max_attempts=1"]
    closed = ["--storage-option", f"endpoint_url={closed_endpoint()}", *no_retries]
    endpoint = ["--storage-option", f"endpoint_url={s3.endpoint}"]
    wrong = child_env(AWS_SECRET_ACCESS_KEY=WRONG_SECRET)
    export = ("export", rich_model.uri, "--format", "bentoml", "--tracking-uri", rich_model.url)
    calls = {
        "export-unreachable": ((*export, "-o", f"s3://{s3.bucket}/down/x.bentomodel", *closed),
                               {}),
        "import-unreachable": (("import", s3_export["location"], "--tracking-uri",
                                server_b.url, *closed), {}),
        "export-wrong-secret": ((*export, "-o", f"s3://{s3.bucket}/denied/x.bentomodel",
                                 *endpoint), {"env": wrong}),
        "import-wrong-secret": (("import", s3_export["location"], "--tracking-uri",
                                 server_b.url, *endpoint), {"env": wrong}),
    }
    workdirs = {case: tmp_path_factory.mktemp(f"s3-{case}") for case in calls}
    keys, before = s3.keys(), registry_census(server_b.url)
    procs = run_all({case: (args, {**kwargs, "cwd": workdirs[case], "timeout": 90})
                     for case, (args, kwargs) in calls.items()})
    results = {case: (procs[case], workdirs[case]) for case in calls}
    return results, (keys, s3.keys()), (before, registry_census(server_b.url))


@pytest.mark.parametrize(("case", "expected"), [
    ("export-unreachable", "cannot reach s3://"),
    ("import-unreachable", "cannot read s3://"),
    ("export-wrong-secret", "denied"),
    ("import-wrong-secret", "denied"),
])
def test_s3_failure_is_one_line_without_the_secret(case, expected, s3, s3_failures):
    results, _, _ = s3_failures
    proc, workdir = results[case]
    assert expected in assert_user_error(proc)
    assert WRONG_SECRET not in proc.stdout + proc.stderr
    assert s3.secret_key not in proc.stdout + proc.stderr
    assert list(workdir.iterdir()) == []


def test_s3_failures_write_no_object(s3_failures):
    _, (keys_before, keys_after), _ = s3_failures
    assert keys_before  # the export the imports read is there
    assert keys_after == keys_before


def test_s3_failures_register_nothing(s3_failures):
    _, _, (before, after) = s3_failures
    assert after == before


@pytest.fixture
def memory_root():
    root = f"memory://bento-tests-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    path = root.removeprefix("memory://")
    for candidate in (path, f"/{path}"):
        if fs.exists(candidate):
            fs.rm(candidate, recursive=True)


def test_memory_bentomodel_round_trip_in_process(memory_root, rich_model, server_b):
    result = export_model(rich_model.uri, f"{memory_root}/", format="bentoml",
                          tracking_uri=rich_model.url, progress=False)
    assert result.location == (
        f"{memory_root}/{rich_model.name}-v{rich_model.version}.bentomodel")
    with fsspec.open(result.location, "rb") as handle:
        data = handle.read()
    assert data.startswith(XZ_MAGIC) and len(lzma.decompress(data)) > len(data) // 2
    name = unique("bento-from-memory")
    imported = import_archive(result.location, name=name, tracking_uri=server_b.url,
                              progress=False)
    assert (imported.name, imported.digest, imported.reused) == (name, result.digest, False)
    version = client_for(server_b.url).get_model_version(name, imported.version)
    assert version.tags["validated"] == "true"
