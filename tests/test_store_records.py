"""Stores never trust their own records (issue 15, item 5), tried with hostile stores.

Each test builds a sandbox folder holding a store and, beside it, things that are not the
store's (an archive of another model, a victim folder). It then makes the store hostile the
way anyone who can write to it could: a record pointing outside, a revision folder such as
``../../x``, a symbolic link planted inside. Every hostile store is refused with its own
one-line message (exit 1 and one ``Error:`` line through ``mlflow deployments``), and the
sandbox's tree (every path, link target and file hash) is the same afterwards, so nothing
was written or deleted outside; what is read is checked by what comes back (no predictions
of the other model, none of the victim's bytes).

Classes: the ``archive`` deployments store (records: location, revision folder, file name,
fields, size; links: the deployment folder, the record, the revision folder, the archive)
and the ``archive+file`` artifact store (its packed models and archive files as links, links
leading out for every verb, a packed model's shadowed files behind a link).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import child_env, global_tracking_uri, register_iris_model, registry_census, unique
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

pytestmark = pytest.mark.server

RECORD = "deployment.json"
PACKED = ".mlflow-archive.zip"
OUT_OF_ROOT = "resolved path is outside the artifact directory"


# --------------------------------------------------------------------------- the sandbox


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root``, never following a link: folders, link targets, hashes."""
    state: dict[str, str] = {}
    for top, folders, files in os.walk(root):
        for name in (*folders, *files):
            path = Path(top, name)
            key = path.relative_to(root).as_posix()
            if path.is_symlink():
                state[key] = "link -> " + os.readlink(path)
            elif path.is_dir():
                state[key] = "<dir>"
            else:
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def one_line(call, *args, **kwargs) -> str:
    """The message of the MlflowException ``call`` raised, which must be one line."""
    with pytest.raises(MlflowException) as caught:
        call(*args, **kwargs)
    message = caught.value.message
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


def deployments_cli(*args: str, tracking: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlflow", "deployments", *args],
                          cwd=str(cwd), env=child_env(MLFLOW_TRACKING_URI=tracking),
                          capture_output=True, text=True, timeout=180)


def cli_error_line(proc: subprocess.CompletedProcess) -> str:
    detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 1, detail
    assert "Traceback" not in proc.stderr, detail
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, detail
    return errors[0]


# --------------------------------------------------------------------------- deployments


@pytest.fixture(scope="module")
def model(server_a):
    """A registered model (version 1) and the features it predicts on."""
    from sklearn.datasets import load_iris

    name = unique("records-iris")
    register_iris_model(server_a.url, name)
    features, _ = load_iris(return_X_y=True, as_frame=True)
    return {"uri": f"models:/{name}/1", "url": server_a.url, "X": features.iloc[::15]}


@pytest.fixture(autouse=True)
def _tracking(server_a):
    with global_tracking_uri(server_a.url):
        yield


@pytest.fixture(scope="module")
def template(tmp_path_factory, model) -> Path:
    """A store holding one good deployment, ``good``, copied into each test's sandbox."""
    store = tmp_path_factory.mktemp("template") / "store"
    with global_tracking_uri(model["url"]):
        get_deploy_client(f"archive:{store}").create_deployment("good", model["uri"])
    return store


class Sandbox:
    """``<sandbox>/store`` (a copy of the template store) and ``<sandbox>/outside``: the
    victim folder, a copy of the good archive (so a record that points there would predict)
    and a spare copy of the good deployment's folder."""

    def __init__(self, root: Path, template: Path) -> None:
        self.root = root
        self.store = root / "store"
        shutil.copytree(template, self.store, symlinks=True)
        self.record = json.loads((self.store / "good" / RECORD).read_text())
        # copies keep the template's absolute location: point it at this sandbox's store
        self.revision = self.store / "good" / self.record["revision_dir"]
        self.archive = self.revision / self.record["file"]
        self.record["location"] = str(self.archive)
        self.write_record(self.record)
        self.outside = root / "outside"
        (self.outside / "victim").mkdir(parents=True)
        (self.outside / "victim" / "precious.txt").write_text("must survive")
        shutil.copyfile(self.archive, self.outside / self.record["file"])
        shutil.copytree(self.store / "good", self.outside / "good-copy")

    def client(self):
        return get_deploy_client(f"archive:{self.store}")

    def write_record(self, record, name: str = "good") -> None:
        (self.store / name / RECORD).write_text(json.dumps(record, indent=2))

    def hostile(self, **fields) -> dict:
        record = {**self.record, **fields}
        self.write_record(record)
        return record


