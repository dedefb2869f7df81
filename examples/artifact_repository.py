"""The ``archive+`` artifact repositories: MLflow stores, reads and writes models as archives.

    python examples/artifact_repository.py --workdir .demo/artifact-repo

Everything happens in --workdir, with a local SQLite tracking store and no server:

1. **store**: an experiment whose artifact location is ``archive+file://<workdir>/store``; a
   model logged and registered there is kept as one archive object with checksums, while
   MLflow lists its files and loads it through ``models:/`` as usual;
2. **read**: the registered version exported as a TorchServe ``.mar`` and loaded straight
   from the archive with ``mlflow.pyfunc.load_model("archive+file:///.../iris.mar")``;
3. **write**: the model's folder written as a new native archive through the repository,
   then verified with ``verify_archive``.

Exit status 0 when each step gives the same predictions and the archives verify, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlflow_archive_plugin import export_model, verify_archive

MODEL_NAME = "iris-in-archives"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".demo/artifact-repo",
                        help="folder for the tracking database, the store and the archives")
    workdir = Path(parser.parse_args().workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    client = MlflowClient()
    features, labels = load_iris(return_X_y=True)
    sample = features[::30]
    ok = True

    # 1. store: every model logged in this experiment becomes one archive object.
    store = workdir / "store"
    experiment = client.get_experiment_by_name("archived-models")
    experiment_id = (experiment.experiment_id if experiment else client.create_experiment(
        "archived-models", artifact_location=f"archive+file://{store}"))
    with mlflow.start_run(experiment_id=experiment_id):
        fitted = LogisticRegression(max_iter=200).fit(features, labels)
        info = mlflow.sklearn.log_model(fitted, name="model",
                                        registered_model_name=MODEL_NAME)
    version = info.registered_model_version
    model_uri = f"models:/{MODEL_NAME}/{version}"
    expected = fitted.predict(sample)
    packed = sorted(p.relative_to(store).as_posix()
                    for p in (store / "models" / info.model_id).rglob("*") if p.is_file())
    listed = [f.path for f in client.list_logged_model_artifacts(info.model_id)]
    from_store = mlflow.pyfunc.load_model(model_uri).predict(sample)
    ok &= report("store", np.array_equal(from_store, expected),
                 f"stored as {packed}; MLflow lists {listed}")

    # 2. read: an archive file is a model URI.
    exported = export_model(model_uri, workdir / "archives" / "iris.mar", format="mar",
                            force=True)
    from_archive = mlflow.pyfunc.load_model(f"archive+file://{exported.location}")
    ok &= report("read", np.array_equal(from_archive.predict(sample), expected),
                 f"mlflow.pyfunc.load_model('archive+file://{exported.location}')")

    # 3. write: a model folder becomes a native archive.
    folder = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(workdir / "download"))
    written = workdir / "archives" / f"iris-v{version}.zip"
    if written.exists():
        written.unlink()
    get_artifact_repository(f"archive+file://{written}").log_artifacts(folder)
    check = verify_archive(written)
    ok &= report("write", check.ok, f"{written.name}: {check.checked} files verified, "
                                    f"digest {check.digest}")
    return 0 if ok else 1


def report(step: str, passed: bool, detail: str) -> bool:
    print(f"{step + ':':7} {'ok' if passed else 'FAILED'}  {detail}")
    return passed


if __name__ == "__main__":
    sys.exit(main())
