"""Importing a run with a flood of metric points, against MLflow's own ``log_batch`` of the
same points, in one run.

A SQLite store gets a run holding ``--points`` metric points (10 metrics, one history each)
and a small pyfunc model, exported once. Then, ``--repeat`` times, each in a fresh child with
its own fresh SQLite store: a script that creates a run and ``log_batch``-es the same points
in batches of 1,000 (the baseline: what the import cannot do faster), and ``mlflow-archive
import`` of the archive. Both are timed by their wall clock, interpreter start, MLflow's
import and the store's creation included in each. The table shows medians of seconds and
peak RSS, and the import's ratio to the baseline.

    python benchmarks/bench_metrics.py --points 200000 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_env, run_measured  # noqa: E402

# Both children log the same points the same way: 10 metrics, batches of 1,000.
_FLOOD = r"""
from mlflow.entities import Metric


def flood(client, run_id, points):
    batch = []
    for i in range(points):
        batch.append(Metric(f"m{i % 10}", float(i), 1_700_000_000_000 + i, i // 10))
        if len(batch) == 1000:
            client.log_batch(run_id, metrics=batch)
            batch = []
    if batch:
        client.log_batch(run_id, metrics=batch)
"""

_LOG_BATCH = _FLOOD + r"""
import sys
from mlflow import MlflowClient
uri, points = sys.argv[1], int(sys.argv[2])
client = MlflowClient(uri)
run = client.create_run(client.create_experiment("baseline"))
flood(client, run.info.run_id, points)
"""

_SOURCE = _FLOOD + r"""
import sys
import mlflow
from mlflow import MlflowClient
uri, points, artifacts, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
client = MlflowClient(uri)
experiment = client.create_experiment("flood", artifact_location=artifacts)

class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input

mlflow.set_tracking_uri(uri)
with mlflow.start_run(experiment_id=experiment) as run:
    flood(client, run.info.run_id, points)
    info = mlflow.pyfunc.log_model(name="model", python_model=Echo(),
                                   pip_requirements=["mlflow"])
from mlflow_archive_plugin import export_model
export_model(f"models:/{info.model_id}", out, tracking_uri=uri, progress=False)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    env = child_env(BENCH_DIR=str(Path(__file__).resolve().parent))
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        root = Path(tmp)
        archive = root / "flood.zip"
        run_measured([sys.executable, "-c", _SOURCE, f"sqlite:///{root / 'source.db'}",
                      str(args.points), (root / "artifacts").as_uri(), str(archive)], env)
        rows: dict[str, list[dict]] = {"log_batch": [], "import": []}
        for index in range(args.repeat):
            rows["log_batch"].append(run_measured(
                [sys.executable, "-c", _LOG_BATCH, f"sqlite:///{root / f'base-{index}.db'}",
                 str(args.points)], env))
            rows["import"].append(run_measured(
                [sys.executable, "-m", "mlflow_archive_plugin.cli", "import", str(archive),
                 "--tracking-uri", f"sqlite:///{root / f'target-{index}.db'}", "-q"], env,
                cwd=root))
    base = statistics.median(r["seconds"] for r in rows["log_batch"])
    print(f"{args.points} metric points, archive {archive.name}; medians of {args.repeat}")
    print(f"{'step':10} {'seconds':>9} {'peak MB':>9} {'x log_batch':>12}")
    for name, runs in rows.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = statistics.median(r["peak_kib"] for r in runs) / 1024
        print(f"{name:10} {seconds:9.1f} {peak:9.0f} {seconds / base:12.2f}")


if __name__ == "__main__":
    main()