@pytest.fixture
def sandbox(tmp_path, template) -> Sandbox:
    return Sandbox(tmp_path / "sandbox", template)


def test_the_good_deployment_predicts_from_a_sandbox_copy(sandbox, model):
    """The baseline every hostile store below departs from: it works, so refusals count."""
    predictions = sandbox.client().predict("good", model["X"])["predictions"]

    assert len(predictions) == len(model["X"])


def outside_locations(sandbox: Sandbox) -> list[str]:
    copy = sandbox.outside / sandbox.record["file"]
    return [
        str(copy),                                      # an absolute path elsewhere
        f"file://{copy}",                               # the same as a file URI
        os.path.relpath(copy, sandbox.store),           # relative to the store
        str(sandbox.store / "good" / ".." / ".." / "outside" / sandbox.record["file"]),
        "s3://someone-elses-bucket/model.zip",          # another file system
        str(sandbox.store / "other" / "r1-00000000" / sandbox.record["file"]),  # another one
    ]


@pytest.mark.parametrize("index", range(6))
def test_a_record_whose_location_points_elsewhere_is_refused(sandbox, model, index):
    location = outside_locations(sandbox)[index]
    sandbox.hostile(location=location)
    before = tree(sandbox.root)
    client = sandbox.client()

    for call in (lambda: client.predict("good", model["X"]),
                 lambda: client.get_deployment("good"),
                 lambda: client.list_deployments(),
                 lambda: client.update_deployment("good", model["uri"])):
        message = one_line(call)
        assert "is not the archive's place in this store" in message
        assert repr(location) in message
    assert tree(sandbox.root) == before


HOSTILE_REVISIONS = ["../../outside/victim", "../../outside", "..", ".", "", "/",
                     "r1-00000000/../../../outside/victim", "victim", "r1-DEADBEEF",
                     "r1-deadbeef/", 7, None, ["r1-deadbeef"]]


@pytest.mark.parametrize("revision_dir", HOSTILE_REVISIONS,
                         ids=[repr(value) for value in HOSTILE_REVISIONS])
def test_a_revision_folder_outside_the_deployment_is_refused_and_nothing_is_deleted(
        sandbox, model, revision_dir):
    """update removes the old revision folder once the new archive is in place; a record
    whose revision folder is ``../../outside/victim`` must not make it remove the victim."""
    sandbox.hostile(revision_dir=revision_dir)
    before = tree(sandbox.root)
    census = registry_census(model["url"])
    client = sandbox.client()

    for call in (lambda: client.update_deployment("good", model["uri"]),
                 lambda: client.predict("good", model["X"]),
                 lambda: client.get_deployment("good")):
        message = one_line(call)
        assert f"its revision folder {revision_dir!r} is not one this store makes" in message
    assert tree(sandbox.root) == before
    assert (sandbox.outside / "victim" / "precious.txt").read_text() == "must survive"
    assert registry_census(model["url"]) == census


HOSTILE_FILES = ["../../../outside/{file}", "../{file}", "sub/{file}", "..", "", ".{file}",
                 "{file}\\..\\x", 3]


