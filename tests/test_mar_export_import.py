"""TorchServe ``.mar``: export MLflow models as .mar, import .mar files back, serve in-process.

Exports of the rich model (zip, tgz, folder) are made once per module and imported into
server_b once each; foreign archives are made with the drop-in ``torch-model-archiver``
(``mlflow_archive_plugin.torchserve``) from small files written here. The generated handler
runs in this process against a context object that records what TorchServe would be told.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import (
    CHECKSUM_FILE,
    METADATA_FILE,
    assert_user_error,
    cli,
    download_model,
    load_and_predict,
    register_iris_model,
    registry_census,
    sha256_file,
    tree_hashes,
    unique,
)
from mlflow import MlflowClient

pytestmark = pytest.mark.server

PACKAGE = Path(__file__).resolve().parent.parent / "mlflow_archive_plugin"
HANDLER_SOURCE = PACKAGE / "formats" / "mar_handler.py"
MANIFEST = "MAR-INF/MANIFEST.json"
CONTAINERS = ["zip", "tgz", "folder"]


def client_for(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, int, float]]:
    return sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def sha256sum_check(root: Path) -> subprocess.CompletedProcess:
    """coreutils ``sha256sum --strict -c checksum.txt`` run inside ``root``."""
    return subprocess.run(
        ["sha256sum", "--strict", "-c", CHECKSUM_FILE],
        cwd=root, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def extract(location: str, container: str, dst: Path) -> Path:
    """The archive unpacked with the standard library; for a tgz, the folder above ``<name>/``."""
    if container == "folder":
        return Path(location)
    dst.mkdir(parents=True, exist_ok=True)
    if container == "zip":
        with zipfile.ZipFile(location) as zf:
            zf.extractall(dst)
    else:
        with tarfile.open(location) as tf:
            tf.extractall(dst, filter="data")
    return dst


# --------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def mar_exports(rich_model, tmp_path_factory):
    """container -> (ExportResult, folder holding the archive's files at its root)."""
    from mlflow_archive_plugin import export_model

    exports = {}
    for container in CONTAINERS:
        workdir = tmp_path_factory.mktemp(f"mar-{container}")
        out = workdir / "out"
        out.mkdir()
        result = export_model(rich_model.uri, str(out), format="mar", container=container,
                              tracking_uri=rich_model.url)
        unpacked = extract(result.location, container, workdir / "extracted")
        root = unpacked / rich_model.name if container == "tgz" else unpacked
        exports[container] = (result, root)
    return exports


@pytest.fixture(scope="module")
def mar_zip(mar_exports):
    return mar_exports["zip"]


def test_zip_export_is_named_after_the_registered_model_with_mar_extension(mar_zip, rich_model):
    result, _ = mar_zip
    assert Path(result.location).name == f"{rich_model.name}.mar"
    assert Path(result.location).is_file()
    assert (result.format, result.container) == ("mar", "zip")


def test_export_of_oddly_named_model_uses_a_torchserve_valid_name(server_a, tmp_path):
    from mlflow_archive_plugin import export_model
    from mlflow_archive_plugin.torchserve.archiver import MODEL_NAME_PATTERN

    suffix = unique("x").removeprefix("x-")
    name = f"_iris model (prod) {suffix}"
    register_iris_model(server_a.url, name)
    result = export_model(f"models:/{name}/1", str(tmp_path), format="mar",
                          tracking_uri=server_a.url)
    expected = f"iris_model_prod_{suffix}"
    assert MODEL_NAME_PATTERN.match(expected)
    assert Path(result.location).name == f"{expected}.mar"
    with zipfile.ZipFile(result.location) as zf:
        assert json.loads(zf.read(MANIFEST))["model"]["modelName"] == expected


def test_zip_export_holds_manifest_handler_requirements_model_and_documents(mar_zip):
    result, _ = mar_zip
    with zipfile.ZipFile(result.location) as zf:
        names = set(zf.namelist())
    assert {MANIFEST, "mlflow_handler.py", "requirements.txt", "model/MLmodel",
            METADATA_FILE, CHECKSUM_FILE} <= names


def test_zip_export_requirements_txt_is_the_models_own(mar_zip):
    _, root = mar_zip
    assert (root / "requirements.txt").read_bytes() == (
        root / "model" / "requirements.txt"
    ).read_bytes()


def test_zip_export_handler_is_the_packaged_mlflow_handler(mar_zip):
    _, root = mar_zip
    assert (root / "mlflow_handler.py").read_bytes() == HANDLER_SOURCE.read_bytes()


def test_manifest_keys_are_in_torch_model_archiver_order(mar_zip):
    _, root = mar_zip
    assert list(read_json(root / MANIFEST)) == ["createdOn", "runtime", "model",
                                                "archiverVersion"]


def test_manifest_names_handler_version_requirements_and_model(mar_zip, rich_model):
    _, root = mar_zip
    manifest = read_json(root / MANIFEST)
    assert manifest["runtime"] == "python"
    model = manifest["model"]
    assert model["modelName"] == rich_model.name
    assert model["handler"] == "mlflow_handler.py"
    assert model["modelVersion"] == rich_model.version
    assert model["requirementsFile"] == "requirements.txt"


def test_zip_entries_have_no_data_descriptor_flag(mar_zip):
    result, _ = mar_zip
    with zipfile.ZipFile(result.location) as zf:
        flagged = [info.filename for info in zf.infolist() if info.flag_bits & 0x08]
    assert flagged == []


def test_metadata_document_records_mar_layout(mar_zip, rich_model):
    _, root = mar_zip
    document = read_json(root / METADATA_FILE)
    assert (document["layout"], document["model_path"]) == ("mar", "model")
    assert document["registered_model"]["name"] == rich_model.name
    assert document["model_version"]["version"] == rich_model.version


def test_cli_verify_passes_on_zip_export(mar_zip, tmp_path):
    result, _ = mar_zip
    proc = cli("verify", result.location, "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("intact: "), proc.stdout


def test_sha256sum_check_passes_on_extracted_zip_export(mar_zip):
    _, root = mar_zip
    proc = sha256sum_check(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tgz_export_is_named_after_the_model_with_tar_gz_extension(mar_exports, rich_model):
    result, _ = mar_exports["tgz"]
    assert Path(result.location).name == f"{rich_model.name}.tar.gz"
    assert result.container == "tar.gz"


def test_tgz_export_puts_every_member_under_the_model_name(mar_exports, rich_model):
    result, _ = mar_exports["tgz"]
    with tarfile.open(result.location) as tf:
        names = tf.getnames()
    assert f"{rich_model.name}/{MANIFEST}" in names
    outside = [n for n in names if not n.startswith(f"{rich_model.name}/")]
    assert outside == []


def test_sha256sum_check_passes_inside_extracted_tgz_folder(mar_exports):
    _, root = mar_exports["tgz"]
    assert (root / CHECKSUM_FILE).is_file()
    proc = sha256sum_check(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_verify_archive_ok_on_tgz_export(mar_exports):
    from mlflow_archive_plugin import verify_archive

    result, root = mar_exports["tgz"]
    report = verify_archive(result.location)
    assert report.ok, report.problems
    assert report.checked == len(tree_hashes(root)) - 1


def test_folder_export_is_a_folder_named_after_the_model(mar_exports, rich_model):
    result, root = mar_exports["folder"]
    assert Path(result.location).name == rich_model.name
    assert root.is_dir()
    assert (root / MANIFEST).is_file()


def test_sha256sum_check_passes_in_folder_export(mar_exports):
    _, root = mar_exports["folder"]
    proc = sha256sum_check(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- round trip


@pytest.fixture(scope="module", params=CONTAINERS)
def mar_roundtrip(request, mar_exports, server_b):
    """(container, ImportResult) for each .mar export imported into server_b under a new name."""
    from mlflow_archive_plugin import import_archive

    container = request.param
    result, _ = mar_exports[container]
    return container, import_archive(result.location, name=unique(f"mar-rt-{container}"),
                                     tracking_uri=server_b.url)


def test_mar_import_registers_a_new_version(mar_roundtrip):
    _, imported = mar_roundtrip
    assert (imported.version, imported.reused) == ("1", False)


def test_mar_import_keeps_registered_model_description_and_tags(mar_roundtrip, rich_model,
                                                                server_b):
    _, imported = mar_roundtrip
    source = client_for(rich_model.url).get_registered_model(rich_model.name)
    target = client_for(server_b.url).get_registered_model(imported.name)
    assert target.description == source.description
    assert source.tags.items() <= target.tags.items()


def test_mar_import_keeps_version_description_tags_and_aliases(mar_roundtrip, rich_model,
                                                               server_b):
    _, imported = mar_roundtrip
    source = client_for(rich_model.url).get_model_version(rich_model.name, rich_model.version)
    target = client_for(server_b.url).get_model_version(imported.name, imported.version)
    assert target.description == source.description
    assert source.tags
    assert source.tags.items() <= target.tags.items()
    assert sorted(target.aliases) == sorted(source.aliases) == ["champion", "stable"]


def test_mar_import_keeps_run_params_and_metric_histories(mar_roundtrip, rich_model, server_b):
    _, imported = mar_roundtrip
    source_client, target_client = client_for(rich_model.url), client_for(server_b.url)
    source = source_client.get_run(rich_model.run_id)
    target = target_client.get_run(imported.run_id)
    assert target.data.params == source.data.params
    assert set(target.data.metrics) == set(source.data.metrics)
    for key in source.data.metrics:
        assert history(target_client, imported.run_id, key) == history(
            source_client, rich_model.run_id, key
        ), key


def test_mar_import_stores_the_model_files_byte_for_byte(mar_roundtrip, rich_model, server_b,
                                                         tmp_path):
    _, imported = mar_roundtrip
    source = tree_hashes(download_model(rich_model.uri, rich_model.url, tmp_path / "source"))
    target = tree_hashes(download_model(imported.model_uri, server_b.url, tmp_path / "target"))
    for hashes in (source, target):
        hashes.pop("registered_model_meta", None)  # names the registry entry, by design
    assert "MLmodel" in source
    assert target == source


def test_mar_import_predicts_like_the_source(mar_roundtrip, rich_model, server_b):
    _, imported = mar_roundtrip
    actual = load_and_predict(imported.model_uri, server_b.url, rich_model.X)
    np.testing.assert_array_equal(actual, rich_model.predictions)


# --------------------------------------------------------------------------- options


@pytest.fixture(scope="module")
def user_parts(tmp_path_factory) -> Path:
    """A user's handler, extra files (one file, one folder) and colliding names."""
    parts = tmp_path_factory.mktemp("user-parts")
    (parts / "my_handler.py").write_text("def handle(data, context):\n    return data\n")
    (parts / "labels.json").write_text('{"0": "setosa"}\n')
    (parts / "assets").mkdir()
    (parts / "assets" / "vocab.txt").write_text("a\nb\n")
    (parts / "weights.bin").write_bytes(os.urandom(256))
    (parts / "model-config.yaml").write_text("batchSize: 4\n")
    (parts / "gpu-requirements.txt").write_text("scikit-learn\n")
    for collider in ("requirements.txt", "mlflow_handler.py"):
        (parts / "collide" / collider).parent.mkdir(exist_ok=True)
        (parts / "collide" / collider).write_text("# collides with a generated file\n")
    return parts


@pytest.fixture(scope="module")
def with_user_handler(rich_model, user_parts, tmp_path_factory):
    """The CLI export with every user part (handler, extra, serialized, config and
    requirements files), extracted: (proc, archive, root)."""
    out = tmp_path_factory.mktemp("user-handler")
    proc = cli(
        "export", rich_model.uri, "--format", "mar", "-o", str(out / "custom.mar"),
        "--handler", str(user_parts / "my_handler.py"),
        "--extra-files", f"{user_parts / 'labels.json'},{user_parts / 'assets'}",
        "--serialized-file", str(user_parts / "weights.bin"),
        "--config-file", str(user_parts / "model-config.yaml"),
        "--requirements-file", str(user_parts / "gpu-requirements.txt"),
        "--tracking-uri", rich_model.url, "-q",
        cwd=user_parts,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    root = extract(str(out / "custom.mar"), "zip", out / "extracted")
    return proc, out / "custom.mar", root


def test_user_handler_is_named_in_manifest(with_user_handler):
    _, _, root = with_user_handler
    assert read_json(root / MANIFEST)["model"]["handler"] == "my_handler.py"


def test_user_handler_replaces_generated_handler(with_user_handler, user_parts):
    _, _, root = with_user_handler
    assert (root / "my_handler.py").read_bytes() == (user_parts / "my_handler.py").read_bytes()
    assert not (root / "mlflow_handler.py").exists()


def test_extra_files_land_at_archive_root(with_user_handler, user_parts):
    _, _, root = with_user_handler
    assert (root / "labels.json").read_bytes() == (user_parts / "labels.json").read_bytes()
    # A folder's contents go to the root, as torch-model-archiver puts them.
    assert (root / "vocab.txt").read_bytes() == (user_parts / "assets" / "vocab.txt").read_bytes()


def test_serialized_and_config_files_are_archived_and_named_in_manifest(with_user_handler,
                                                                         user_parts):
    _, _, root = with_user_handler
    model = read_json(root / MANIFEST)["model"]
    assert (model["serializedFile"], model["configFile"]) == ("weights.bin", "model-config.yaml")
    for name in ("weights.bin", "model-config.yaml"):
        assert (root / name).read_bytes() == (user_parts / name).read_bytes(), name


def test_user_requirements_file_replaces_the_models_requirements(with_user_handler,
                                                                 user_parts):
    _, _, root = with_user_handler
    assert read_json(root / MANIFEST)["model"]["requirementsFile"] == "gpu-requirements.txt"
    assert (root / "gpu-requirements.txt").read_bytes() == (
        user_parts / "gpu-requirements.txt"
    ).read_bytes()
    assert not (root / "requirements.txt").exists()
    assert (root / "model" / "requirements.txt").is_file()


def test_export_with_user_parts_still_verifies(with_user_handler):
    from mlflow_archive_plugin import verify_archive

    _, archive, root = with_user_handler
    assert verify_archive(str(archive)).ok
    assert sha256sum_check(root).returncode == 0


@pytest.mark.parametrize("collider", ["requirements.txt", "mlflow_handler.py"])
def test_extra_file_colliding_with_generated_file_is_a_user_error(
    collider, rich_model, user_parts, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    proc = cli(
        "export", rich_model.uri, "--format", "mar", "-o", str(out),
        "--extra-files", str(user_parts / "collide" / collider),
        "--tracking-uri", rich_model.url, "-q",
        cwd=tmp_path,
    )  # fmt: skip
    line = assert_user_error(proc)
    assert collider in line
    assert list(out.iterdir()) == []


def test_handler_option_with_mlflow_format_is_a_usage_error(rich_model, user_parts, tmp_path):
    proc = cli(
        "export", rich_model.uri, "--format", "mlflow", "-o", str(tmp_path / "m.zip"),
        "--handler", str(user_parts / "my_handler.py"),
        "--tracking-uri", rich_model.url,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--handler applies to --format mar only" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m.zip").exists()


# --------------------------------------------------------------------------- foreign .mar


@pytest.fixture(scope="module")
def archiver_inputs(tmp_path_factory) -> Path:
    """What a TorchServe user would hand torch-model-archiver."""
    src = tmp_path_factory.mktemp("archiver-inputs")
    (src / "handler.py").write_text("from ts.torch_handler.base_handler import BaseHandler\n")
    (src / "weights.pt").write_bytes(os.urandom(4096))
    (src / "index_to_name.json").write_text('{"0": "cat", "1": "dog"}\n')
    (src / "extra").mkdir()
    (src / "extra" / "tokenizer.txt").write_text("hello\nworld\n")
    (src / "requirements.txt").write_text("numpy\n")
    (src / "model-config.yaml").write_text("minWorkers: 1\nbatchSize: 2\n")
    return src


def make_foreign(src: Path, out: Path, archive_format: str, model_name: str) -> Path:
    from mlflow_archive_plugin.torchserve import ModelArchiverConfig, generate_model_archive

    out.mkdir(parents=True, exist_ok=True)
    return generate_model_archive(ModelArchiverConfig(
        model_name=model_name,
        handler=str(src / "handler.py"),
        version="1.0",
        serialized_file=str(src / "weights.pt"),
        extra_files=f"{src / 'index_to_name.json'},{src / 'extra'}",
        requirements_file=str(src / "requirements.txt"),
        config_file=str(src / "model-config.yaml"),
        export_path=str(out),
        archive_format=archive_format,
    ))


@pytest.fixture(scope="module")
def foreign(archiver_inputs, tmp_path_factory):
    """archive_format -> (model name, path) for a default .mar, a tgz and a no-archive folder."""
    out = tmp_path_factory.mktemp("foreign")
    made = {}
    for archive_format in ("default", "tgz", "no-archive"):
        name = unique(f"ts-{archive_format}")
        made[archive_format] = (name, make_foreign(archiver_inputs, out, archive_format, name))
    return made


@pytest.fixture(scope="module")
def foreign_imports(foreign, server_b):
    """archive_format -> ImportResult of the foreign archive imported into server_b."""
    from mlflow_archive_plugin import import_archive

    return {fmt: import_archive(str(path), tracking_uri=server_b.url)
            for fmt, (_, path) in foreign.items()}


@pytest.fixture(scope="module")
def foreign_mar_files(foreign_imports, server_b, tmp_path_factory) -> Path:
    """The imported default .mar's version artifacts, downloaded."""
    return download_model(foreign_imports["default"].model_uri, server_b.url,
                          tmp_path_factory.mktemp("foreign-download"))


def test_foreign_mar_registers_under_its_manifest_model_name(foreign, foreign_imports):
    name, _ = foreign["default"]
    imported = foreign_imports["default"]
    assert (imported.name, imported.version, imported.reused) == (name, "1", False)


def test_foreign_mar_manifest_becomes_torchserve_version_tags(foreign, foreign_imports,
                                                              server_b):
    name, path = foreign["default"]
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read(MANIFEST))
    tags = client_for(server_b.url).get_model_version(name, "1").tags
    assert {key: value for key, value in tags.items() if key.startswith("torchserve.")} == {
        "torchserve.modelName": name,
        "torchserve.handler": "handler.py",
        "torchserve.modelVersion": "1.0",
        "torchserve.serializedFile": "weights.pt",
        "torchserve.requirementsFile": "requirements.txt",
        "torchserve.configFile": "model-config.yaml",
        "torchserve.runtime": "python",
        "torchserve.createdOn": manifest["createdOn"],
        "torchserve.archiverVersion": manifest["archiverVersion"],
    }


def test_foreign_mar_artifacts_hold_mlmodel_original_archive_and_files(foreign,
                                                                       foreign_mar_files):
    name, _ = foreign["default"]
    listed = set(tree_hashes(foreign_mar_files))
    assert {"MLmodel", f"archive/{name}.mar", f"files/{MANIFEST}", "files/handler.py",
            "files/weights.pt", "files/index_to_name.json", "files/tokenizer.txt",
            "files/requirements.txt", "files/model-config.yaml"} <= listed


def test_foreign_mar_stored_archive_and_files_are_the_original_bytes(
    foreign, archiver_inputs, foreign_mar_files
):
    name, path = foreign["default"]
    assert sha256_file(foreign_mar_files / "archive" / f"{name}.mar") == sha256_file(path)
    assert (foreign_mar_files / "files" / "weights.pt").read_bytes() == (
        archiver_inputs / "weights.pt"
    ).read_bytes()


def test_foreign_mar_mlmodel_has_mlflow_archive_flavor(foreign, foreign_mar_files):
    import yaml

    name, _ = foreign["default"]
    flavor = yaml.safe_load((foreign_mar_files / "MLmodel").read_text())["flavors"][
        "mlflow_archive"
    ]
    assert (flavor["layout"], flavor["container"]) == ("mar", "zip")
    assert flavor["archive"] == f"archive/{name}.mar"
    assert flavor["manifest"]["model"]["modelName"] == name


def test_foreign_mar_reimport_returns_same_version_reused(foreign, foreign_imports, server_b):
    from mlflow_archive_plugin import import_archive

    _, path = foreign["default"]
    first = foreign_imports["default"]
    again = import_archive(str(path), tracking_uri=server_b.url)
    assert again.reused is True
    assert (again.name, again.version) == (first.name, first.version)


def test_foreign_mar_exports_back_byte_identical(foreign, foreign_imports, server_b, tmp_path):
    name, path = foreign["default"]
    out = tmp_path / "out"
    out.mkdir()
    proc = cli(
        "export", foreign_imports["default"].model_uri, "--format", "mar", "-o", str(out),
        "--tracking-uri", server_b.url, "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    exported = out / f"{name}.mar"
    assert [p.name for p in out.iterdir()] == [exported.name]
    assert sha256_file(exported) == sha256_file(path)


def test_foreign_tgz_imports_with_wrapper_folder_stripped(foreign, foreign_imports, server_b,
                                                          tmp_path):
    name, path = foreign["tgz"]
    imported = foreign_imports["tgz"]
    assert (imported.name, imported.version) == (name, "1")
    files = download_model(imported.model_uri, server_b.url, tmp_path / "dl")
    listed = set(tree_hashes(files))
    assert {f"files/{MANIFEST}", "files/weights.pt", f"archive/{name}.tar.gz"} <= listed
    assert not (files / "files" / name).exists()
    assert sha256_file(files / "archive" / f"{name}.tar.gz") == sha256_file(path)


def test_foreign_tgz_exports_back_byte_identical(foreign, foreign_imports, server_b, tmp_path):
    from mlflow_archive_plugin import export_model

    name, path = foreign["tgz"]
    result = export_model(foreign_imports["tgz"].model_uri, str(tmp_path), format="mar",
                          tracking_uri=server_b.url)
    assert Path(result.location).name == f"{name}.tar.gz"
    assert sha256_file(Path(result.location)) == sha256_file(path)


def test_foreign_no_archive_folder_imports_its_files(foreign, foreign_imports, server_b,
                                                     tmp_path):
    name, path = foreign["no-archive"]
    imported = foreign_imports["no-archive"]
    assert (imported.name, imported.version) == (name, "1")
    files = download_model(imported.model_uri, server_b.url, tmp_path / "dl")
    stored = {p.removeprefix("files/"): digest for p, digest in tree_hashes(files).items()
              if p.startswith("files/")}
    assert stored == tree_hashes(path)
    tags = client_for(server_b.url).get_model_version(name, "1").tags
    assert tags["torchserve.modelName"] == name


def test_foreign_no_archive_folder_exports_back_file_for_file(foreign, foreign_imports,
                                                               server_b, tmp_path):
    from mlflow_archive_plugin import export_model

    name, path = foreign["no-archive"]
    result = export_model(foreign_imports["no-archive"].model_uri, str(tmp_path), format="mar",
                          tracking_uri=server_b.url)
    assert (Path(result.location).name, result.container) == (name, "folder")
    assert tree_hashes(Path(result.location)) == tree_hashes(path)


def test_foreign_mar_export_with_container_other_than_stored_is_a_user_error(
    foreign_imports, server_b, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    proc = cli(
        "export", foreign_imports["default"].model_uri, "--format", "mar", "-o", str(out),
        "--container", "tgz", "--tracking-uri", server_b.url, "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert "zip" in assert_user_error(proc)
    assert list(out.iterdir()) == []


def test_foreign_mar_export_to_file_named_for_another_container_is_a_user_error(
    foreign_imports, server_b, tmp_path
):
    dest = tmp_path / "renamed.tar.gz"
    proc = cli(
        "export", foreign_imports["default"].model_uri, "--format", "mar", "-o", str(dest),
        "--tracking-uri", server_b.url, "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert_user_error(proc)
    assert not dest.exists()


# --------------------------------------------------------------------------- bad foreign input


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _manifest(model: dict) -> bytes:
    return json.dumps({"createdOn": "01/01/2024 00:00:00", "runtime": "python",
                       "model": model, "archiverVersion": "0.12.0"}).encode()


BAD_FOREIGN = {
    "no-manifest-no-metadata": {"handler.py": b"x = 1\n", "weights.pt": b"\0" * 64},
    "manifest-not-json": {MANIFEST: b"{not json", "handler.py": b"x = 1\n"},
    "missing-model-name": {
        MANIFEST: _manifest({"handler": "handler.py", "modelVersion": "1.0"}),
        "handler.py": b"x = 1\n",
    },
    "missing-model-version": {
        MANIFEST: _manifest({"modelName": "fine-name", "handler": "handler.py"}),
        "handler.py": b"x = 1\n",
    },
    "invalid-model-name": {
        MANIFEST: _manifest({"modelName": "-bad name", "handler": "handler.py",
                             "modelVersion": "1.0"}),
        "handler.py": b"x = 1\n",
    },
}


@pytest.mark.parametrize("case", sorted(BAD_FOREIGN))
def test_bad_foreign_archive_is_refused_with_one_line_and_registers_nothing(
    case, server_b, tmp_path
):
    archive = _zip(tmp_path / f"{case}.mar", BAD_FOREIGN[case])
    before = registry_census(server_b.url)
    proc = cli("import", str(archive), "--tracking-uri", server_b.url, "-q", cwd=tmp_path)
    assert_user_error(proc)
    assert registry_census(server_b.url) == before


# --------------------------------------------------------------------------- handler in-process


class RecordingContext:
    """The parts of TorchServe's Context the handler uses, recording every call."""

    def __init__(self, model_dir: Path) -> None:
        self.system_properties = {"model_dir": str(model_dir)}
        self.content_types: list[tuple[int, str]] = []
        self.statuses: list[tuple[int, str, int]] = []

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types.append((idx, value))

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        self.statuses.append((code, phrase, idx))


def load_handler_module():
    spec = importlib.util.spec_from_file_location("mlflow_handler_under_test", HANDLER_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def served(mar_zip):
    """(handler initialised on the extracted .mar, its model dir) like a TorchServe worker."""
    _, root = mar_zip
    handler = load_handler_module().MLflowPyfuncHandler()
    handler.initialize(RecordingContext(root))
    return handler, root


@pytest.fixture(scope="module")
def pyfunc_predictions(mar_zip, rich_model):
    _, root = mar_zip
    return mlflow.pyfunc.load_model(str(root / "model")).predict(rich_model.X)


def scoring_bodies(X: np.ndarray) -> dict[str, dict]:
    frame = pd.DataFrame(X, columns=[str(i) for i in range(X.shape[1])])
    return {
        "dataframe_split": {"dataframe_split": frame.to_dict(orient="split")},
        "dataframe_records": {"dataframe_records": frame.to_dict(orient="records")},
        "instances": {"instances": X.tolist()},
        "inputs": {"inputs": X.tolist()},
    }


FORMATS = ["dataframe_split", "dataframe_records", "instances", "inputs"]


def test_handler_initialize_loads_the_model(served):
    handler, _ = served
    assert handler.initialized is True
    assert handler.model is not None


@pytest.mark.parametrize("encoding", ["dict", "bytes"])
@pytest.mark.parametrize("scoring_format", FORMATS)
def test_handler_answers_like_pyfunc(served, rich_model, pyfunc_predictions, scoring_format,
                                     encoding):
    handler, root = served
    body = scoring_bodies(rich_model.X)[scoring_format]
    if encoding == "bytes":
        body = json.dumps(body).encode("utf-8")
    context = RecordingContext(root)
    answers = handler.handle([{"body": body}], context)
    assert len(answers) == 1
    assert json.loads(answers[0]) == {"predictions": np.asarray(pyfunc_predictions).tolist()}
    np.testing.assert_array_equal(pyfunc_predictions, rich_model.predictions)
    assert context.content_types == [(0, "application/json")]
    assert context.statuses == []


def test_handler_reads_data_key_when_body_is_absent(served, rich_model, pyfunc_predictions):
    handler, root = served
    data = json.dumps({"inputs": rich_model.X.tolist()}).encode("utf-8")
    answers = handler.handle([{"data": data}], RecordingContext(root))
    assert json.loads(answers[0]) == {"predictions": np.asarray(pyfunc_predictions).tolist()}


def test_handler_answers_each_request_of_a_batch(served, rich_model, pyfunc_predictions):
    handler, root = served
    bodies = scoring_bodies(rich_model.X)
    context = RecordingContext(root)
    answers = handler.handle([{"body": bodies[f]} for f in FORMATS], context)
    expected = {"predictions": np.asarray(pyfunc_predictions).tolist()}
    assert [json.loads(a) for a in answers] == [expected] * len(FORMATS)
    assert context.content_types == [(i, "application/json") for i in range(len(FORMATS))]


@pytest.mark.parametrize("body", [b"{not json", {"no_such_format": [1, 2]}, "[1, 2",
                                  {"inputs": "not numbers"}],
                         ids=["bytes-not-json", "unknown-key", "str-not-json", "wrong-type"])
def test_handler_malformed_body_gets_400_and_error_json(served, body):
    handler, root = served
    context = RecordingContext(root)
    answers = handler.handle([{"body": body}], context)
    assert context.statuses == [(400, "prediction failed", 0)]
    error = json.loads(answers[0])
    assert error["error_code"] and error["message"]
    assert "predictions" not in error


def test_handler_bad_request_in_batch_fails_only_that_request(served, rich_model,
                                                             pyfunc_predictions):
    handler, root = served
    context = RecordingContext(root)
    good = {"inputs": rich_model.X.tolist()}
    answers = handler.handle([{"body": good}, {"body": b"{oops"}, {"body": good}], context)
    assert [code for code, _, idx in context.statuses] == [400]
    assert [idx for _, _, idx in context.statuses] == [1]
    expected = {"predictions": np.asarray(pyfunc_predictions).tolist()}
    assert json.loads(answers[0]) == json.loads(answers[2]) == expected
    assert "error_code" in json.loads(answers[1])


def test_handler_non_utf8_body_gets_400_without_raising(served):
    handler, root = served
    context = RecordingContext(root)
    answers = handler.handle([{"body": b"\xff\xfe{"}], context)
    assert context.statuses == [(400, "prediction failed", 0)]
    assert json.loads(answers[0])["error_code"]


