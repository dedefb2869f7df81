"""A 256 MiB incompressible model to .bentomodel: the real BentoML export against ours.

Both sides export the same MLflow model (random weights plus small text files) in fresh
child processes, interleaved, in the same run; the table gives medians of the time spent in
the export call (imports and the untimed set-up excluded), the ratio of BentoML's time to
ours, each child's peak RSS and the output size. BentoML runs with the Python of the
``bentoml`` tox environment (``make bench`` creates it) or ``--bentoml-python``, against a
private BENTOML_HOME with usage tracking off; its model is saved into that store once with
``bentoml.mlflow.import_model``. Ours exports ``models:/bench-model/1`` from a SQLite
registry in the same temporary folder, registered once. Afterwards the real
``bentoml.models.import_model`` must accept our file in a fresh BENTOML_HOME, with every
model file intact; the script exits non-zero if it does not.

    python benchmarks/bench_bentoml.py --size-mib 256 --repeat 3 \
        --bentoml-python .tox/bentoml/bin/python
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 1024 * 1024
NAME = "bench-model"
BENTOML = "bentoml.models.export_model 1.4.39"
OURS = "mlflow-archive export --format bentoml"
QUIET = {"BENTOML_DO_NOT_TRACK": "True", "DO_NOT_TRACK": "true",
         "MLFLOW_DISABLE_TELEMETRY": "true"}
# Fixed apart from the weights, so the model's files are the same for both sides.
MLMODEL = """\
artifact_path: model
flavors:
  python_function:
    loader_module: bench_loader
    python_version: 3.11.0
mlflow_version: 3.17.2
"""


def make_model(folder: Path, size_mib: int) -> Path:
    """An MLflow model folder: incompressible weights, MLmodel, requirements and a small JSON."""
    model = folder / "model"
    model.mkdir()
    (model / "MLmodel").write_text(MLMODEL)
    (model / "requirements.txt").write_text("mlflow==3.17.2\n")
    (model / "labels.json").write_text(json.dumps({str(i): f"class-{i}" for i in range(1000)}))
    with (model / "weights.bin").open("wb") as handle:
        for _ in range(size_mib):
            handle.write(os.urandom(CHUNK))
    return model


def tree_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, keyed by its path relative to ``root``."""
    hashes = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        hashes[path.relative_to(root).as_posix()] = digest.hexdigest()
    return hashes


def report(seconds: float | None = None, **extra) -> None:
    """Child side: print what was measured, with this process's peak RSS, as one JSON line."""
    import resource

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, **extra}))


# ------------------------------------------------------------- children, BentoML's Python


def bentoml_save(model: str) -> None:
    """Save the MLflow model folder into this BENTOML_HOME's store (untimed set-up)."""
    import bentoml

    report(tag=str(bentoml.mlflow.import_model(NAME, model).tag))


def bentoml_export(tag: str, out: str) -> None:
    """Time BentoML's own export of ``tag`` to a .bentomodel (tar.xz) file."""
    import bentoml

    started = time.perf_counter()
    bentoml.models.export_model(tag, out)
    report(time.perf_counter() - started)


def bentoml_import(archive: str) -> None:
    """Import ``archive`` with the real BentoML; report the tag and its model files' hashes."""
    import bentoml

    imported = bentoml.models.import_model(archive)
    stored = bentoml.models.get(imported.tag)
    report(tag=str(stored.tag), module=stored.info.module,
           hashes=tree_hashes(Path(stored.path) / "mlflow_model"))


# ------------------------------------------------------------------ children, our Python


def ours_register(model: str, tracking_uri: str, artifacts: str) -> None:
    """Log the model folder as a run's artifacts and register it as version 1 (untimed)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.create_experiment("bench", artifact_location=Path(artifacts).as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, model, "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(NAME)
    version = client.create_model_version(NAME, f"{run.info.artifact_uri}/model",
                                          run_id=run.info.run_id)
    report(version=version.version)


def ours_export(model_uri: str, out: str, tracking_uri: str) -> None:
    """Time the plugin's export of ``model_uri`` to a .bentomodel file."""
    from mlflow_archive_plugin.api import export_model

    started = time.perf_counter()
    export_model(model_uri, out, format="bentoml", tracking_uri=tracking_uri, progress=False)
    report(time.perf_counter() - started)


CHILDREN = {
    "bentoml-save": bentoml_save,
    "bentoml-export": bentoml_export,
    "bentoml-import": bentoml_import,
    "ours-register": ours_register,
    "ours-export": ours_export,
}


