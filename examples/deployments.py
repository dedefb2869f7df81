"""Deployments example: keep models as verified archives with `mlflow deployments`.

    python examples/deployments.py --workdir .demo-deployments
    python examples/deployments.py --tracking-uri http://127.0.0.1:5000

Once the plugin is installed, MLflow's own deployments API knows the ``archive`` target.
This script goes through it the way a user's code would, with
``mlflow.deployments.get_deploy_client("archive:/<store>")``:

1. trains a small scikit-learn model and registers it as ``iris-deployed`` (in
   ``sqlite:///mlflow.db`` inside --workdir unless --tracking-uri names a server);
2. creates the deployment ``iris`` as a TorchServe ``.mar`` in the store ``<workdir>/store``;
3. lists and describes it (location, format, digest, size, source);
4. predicts through the deployment and compares with ``mlflow.pyfunc`` on the registered model;
5. updates it to a BentoML archive of the same model (the old archive stays valid until the
   new one is complete) and predicts again;
6. deletes it.

The equivalent ``mlflow deployments`` commands are printed before each step. Exit status:
0 when every prediction matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.deployments import get_deploy_client
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

MODEL_NAME = "iris-deployed"
DEPLOYMENT = "iris"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workdir", type=Path, default=Path(".demo-deployments"),
                        help="folder for the store (and the registry, without --tracking-uri)")
    parser.add_argument("--tracking-uri", default=None,
                        help="tracking server to register the model on (default: a SQLite "
                             "registry in --workdir)")
    return parser.parse_args(argv)


def quiet_mlflow() -> None:
    """Keep the output to what the example prints."""
    for name in ("mlflow", "alembic", "sqlalchemy", "urllib3", "git"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"


def register_model() -> tuple[str, pd.DataFrame]:
    """Train and register a model; its URI and a few rows to predict."""
    features, labels = load_iris(return_X_y=True, as_frame=True)
    with mlflow.start_run(run_name="iris-for-deployment"):
        info = mlflow.sklearn.log_model(
            LogisticRegression(max_iter=300).fit(features, labels),
            name="model",
            registered_model_name=MODEL_NAME,
            input_example=features.head(3),
        )
    return f"models:/{MODEL_NAME}/{info.registered_model_version}", features.iloc[::25]


def step(title: str, command: str) -> None:
    print(f"\n== {title}\n$ {command}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_mlflow()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = args.tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    # The deployments client resolves models:/ URIs through MLflow's configured registry.
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    store = workdir / "store"
    target = f"archive:{store}"
    print(f"registry {tracking_uri}\nstore    {store}")

    model_uri, rows = register_model()
    expected = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(rows))
    client = get_deploy_client(target)
    if any(d["name"] == DEPLOYMENT for d in client.list_deployments()):
        client.delete_deployment(DEPLOYMENT)  # left by an earlier run of this example

    step("create", f"mlflow deployments create -t {target} --name {DEPLOYMENT} "
                   f"-m {model_uri} -C format=mar")
    created = client.create_deployment(DEPLOYMENT, model_uri, config={"format": "mar"})
    print(f"{created['flavor']} deployment {created['name']} is created")

    step("list", f"mlflow deployments list -t {target}")
    print([d["name"] for d in client.list_deployments()])

    step("get", f"mlflow deployments get -t {target} --name {DEPLOYMENT}")
    for key in ("location", "format", "container", "digest", "size", "source"):
        print(f"{key:9} {client.get_deployment(DEPLOYMENT)[key]}")

    failures = 0
    payload = workdir / "input.json"
    rows.to_json(payload)  # what `mlflow deployments predict -I` reads (pandas.read_json)
    step("predict", f"mlflow deployments predict -t {target} --name {DEPLOYMENT} -I {payload}")
    got = np.asarray(client.predict(DEPLOYMENT, rows)["predictions"])
    print(f"deployment {got.tolist()}\npyfunc     {expected.tolist()}")
    failures += not np.array_equal(got, expected)

    step("update", f"mlflow deployments update -t {target} --name {DEPLOYMENT} "
                   "-C format=bentoml")
    updated = client.update_deployment(DEPLOYMENT, config={"format": "bentoml"})
    print(f"revision {updated['revision']}: {updated['file']} ({updated['format']})")
    got = np.asarray(client.predict(DEPLOYMENT, rows)["predictions"])
    print(f"deployment {got.tolist()}")
    failures += not np.array_equal(got, expected)

    step("delete", f"mlflow deployments delete -t {target} --name {DEPLOYMENT}")
    client.delete_deployment(DEPLOYMENT)
    print(f"left in the store: {[d['name'] for d in client.list_deployments()]}")

    print("\nall predictions match" if not failures else "\npredictions differ: FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