@pytest.mark.parametrize("file", HOSTILE_FILES, ids=[repr(value) for value in HOSTILE_FILES])
def test_an_archive_file_name_that_is_not_one_plain_name_is_refused(sandbox, model, file):
    if isinstance(file, str):
        file = file.format(file=sandbox.record["file"])
    sandbox.hostile(file=file)
    before = tree(sandbox.root)

    message = one_line(sandbox.client().predict, "good", model["X"])

    assert f"its archive file name {file!r} is not one plain file name" in message
    assert tree(sandbox.root) == before


@pytest.mark.parametrize(("fields", "expected"), [
    ({"revision": "1; rm -rf"}, "its revision '1; rm -rf' is not a positive number"),
    ({"revision": True}, "its revision True is not a positive number"),
    ({"revision": -3}, "its revision -3 is not a positive number"),
    ({"source": None}, "it names no source model URI"),
    ({"config": {"sign_key": 5}}, "its config holds keys other than"),
    ({"config": {"evil": "x"}}, "its config holds keys other than"),
    ({"config": "format=mar"}, "its config holds keys other than"),
    ({"sha256": "../../etc/passwd"}, "its sha256 is not a SHA-256 digest"),
])
def test_record_fields_of_the_wrong_kind_are_refused_before_anything_is_done(
        sandbox, model, fields, expected):
    sandbox.hostile(**fields)
    before = tree(sandbox.root)

    for call in (lambda: sandbox.client().update_deployment("good"),
                 lambda: sandbox.client().get_deployment("good")):
        assert expected in one_line(call)
    assert tree(sandbox.root) == before


@pytest.mark.parametrize("body", ["huge", "deep", "not json", "a list", "other name"])
def test_an_oversized_deep_or_foreign_record_is_refused_as_such(sandbox, model, body):
    raw = {
        "huge": json.dumps({**sandbox.record, "padding": "x" * (2 * 1024 * 1024)}),
        "deep": "[" * 200_000 + "]" * 200_000,
        "not json": "{name: good",
        "a list": json.dumps([sandbox.record]),
        "other name": json.dumps({**sandbox.record, "name": "not-good"}),
    }[body]
    (sandbox.store / "good" / RECORD).write_text(raw)
    before = tree(sandbox.root)

    message = one_line(sandbox.client().get_deployment, "good")

    expected = "is larger than 1048576 bytes" if body == "huge" else "is damaged"
    assert expected in message
    assert tree(sandbox.root) == before


# ----- planted links


def plant_folder_link(sandbox: Sandbox) -> str:
    """``store/evil`` -> a folder outside holding a record that names ``evil`` correctly."""
    target = sandbox.outside / "good-copy"
    record = {**sandbox.record, "name": "evil",
              "location": str(sandbox.store / "evil" / sandbox.record["revision_dir"]
                              / sandbox.record["file"])}
    (target / RECORD).write_text(json.dumps(record))
    (sandbox.store / "evil").symlink_to(target, target_is_directory=True)
    return "evil"


def plant_record_link(sandbox: Sandbox) -> str:
    outside_record = sandbox.outside / "record.json"
    outside_record.write_text(json.dumps(sandbox.record))
    (sandbox.store / "good" / RECORD).unlink()
    (sandbox.store / "good" / RECORD).symlink_to(outside_record)
    return "good"


def plant_revision_link(sandbox: Sandbox) -> str:
    shutil.rmtree(sandbox.revision)
    sandbox.revision.symlink_to(sandbox.outside / "good-copy" / sandbox.record["revision_dir"],
                                target_is_directory=True)
    return "good"


def plant_archive_link(sandbox: Sandbox) -> str:
    sandbox.archive.unlink()
    sandbox.archive.symlink_to(sandbox.outside / sandbox.record["file"])
    return "good"


LINKS = {"deployment folder": plant_folder_link, "record": plant_record_link,
         "revision folder": plant_revision_link, "archive": plant_archive_link}


@pytest.mark.parametrize("where", list(LINKS))
def test_a_planted_link_is_never_followed_by_predict(sandbox, model, where):
    name = LINKS[where](sandbox)
    before = tree(sandbox.root)

    message = one_line(sandbox.client().predict, name, model["X"])

    assert "is a symbolic link planted in the store" in message
    assert tree(sandbox.root) == before


