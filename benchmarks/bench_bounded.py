"""Peak memory of refusing hostile documents with the bounded loaders, against parsing a benign
document of the same size, in one run.

Each measurement runs in a fresh child that imports the package's loaders (and MLflow, as a
user has it loaded), takes its resident size then as the baseline (``/proc/self/statm``),
parses one document and reads its resident high-water mark (``ru_maxrss``): peak minus
baseline is what that parse added at any moment. Repeated ``--repeat`` times; the table shows
medians, and each hostile row its ratio to the benign row of the same kind.

    python benchmarks/bench_bounded.py --repeat 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_env  # noqa: E402

_CHILD = r"""
import os, resource, sys
import mlflow  # noqa: F401 - part of the baseline, as in a user's process
from mlflow_archive_plugin.errors import ArchiveError
from mlflow_archive_plugin.trust.parsing import load_json, load_yaml, parse_python
kind, path = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
with open("/proc/self/statm") as handle:
    baseline = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
loader = {"json": load_json, "yaml": load_yaml, "python": parse_python}[kind]
try:
    loader(data, what=os.path.basename(path))
    outcome = "parsed"
except ArchiveError as exc:
    outcome = "refused: " + str(exc)[:70]
except (MemoryError, RecursionError) as exc:
    outcome = "exhausted: " + type(exc).__name__
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(max(peak - baseline, 0) / 1024, outcome)  # 0: no rise above the baseline
"""


def documents() -> dict[str, tuple[str, bytes]]:
    """name: (loader kind, bytes). Each hostile document has a benign one of its size."""
    deep_json = b'{"deep": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    flat_json = b'{"flat": [' + b",".join([b"0"] * (len(deep_json) // 2)) + b"]}"
    laughs = ["lol0: &lol0 [" + ", ".join(["lol"] * 10) + "]"]
    laughs += [f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 10) + "]" for i in range(1, 9)]
    laughs_text = ("\n".join(laughs) + "\n").encode()
    plain_yaml = b"".join(f"key{i}: value\n".encode() for i in range(len(laughs_text) // 12))
    deep_yaml = b"deep: " + b"[" * 20_000 + b"]" * 20_000 + b"\n"
    wide_yaml = b"".join(f"k{i}: [1]\n".encode() for i in range(len(deep_yaml) // 9))
    deep_python = b"def load(*a):\n    return " + b"-" * 100_000 + b"1\n"
    wide_python = b"".join(f"x{i} = 1\n".encode() for i in range(len(deep_python) // 9))
    return {
        "json 50,000 deep": ("json", deep_json), "json flat (benign)": ("json", flat_json),
        "yaml billion laughs": ("yaml", laughs_text), "yaml plain (benign)": ("yaml", plain_yaml),
        "yaml 20,000 deep": ("yaml", deep_yaml), "yaml wide (benign)": ("yaml", wide_yaml),
        "python 100,000 deep": ("python", deep_python),
        "python flat (benign)": ("python", wide_python),
    }


def measure(kind: str, path: Path) -> tuple[float, str]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, kind, str(path)], env=child_env(),
                          capture_output=True, text=True, timeout=300, check=True)
    added, outcome = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    return float(added), outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", dest="json_out", help="Also write the medians here.")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, data) in documents().items():
            path = Path(tmp) / f"{len(rows)}.{kind}"
            path.write_bytes(data)
            runs = [measure(kind, path) for _ in range(args.repeat)]
            rows[name] = (kind, len(data), statistics.median(a for a, _ in runs), runs[0][1])
    benign = {kind: added for name, (kind, _, added, _) in rows.items() if "benign" in name}
    print(f"{'document':24} {'bytes':>9} {'added MB':>9} {'x benign':>9}  outcome")
    for name, (kind, size, added, outcome) in rows.items():
        ratio = "" if "benign" in name else f"{added / max(benign[kind], 0.1):.2f}"
        print(f"{name:24} {size:9d} {added:9.1f} {ratio:>9}  {outcome}")
    print(f"medians of {args.repeat} fresh children each")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