# --------------------------------------------------------------------------------- parent


def run_child(python: str, task: str, *args: str, env: dict[str, str]) -> dict:
    """Run one child task of this script under ``python``; its JSON report."""
    proc = subprocess.run([python, __file__, "--child", task, *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{task} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bentoml_env(home: Path) -> dict[str, str]:
    """This process's environment with BentoML's store at ``home`` and its scratch beside it."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("BENTOML_CONFIG", "BENTOML_CONFIG_OPTIONS", "BENTOML_CLOUD_CONTEXT")}
    scratch = home.with_name(home.name + "-tmp")
    scratch.mkdir(parents=True, exist_ok=True)
    return {**env, **QUIET, "BENTOML_HOME": str(home), "TMPDIR": str(scratch)}


def timed(python: str, task: str, out: Path, *args: str, env: dict[str, str]) -> dict:
    """One measurement into ``out`` (removed first); the child's report plus the file size."""
    out.unlink(missing_ok=True)
    result = run_child(python, task, *args, env=env)
    result["size"] = out.stat().st_size
    return result


def accept(python: str, archive: Path, home: Path, expected: dict[str, str]) -> list[str]:
    """Problems found when the real BentoML imports ``archive`` into an empty store ``home``."""
    imported = run_child(python, "bentoml-import", str(archive), env=bentoml_env(home))
    problems = [f"{name}: missing after import" if name not in imported["hashes"]
                else f"{name}: SHA-256 differs after import"
                for name, digest in expected.items() if imported["hashes"].get(name) != digest]
    if imported["module"] != "bentoml.mlflow":
        problems.append(f"module is {imported['module']!r}, not 'bentoml.mlflow'")
    print(f"imported as {imported['tag']} (module {imported['module']}), "
          f"{len(expected)} model files compared")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bentoml-python", default=".tox/bentoml/bin/python",
                        help="A Python with bentoml installed.")
    parser.add_argument("--child", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child[0]](*args.child[1:])
        return
    if not Path(args.bentoml_python).exists():
        sys.exit(f"{args.bentoml_python} not found: create it with `tox -e bentoml --notest` "
                 "or pass --bentoml-python")
    ours_env = {**os.environ, **QUIET}
    with tempfile.TemporaryDirectory(prefix="bench-bentoml-",
                                     dir=os.environ.get("BENCH_DIR")) as name:
        tmp = Path(name)
        model = make_model(tmp, args.size_mib)
        tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
        ours_env["TMPDIR"] = str(tmp)
        run_child(sys.executable, "ours-register", str(model), tracking_uri,
                  str(tmp / "artifacts"), env=ours_env)
        home_env = bentoml_env(tmp / "bentoml-home")
        tag = run_child(args.bentoml_python, "bentoml-save", str(model), env=home_env)["tag"]
        outs = {BENTOML: tmp / "bentoml.bentomodel", OURS: tmp / "ours.bentomodel"}
        results: dict[str, list[dict]] = {BENTOML: [], OURS: []}
        for _ in range(args.repeat):  # interleaved, so drift hits both alike
            results[BENTOML].append(timed(args.bentoml_python, "bentoml-export", outs[BENTOML],
                                          tag, str(outs[BENTOML]), env=home_env))
            results[OURS].append(timed(sys.executable, "ours-export", outs[OURS],
                                       f"models:/{NAME}/1", str(outs[OURS]), tracking_uri,
                                       env=ours_env))
        ours = statistics.median(r["seconds"] for r in results[OURS])
        print(f"{args.size_mib} MiB incompressible weights -> .bentomodel, "
              f"median of {args.repeat} runs")
        print(f"{'exporter':40} {'seconds':>8} {'x ours':>8} {'peak RSS MiB':>13} "
              f"{'.bentomodel MiB':>16}")
        for exporter, runs in results.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            peak = statistics.median(r["peak_mib"] for r in runs)
            size = statistics.median(r["size"] for r in runs) / CHUNK
            print(f"{exporter:40} {seconds:8.2f} {seconds / ours:8.2f} {peak:13.0f} "
                  f"{size:16.1f}")
        print(f"\nacceptance: the real bentoml.models.import_model of {outs[OURS].name}")
        problems = accept(args.bentoml_python, outs[OURS], tmp / "accept-home",
                          tree_hashes(model))
    for problem in problems:
        print(f"  FAILED {problem}")
    if problems:
        sys.exit(1)
    print("  OK: BentoML imported it and every model file hashes equal to the original")


if __name__ == "__main__":
    main()