@pytest.mark.parametrize("where", ["deployment folder", "record"])
def test_a_planted_link_is_never_followed_by_get_list_update_create_or_delete(
        sandbox, model, where):
    name = LINKS[where](sandbox)
    before = tree(sandbox.root)
    census = registry_census(model["url"])
    client = sandbox.client()

    calls = [lambda: client.get_deployment(name), lambda: client.list_deployments(),
             lambda: client.update_deployment(name, model["uri"]),
             lambda: client.delete_deployment(name)]
    if where == "deployment folder":
        calls.append(lambda: client.create_deployment(name, model["uri"]))
    for call in calls:
        assert "is a symbolic link planted in the store" in one_line(call)
    assert tree(sandbox.root) == before
    assert registry_census(model["url"]) == census


def test_delete_of_a_deployment_with_a_hostile_record_removes_only_its_folder(sandbox):
    """The messages point to delete as the way out: it works on a record that is refused
    everywhere else, and it removes the deployment's folder and nothing the record names."""
    sandbox.hostile(revision_dir="../../outside/victim",
                    location=str(sandbox.outside / sandbox.record["file"]))
    before = {key: value for key, value in tree(sandbox.root).items()
              if not key.startswith("store/good")}

    sandbox.client().delete_deployment("good")

    assert not (sandbox.store / "good").exists()
    assert tree(sandbox.root) == before


HOSTILE_CLI = {
    "location": lambda s: s.hostile(location=str(s.outside / s.record["file"])),
    "revision folder": lambda s: s.hostile(revision_dir="../../outside/victim"),
    "file name": lambda s: s.hostile(file="../../../outside/" + s.record["file"]),
    "folder link": plant_folder_link,
    "oversized": lambda s: (s.store / "good" / RECORD).write_bytes(b" " * (2 << 20)),
}


@pytest.mark.parametrize("kind", list(HOSTILE_CLI))
def test_the_mlflow_cli_refuses_a_hostile_store_in_one_line(sandbox, model, kind, tmp_path):
    name = HOSTILE_CLI[kind](sandbox)
    name = name if isinstance(name, str) else "good"
    before = tree(sandbox.root)

    proc = deployments_cli("get", "-t", f"archive:{sandbox.store}", "--name", name,
                           tracking=model["url"], cwd=tmp_path)

    line = cli_error_line(proc)
    assert "is refused" in line or "symbolic link" in line or "larger than" in line, line
    assert tree(sandbox.root) == before


# --------------------------------------------------------------------------- the artifact store


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A small MLflow model folder saved by MLflow itself (no tracking needed)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    folder = tmp_path_factory.mktemp("saved") / "model"
    mlflow.sklearn.save_model(LogisticRegression(max_iter=300).fit(X, y), str(folder))
    return folder


class ArtifactSandbox:
    """``<sandbox>/store`` (an archive+file store) and ``<sandbox>/outside``: a victim folder
    and a model archive that is not the store's."""

    def __init__(self, root: Path, model_dir: Path) -> None:
        self.root = root
        self.store = root / "store"
        self.store.mkdir(parents=True)
        self.outside = root / "outside"
        (self.outside / "victim").mkdir(parents=True)
        (self.outside / "victim" / "precious.txt").write_text("must survive")
        (self.outside / "victim" / "model.pkl").write_text("not the store's")
        self.foreign = self.outside / "foreign.zip"
        get_artifact_repository(f"archive+file://{self.foreign}").log_artifacts(str(model_dir))
        self.repo = get_artifact_repository(f"archive+file://{self.store}")

    def link(self, relative: str, target: Path) -> None:
        path = self.store / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target, target_is_directory=target.is_dir())


@pytest.fixture
def artifacts(tmp_path, model_dir) -> ArtifactSandbox:
    return ArtifactSandbox(tmp_path / "sandbox", model_dir)


