"""Refuse before extracting (issue 17, items 1 and 2).

What an archive is, and whether its files fit, is decided from its listing (a zip's central
directory, a folder's files, a plain tar's headers) before any entry is written. The
temporary disk here is a real 100 MiB file system (a tmpfs mounted for the test), so an
archive that was extracted before being refused would fail with "no space left" instead of
the one line each test expects.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import mlflow
import pytest
from conftest import assert_user_error, cli, global_tracking_uri, registry_census, unique

SMALL_DISK = 100 * 1024**2
GIB = 1024**3
CHUNK = b"\0" * (16 * 1024**2)


@pytest.fixture()
def small_tmp(tmp_path):
    """A 100 MiB tmpfs to extract into, unmounted afterwards."""
    mount = tmp_path / "small-tmp"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip("mounting a 100 MiB tmpfs needs root (CAP_SYS_ADMIN), which this "
                    f"machine does not give: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def used(mount: Path) -> int:
    usage = shutil.disk_usage(mount)
    return usage.total - usage.free


def write_zeros_zip(path: Path, size: int, names=("data/zeros.bin",), extra=()) -> Path:
    """A zip whose members are ``size`` bytes of zeros each, deflated (about 1/1000th)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name in names:
            with archive.open(name, "w", force_zip64=True) as sink:
                for _ in range(size // len(CHUNK)):
                    sink.write(CHUNK)
        for name, data in extra:
            archive.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def gigabyte_of_nothing(tmp_path_factory) -> Path:
    """1 GiB of zeros and a README, deflated to about a megabyte: no model in it."""
    return write_zeros_zip(tmp_path_factory.mktemp("bomb") / "nothing.zip", GIB,
                           extra=[("README.txt", b"not a model\n")])


@pytest.fixture()
def registry(tmp_path):
    return f"sqlite:///{tmp_path / 'registry.db'}"


def test_a_gigabyte_archive_with_no_model_is_refused_before_writing(
        gigabyte_of_nothing, small_tmp, registry, tmp_path):
    before = registry_census(registry)
    line = assert_user_error(cli("import", str(gigabyte_of_nothing), "--tmp-dir",
                                 str(small_tmp), "--tracking-uri", registry, cwd=tmp_path))
    assert "not a model archive" in line, line
    assert used(small_tmp) < 1024**2, f"{used(small_tmp)} bytes left in the temporary disk"
    assert registry_census(registry) == before


def test_verify_reads_an_archive_with_no_model_without_writing_it(
        gigabyte_of_nothing, small_tmp, tmp_path):
    """verify reports every problem; with no model to check, it hashes without extracting."""
    proc = cli("verify", str(gigabyte_of_nothing), "--tmp-dir", str(small_tmp), cwd=tmp_path,
               timeout=300)
    assert proc.returncode != 0
    assert "mlflow-archive.json: missing, so the archive holds no model" in proc.stdout + \
        proc.stderr, proc.stdout + proc.stderr
    assert "No space left" not in proc.stdout + proc.stderr
    assert used(small_tmp) < 1024**2


def test_a_folder_with_no_model_is_refused_before_writing(small_tmp, registry, tmp_path):
    folder = tmp_path / "notes"
    (folder / "big").mkdir(parents=True)
    with (folder / "big" / "zeros.bin").open("wb") as handle:  # sparse: no disk of its own
        handle.truncate(SMALL_DISK * 2)
    (folder / "README.md").write_text("notes, not a model\n")
    line = assert_user_error(cli("import", str(folder), "--tmp-dir", str(small_tmp),
                                 "--tracking-uri", registry, cwd=tmp_path))
    assert "not a model archive" in line, line
    assert used(small_tmp) < 1024**2


def test_a_plain_tar_with_no_model_is_refused_before_writing(small_tmp, tmp_path):
    """verify, which extracts every member (import would leave this stored one in place)."""
    path = tmp_path / "nothing.tar"
    data = tmp_path / "zeros.bin"
    with data.open("wb") as handle:
        handle.truncate(SMALL_DISK + 50 * 1024**2)
    with tarfile.open(path, "w") as archive:
        archive.add(data, arcname="data/zeros.bin")
    data.unlink()
    proc = cli("verify", str(path), "--tmp-dir", str(small_tmp), cwd=tmp_path)
    assert proc.returncode != 0
    assert "holds no model" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "No space left" not in proc.stdout + proc.stderr
    assert used(small_tmp) < 1024**2


def test_declared_sizes_past_max_size_are_refused_before_writing(
        gigabyte_of_nothing, small_tmp, tmp_path):
    line = assert_user_error(cli("verify", str(gigabyte_of_nothing), "--max-size", "100M",
                                 "--tmp-dir", str(small_tmp), cwd=tmp_path))
    assert f"declare {GIB + 12} bytes (1.0 GiB), so the archive holds more than {100 * 1024**2}" \
        in line, line  # the zeros and the 12-byte README
    assert used(small_tmp) < 1024**2


@pytest.fixture(scope="module")
def big_model_archive(tmp_path_factory) -> tuple[Path, str]:
    """A real export of a model with a 150 MiB weights file of zeros (deflated small)."""
    from mlflow_archive_plugin import export_model

    root = tmp_path_factory.mktemp("big-model")
    uri = f"sqlite:///{root / 'source.db'}"
    weights = root / "weights.bin"
    with weights.open("wb") as handle:
        for _ in range(150 * 1024**2 // len(CHUNK)):
            handle.write(CHUNK)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment(unique("big"),
                                          artifact_location=(root / "artifacts").as_uri())
    # a module fixture runs before the per-test restore: the global URI is put back here
    with global_tracking_uri(uri), mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=_Echo(),
                                       artifacts={"weights": str(weights)},
                                       pip_requirements=["mlflow"])
    weights.unlink()
    result = export_model(f"models:/{info.model_id}", root / "big.zip", tracking_uri=uri,
                          progress=False)
    return Path(result.location), uri


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_an_archive_larger_than_the_free_temporary_disk_is_refused_in_one_line(
        big_model_archive, small_tmp, registry, tmp_path):
    archive, _ = big_model_archive
    assert archive.stat().st_size < 10 * 1024**2  # small to download, 150 MiB to extract
    before = registry_census(registry)
    line = assert_user_error(cli("import", str(archive), "--tmp-dir", str(small_tmp),
                                 "--tracking-uri", registry, cwd=tmp_path))
    assert "needs 144.0 MiB" in line and "100.0 MiB free" in line and "--tmp-dir" in line, line
    assert used(small_tmp) < 1024**2
    assert registry_census(registry) == before
    # the same archive where there is room: imported
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    proc = cli("import", str(archive), "--tmp-dir", str(roomy), "--tracking-uri", registry,
               "-q", "--max-ratio", "1e6", cwd=tmp_path, timeout=300)  # zeros: a 1000x ratio
    assert proc.returncode == 0, proc.stderr
    assert registry_census(registry)["model_versions"] == before["model_versions"] + 1
    assert os.listdir(roomy) == []


def test_a_missing_tmp_dir_is_one_line(gigabyte_of_nothing, tmp_path):
    line = assert_user_error(cli("verify", str(gigabyte_of_nothing), "--tmp-dir",
                                 str(tmp_path / "absent"), cwd=tmp_path))
    assert "does not exist" in line, line


def test_the_listing_check_leaves_a_real_model_archive_readable(big_model_archive, tmp_path):
    from mlflow_archive_plugin import ReadLimits, verify_archive

    archive, _ = big_model_archive
    report = verify_archive(archive, progress=False, tmp_dir=tmp_path,
                            limits=ReadLimits(max_ratio=1e6))
    assert report.ok, report.problems


def test_an_export_larger_than_the_destinations_free_space_is_refused(
        big_model_archive, small_tmp, tmp_path):
    _, uri = big_model_archive
    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    (logged,) = client.search_logged_models(experiments)
    line = assert_user_error(cli("export", f"models:/{logged.model_id}", "-o",
                                 str(small_tmp / "big.zip"), "--tracking-uri", uri,
                                 cwd=tmp_path))
    assert "144.0 MiB" in line and "100.0 MiB free" in line, line
    assert os.listdir(small_tmp) == []


def test_an_import_larger_than_the_artifact_stores_free_space_is_refused(
        big_model_archive, small_tmp, tmp_path):
    archive, _ = big_model_archive
    registry = f"sqlite:///{tmp_path / 'target.db'}"
    experiment = unique("cramped")
    mlflow.MlflowClient(registry).create_experiment(experiment,
                                                    artifact_location=small_tmp.as_uri())
    before = registry_census(registry)
    line = assert_user_error(cli("import", str(archive), "--experiment", experiment,
                                 "--tracking-uri", registry, "--max-ratio", "1e6",
                                 cwd=tmp_path, timeout=300))
    assert "144.0 MiB" in line and "100.0 MiB free" in line and "--experiment" in line, line
    assert registry_census(registry) == before
    assert os.listdir(small_tmp) == []
