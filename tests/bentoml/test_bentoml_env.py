"""The bentoml env works: the real BentoML round-trips an MLflow model through `.bentomodel`.

An MLflow sklearn model is imported with ``bentoml.mlflow.import_model`` and exported with
``bentoml.models.export_model`` in a child process with BENTOML_HOME A (``run_bentoml``),
then imported with ``bentoml.models.import_model`` into a fresh home B in this process
(``bentoml_home``) and loaded with ``bentoml.mlflow.load_model``: its predictions equal
MLflow's own pyfunc of the same directory.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
from conftest import current_model_store_dir, run_bentoml, unique
from sklearn.linear_model import LinearRegression


def test_bentomodel_round_trip_between_two_homes(tmp_path: Path, bentoml_home: Path) -> None:
    import bentoml

    X = np.arange(24, dtype=float).reshape(8, 3)
    y = X @ np.array([1.5, -2.0, 0.25]) + 0.5
    model_dir = tmp_path / "sk-model"
    mlflow.sklearn.save_model(LinearRegression().fit(X, y), str(model_dir))
    expected = mlflow.pyfunc.load_model(str(model_dir)).predict(X)

    # Home A, in a child process: BENTOML_HOME is read as a user's program reads it.
    home_a, out_dir = tmp_path / "home-a", tmp_path / "out"
    out_dir.mkdir()
    name = unique("skl").lower()
    saved = run_bentoml(
        f"""
        import bentoml
        model = bentoml.mlflow.import_model({name!r}, {str(model_dir)!r})
        stored = bentoml.models.get(model.tag)
        path = bentoml.models.export_model(model.tag, {str(out_dir)!r})
        emit({{"tag": str(model.tag), "stored": stored.path, "archive": path}})
        """,
        home_a,
        tmp_dir=tmp_path / "tmp-a",
    ).value
    tag, archive = saved["tag"], Path(saved["archive"])
    version = tag.split(":", 1)[1]
    assert Path(saved["stored"]) == home_a.resolve() / "models" / name / version
    assert (home_a / "models" / name / version / "mlflow_model" / "MLmodel").is_file()
    assert archive == out_dir / f"{name}-{version}.bentomodel"
    with tarfile.open(archive, "r:xz") as tar:  # a .bentomodel is a tar.xz
        members = tar.getnames()
    assert "./model.yaml" in members and "./mlflow_model/MLmodel" in members

    # Home B, in this process: fresh and empty, and what BentoML uses here now.
    assert current_model_store_dir() == bentoml_home / "models"
    assert list((bentoml_home / "models").iterdir()) == []
    imported = bentoml.models.import_model(str(archive))
    assert str(imported.tag) == tag
    assert Path(imported.path) == bentoml_home / "models" / name / version
    assert imported.info.module == "bentoml.mlflow"
    assert imported.info.context.framework_name == "mlflow"

    predicted = bentoml.mlflow.load_model(tag).predict(X)
    np.testing.assert_allclose(np.asarray(predicted), np.asarray(expected))
    # Home A saw none of it.
    assert {p.name for p in (home_a / "models" / name).iterdir()} == {"latest", version}