def test_a_packed_model_that_is_a_link_out_of_the_store_is_never_read(artifacts, tmp_path):
    artifacts.link(f"m/{PACKED}", artifacts.foreign)
    before = tree(artifacts.root)
    received = tmp_path / "received"
    received.mkdir()

    for call in (lambda: artifacts.repo.list_artifacts("m"),
                 lambda: artifacts.repo.download_artifacts("m/MLmodel"),
                 lambda: artifacts.repo.download_artifacts("m", str(received)),
                 lambda: artifacts.repo.get_local_path("m/MLmodel")):
        assert OUT_OF_ROOT in one_line(call)
    assert list(received.rglob("MLmodel")) == []
    assert tree(artifacts.root) == before


def test_an_archive_file_that_is_a_link_out_of_the_store_is_never_read(artifacts):
    artifacts.link("run/foreign.zip", artifacts.foreign)
    before = tree(artifacts.root)

    for call in (lambda: artifacts.repo.list_artifacts("run/foreign.zip"),
                 lambda: artifacts.repo.download_artifacts("run/foreign.zip/MLmodel"),
                 lambda: artifacts.repo.download_artifacts("run/foreign.zip")):
        assert OUT_OF_ROOT in one_line(call)
    assert [info.path for info in artifacts.repo.list_artifacts("run")] == []
    assert tree(artifacts.root) == before


def test_nothing_is_written_through_a_link_out_of_the_store(artifacts, model_dir, tmp_path):
    artifacts.link("run/leak", artifacts.outside / "victim")
    before = tree(artifacts.root)
    plain = tmp_path / "plain.txt"
    plain.write_text("new bytes")
    nested = tmp_path / "nested"
    shutil.copytree(model_dir, nested / "leak")  # a model folder named like the link

    for call in (lambda: artifacts.repo.log_artifact(str(plain), "run/leak"),
                 lambda: artifacts.repo.log_artifacts(str(tmp_path / "nested" / "leak"),
                                                      "run/leak"),
                 lambda: artifacts.repo.log_artifacts(str(nested), "run"),
                 lambda: artifacts.repo.log_artifact_from_stream(io.BytesIO(b"x"), "up.txt",
                                                                 "run/leak"),
                 lambda: artifacts.repo.delete_artifacts("run/leak/precious.txt"),
                 lambda: artifacts.repo.list_artifacts("run/leak")):
        assert OUT_OF_ROOT in one_line(call)
    assert tree(artifacts.root) == before


def test_listing_and_downloading_the_store_leave_a_link_out_of_it_unfollowed(artifacts,
                                                                            tmp_path):
    artifacts.link("run/leak", artifacts.outside / "victim")
    (artifacts.store / "run" / "kept.txt").write_text("the store's")
    before = tree(artifacts.root)
    received = tmp_path / "received"
    received.mkdir()

    listed = [info.path for info in artifacts.repo.list_artifacts("run")]
    whole = Path(artifacts.repo.download_artifacts("", str(received)))
    direct = artifacts.repo.download_artifacts("run")  # no destination: never the folder

    assert listed == ["run/kept.txt"]
    assert sorted(p.relative_to(whole).as_posix() for p in whole.rglob("*")) == [
        "run", "run/kept.txt"]
    assert not Path(direct, "leak", "precious.txt").exists()
    assert tree(artifacts.root) == before


def test_deleting_a_link_out_of_the_store_removes_the_link_only(artifacts):
    artifacts.link("run/leak", artifacts.outside / "victim")
    outside = tree(artifacts.outside)

    artifacts.repo.delete_artifacts("run/leak")

    assert not os.path.lexists(artifacts.store / "run" / "leak")
    assert tree(artifacts.outside) == outside


