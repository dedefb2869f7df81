"""The mlflow_archive flavor: log an archive as an MLflow model, load it back, predict.

    python examples/flavor_log_model.py                      # a SQLite registry in a temp dir
    python examples/flavor_log_model.py --tracking-uri http://127.0.0.1:5000

What it does:

1. trains a small scikit-learn model and registers it as ``iris-flavor-demo``;
2. exports that version as a TorchServe ``.mar`` with ``export_model``;
3. logs the ``.mar`` file with ``mlflow_archive_plugin.log_model`` and registers it as
   ``iris-flavor-demo-mar``: the archive is verified, then kept byte for byte;
4. reads it back with ``mlflow_archive_plugin.load_model`` (layout, digest, files) and
   extracts it, checksums verified;
5. loads the registered archive model with ``mlflow.pyfunc.load_model`` and checks that it
   predicts what the original model predicts.

Exit status 0 when the predictions match and the logged archive is the exported file, else 1.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
from mlflow import MlflowClient
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import mlflow_archive_plugin
from mlflow_archive_plugin import export_model

MODEL_NAME = "iris-flavor-demo"
ARCHIVE_MODEL_NAME = "iris-flavor-demo-mar"
EXPERIMENT = "flavor-demo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tracking-uri", default=None,
                        help="tracking server or database (default: a SQLite file in a new "
                             "temporary folder)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the archive, the artifacts and the extracted files "
                             "(default: a new temporary folder)")
    return parser.parse_args(argv)


def quiet_mlflow() -> None:
    """Keep the output to what the example prints."""
    for name in ("mlflow", "alembic", "sqlalchemy", "urllib3", "git"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def use_experiment(workdir: Path) -> None:
    """An experiment whose artifacts go under --workdir, not into the working directory."""
    client = MlflowClient()
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT, artifact_location=(workdir / "mlruns").as_uri())
    mlflow.set_experiment(EXPERIMENT)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_mlflow()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="flavor-demo-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = args.tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    use_experiment(workdir)
    print(f"tracking   {tracking_uri}")

    features, labels = load_iris(return_X_y=True)
    with mlflow.start_run(run_name="iris"):
        trained = mlflow.sklearn.log_model(
            LogisticRegression(max_iter=300).fit(features, labels), name="model",
            registered_model_name=MODEL_NAME, input_example=features[:2])
    source_uri = f"models:/{MODEL_NAME}/{trained.registered_model_version}"
    print(f"model      {source_uri}")

    exported = export_model(source_uri, str(workdir / "archives") + "/", format="mar",
                            tracking_uri=tracking_uri)
    print(f"exported   {exported.location} ({exported.size} bytes)")

    with mlflow.start_run(run_name="archive"):
        info = mlflow_archive_plugin.log_model(exported.location, name="iris-mar",
                                               registered_model_name=ARCHIVE_MODEL_NAME)
    archive_uri = f"models:/{ARCHIVE_MODEL_NAME}/{info.registered_model_version}"
    print(f"logged     {info.model_uri} as {archive_uri}")

    archived = mlflow_archive_plugin.load_model(archive_uri)
    print(f"archive    layout {archived.layout}, container {archived.container}, "
          f"{len(archived.files)} files, digest {archived.digest[:16]}...")
    same_bytes = sha256(archived.archive_path) == exported.sha256
    print(f"stored     {archived.archive_path.name}: "
          f"{'the exported file, byte for byte' if same_bytes else 'DIFFERS from the export'}")
    unpacked = archived.extract(workdir / "unpacked")
    print(f"extracted  {unpacked} (checksums verified)")

    rows = features[::25]
    expected = mlflow.pyfunc.load_model(source_uri).predict(rows)
    predicted = mlflow.pyfunc.load_model(archive_uri).predict(rows)
    print(f"original   {np.asarray(expected).tolist()}")
    print(f"archive    {np.asarray(predicted).tolist()}")
    matches = bool(np.array_equal(np.asarray(expected), np.asarray(predicted)))
    print("predictions match" if matches else "predictions DIFFER")
    return 0 if matches and same_bytes else 1


if __name__ == "__main__":
    sys.exit(main())
