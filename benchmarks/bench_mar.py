"""Archiving 1 GiB of incompressible weights: the real torch-model-archiver against ours.

Both run as whole commands in fresh processes, interleaved, on the same inputs, in the same
run; the table gives medians, the ratio of the real archiver's time to ours and each one's
peak RSS. The real archiver comes from the ``torchserve`` tox environment (``make bench``
creates it) or from ``--real-python``.

    python benchmarks/bench_mar.py --size-mib 1024 --repeat 3 \
        --real-python .tox/torchserve/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 1024 * 1024
# Runs an archiver's generate_model_archive() on sys.argv, then reports time and peak RSS.
_CHILD = """
import json, resource, sys, time
module, argv = sys.argv[1], sys.argv[2:]
sys.argv = ["archiver", *argv]
started = time.perf_counter()
generate = __import__(module, fromlist=["generate_model_archive"]).generate_model_archive
generate()
print(json.dumps({"seconds": time.perf_counter() - started,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
ARCHIVERS = {
    "torch-model-archiver 0.12.0": "model_archiver.model_packaging",
    "mlflow-model-archiver": "mlflow_archive_plugin.torchserve.archiver",
}


def make_inputs(folder: Path, size_mib: int) -> list[str]:
    """Weights, a handler and a small extra file; the flags both archivers get."""
    weights = folder / "model.pt"
    with weights.open("wb") as handle:
        for _ in range(size_mib):
            handle.write(os.urandom(CHUNK))
    handler = folder / "handler.py"
    handler.write_text("def handle(data, context):\n    return data\n")
    extra = folder / "index_to_name.json"
    extra.write_text(json.dumps({str(i): f"class-{i}" for i in range(1000)}))
    return ["--model-name", "bench", "--version", "1.0", "--serialized-file", str(weights),
            "--handler", str(handler), "--extra-files", str(extra)]


def measure(python: str, module: str, flags: list[str], out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    started = time.perf_counter()
    proc = subprocess.run([python, "-c", _CHILD, module, *flags, "--export-path", str(out)],
                          check=True, capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - started
    result["size"] = (out / "bench.mar").stat().st_size
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--real-python", default=".tox/torchserve/bin/python",
                        help="A Python with torch-model-archiver installed.")
    args = parser.parse_args()
    if not Path(args.real_python).exists():
        sys.exit(f"{args.real_python} not found: create it with `tox -e torchserve --notest` "
                 "or pass --real-python")
    pythons = {"torch-model-archiver 0.12.0": args.real_python,
               "mlflow-model-archiver": sys.executable}
    with tempfile.TemporaryDirectory(prefix="bench-mar-", dir=os.environ.get("BENCH_DIR")) as tmp:
        flags = make_inputs(Path(tmp), args.size_mib)
        results: dict[str, list[dict]] = {name: [] for name in ARCHIVERS}
        for _ in range(args.repeat):  # interleaved, so drift hits both alike
            for name, module in ARCHIVERS.items():
                results[name].append(measure(pythons[name], module, flags, Path(tmp, "out")))
    ours = statistics.median(r["wall"] for r in results["mlflow-model-archiver"])
    print(f"{args.size_mib} MiB incompressible weights -> .mar, median of {args.repeat} runs")
    print(f"{'archiver':30} {'seconds':>8} {'x ours':>8} {'peak RSS MiB':>13} {'.mar MiB':>9}")
    for name, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        peak = statistics.median(r["peak_mib"] for r in runs)
        size = statistics.median(r["size"] for r in runs) / CHUNK
        print(f"{name:30} {wall:8.2f} {wall / ours:8.2f} {peak:13.0f} {size:9.0f}")


if __name__ == "__main__":
    main()