def test_packing_a_model_never_removes_a_shadowed_file_through_a_link(artifacts, model_dir,
                                                                      tmp_path):
    """Packing a model drops the plain files it holds newer copies of; one of them reached
    through a link that leads out of the store is not the store's, and stays."""
    artifacts.link("run/m/leak", artifacts.outside / "victim")
    logged = tmp_path / "m"
    shutil.copytree(model_dir, logged)
    (logged / "leak").mkdir()
    (logged / "leak" / "model.pkl").write_text("the model's own")
    outside = tree(artifacts.outside)

    artifacts.repo.log_artifacts(str(logged), "run/m")

    assert (artifacts.store / "run" / "m" / PACKED).is_file()
    assert tree(artifacts.outside) == outside
    assert (artifacts.outside / "victim" / "model.pkl").read_text() == "not the store's"


def test_an_object_store_key_named_dot_dot_is_neither_listed_nor_followed(tmp_path):
    """Object stores take any key: ``run/../escape.txt`` lists under ``run`` as a folder
    named ``..``. The store leaves it out, so downloading the store never reaches past it."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/{unique('records')}"
    fs.pipe(f"{root}/store/run/kept.txt", b"the store's")
    fs.pipe(f"{root}/store/run/../escape.txt", b"not the store's")
    assert f"{root}/store/run/.." in fs.ls(f"{root}/store/run", detail=False)
    try:
        repo = get_artifact_repository(f"archive+memory://{root}/store")
        received = tmp_path / "received"
        received.mkdir()

        listed = [info.path for info in repo.list_artifacts("run")]
        whole = Path(repo.download_artifacts("", str(received)))

        assert listed == ["run/kept.txt"]
        assert sorted(p.relative_to(whole).as_posix() for p in whole.rglob("*")) == [
            "run", "run/kept.txt"]
        assert "Invalid path" in one_line(repo.download_artifacts, "run/../escape.txt")
    finally:
        fs.rm(root, recursive=True)


def test_a_folder_download_takes_nothing_through_a_link_out_of_that_folder(artifacts,
                                                                          tmp_path):
    """MLflow roots a repository at the parent of a URI's last name (``mlflow artifacts
    download --artifact-uri <store>`` asks the store's parent for ``store``), so the store's
    own boundary is the folder being downloaded: a link below it leading out of it (here to
    the store's neighbour, inside that parent) is not followed; one staying inside is."""
    artifacts.link("run/leak", artifacts.outside / "victim")
    (artifacts.store / "run" / "real").mkdir(parents=True)
    (artifacts.store / "run" / "real" / "kept.txt").write_text("the store's")
    artifacts.link("run/alias", artifacts.store / "run" / "real")
    before = tree(artifacts.root)
    parent = get_artifact_repository(f"archive+file://{artifacts.root}")
    received = tmp_path / "received"
    received.mkdir()

    copied = Path(parent.download_artifacts("store", str(received)))
    direct = Path(parent.download_artifacts("store"))

    assert sorted(p.relative_to(copied).as_posix() for p in copied.rglob("*")) == [
        "run", "run/alias", "run/alias/kept.txt", "run/real", "run/real/kept.txt"]
    assert not (direct / "run" / "leak" / "precious.txt").exists()
    assert (direct / "run" / "alias" / "kept.txt").read_text() == "the store's"
    assert tree(artifacts.root) == before


def test_mlflow_artifacts_download_of_a_store_takes_nothing_through_a_planted_link(
        artifacts, tmp_path):
    artifacts.link("run/leak", artifacts.outside / "victim")
    (artifacts.store / "run" / "kept.txt").write_text("the store's")
    before = tree(artifacts.root)
    received = tmp_path / "received"

    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "artifacts", "download", "--artifact-uri",
         f"archive+file://{artifacts.store}", "--dst-path", str(received)],
        cwd=str(tmp_path), env=child_env(), capture_output=True, text=True, timeout=180)

    assert proc.returncode == 0, proc.stderr
    assert sorted(p.relative_to(received).as_posix() for p in received.rglob("*")) == [
        "store", "store/run", "store/run/kept.txt"]
    assert tree(artifacts.root) == before


@pytest.mark.parametrize("below", ["leak/precious.txt", "leak/model.pkl", "leak"])
def test_a_uri_through_a_link_below_a_runs_artifacts_folder_is_refused(artifacts, tmp_path,
                                                                       below):
    """MLflow's client splits ``<run artifacts>/leak/precious.txt`` into a repository rooted
    at ``<run artifacts>/leak`` and the name ``precious.txt``: the root itself goes through
    the planted link, so the run's ``artifacts`` folder is the boundary of that root too."""
    run = artifacts.store / "0" / "a1b2c3" / "artifacts"
    artifacts.link("0/a1b2c3/artifacts/leak", artifacts.outside / "victim")
    (run / "kept.txt").write_text("the run's")
    before = tree(artifacts.root)
    received = tmp_path / "received"
    received.mkdir()

    message = one_line(mlflow.artifacts.download_artifacts,
                       artifact_uri=f"archive+file://{run}/{below}", dst_path=str(received))

    assert OUT_OF_ROOT in message
    assert list(received.iterdir()) == []
    assert tree(artifacts.root) == before
    assert Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"archive+file://{run}/kept.txt")).read_text() == "the run's"


def test_a_store_reached_through_a_link_of_its_own_still_works(artifacts, tmp_path):
    """A link above the run's ``artifacts`` folder (an artifact root that is itself a link,
    say) is the user's choice, not a planted one: it is followed."""
    real = artifacts.root / "real-root" / "0" / "r1" / "artifacts"
    real.mkdir(parents=True)
    (real / "kept.txt").write_text("kept")
    (artifacts.root / "linked-root").symlink_to(artifacts.root / "real-root",
                                                target_is_directory=True)
    linked = artifacts.root / "linked-root" / "0" / "r1" / "artifacts"

    downloaded = mlflow.artifacts.download_artifacts(artifact_uri=f"archive+file://{linked}",
                                                     dst_path=str(tmp_path))

    assert (Path(downloaded) / "kept.txt").read_text() == "kept"


@pytest.mark.parametrize(("fields", "expected"), [
    ({"location": "memory://{root}/elsewhere/model.zip"}, "is not the archive's place"),
    ({"revision_dir": "../../elsewhere"}, "its revision folder '../../elsewhere'"),
    ({"file": "../../../elsewhere/model.zip"}, "is not one plain file name"),
])
def test_an_object_store_record_is_checked_as_a_local_one(sandbox, model, fields, expected):
    """The same record checks hold where there are no links: a deployments store in an
    fsspec object store (the in-memory one), with the good record copied into it."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/{unique('deployments')}"
    record = json.loads((sandbox.store / "good" / RECORD).read_text())
    store = f"memory://{root}/store"
    record["location"] = (f"{store}/good/{record['revision_dir']}/{record['file']}")
    fs.pipe(f"{root}/store/good/{record['revision_dir']}/{record['file']}",
            sandbox.archive.read_bytes())
    fs.pipe(f"{root}/elsewhere/model.zip", sandbox.archive.read_bytes())
    hostile = {key: value.format(root=root) if isinstance(value, str) else value
               for key, value in fields.items()}
    try:
        client = get_deploy_client(f"archive:/{store}")
        fs.pipe(f"{root}/store/good/{RECORD}", json.dumps(record).encode())
        assert len(client.predict("good", model["X"])["predictions"]) == len(model["X"])
        fs.pipe(f"{root}/store/good/{RECORD}", json.dumps({**record, **hostile}).encode())
        objects = {path: fs.cat_file(path) for path in fs.find(root)}

        for call in (lambda: client.predict("good", model["X"]),
                     lambda: client.update_deployment("good", model["uri"])):
            assert expected in one_line(call)
        assert {path: fs.cat_file(path) for path in fs.find(root)} == objects
    finally:
        fs.rm(root, recursive=True)
