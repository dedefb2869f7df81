"""``predict.py``: the template the package carries, the check that it defines
``load_model`` and ``predict`` (parsed, not run), and ``verify --run``, which runs it on the
example payload in a fresh Python process."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow_archive_plugin.errors import CorruptArchiveError
from mlflow_archive_plugin.formats.portable.files import EXAMPLE_FILE, PREDICT_FILE
from mlflow_archive_plugin.trust.parsing import parse_python

# The functions a user of the package calls, as the portable-package convention names them.
PREDICT_FUNCTIONS = ("load_model", "predict")
# How long ``verify --run`` lets predict.py take on the example, loading the model included.
RUN_TIMEOUT_SECONDS = 600
# The template copied in as predict.py; it runs where this package is not installed.
PREDICT_SOURCE = Path(__file__).resolve().parent.parent / "portable_predict.py"


def predict_source_problems(path: Path) -> list[str]:
    """Whether ``predict.py`` parses and defines ``load_model`` and ``predict``, read without
    running it; one past the parser's limits is refused (:class:`UnsafeArchiveError`)."""
    try:
        tree = parse_python(path.read_bytes(), what=PREDICT_FILE)
    except CorruptArchiveError as exc:
        return [f"{PREDICT_FILE}: {exc}"]
    defined = {node.name for node in tree.body
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return [f"{PREDICT_FILE}: defines no {name}() function" for name in PREDICT_FUNCTIONS
            if name not in defined]


# The child's program: predict.py on the example, the verdict written as JSON to argv[1].
_RUNNER = """
import json, sys
def verdict(problem):
    with open(sys.argv[1], "w", encoding="utf-8") as handle:
        json.dump({"problem": problem}, handle)
def first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
try:
    from predict import predict
except BaseException as exc:
    verdict(f"importing it failed ({first_line(exc)})")
    raise SystemExit(0)
try:
    with open(sys.argv[2], encoding="utf-8") as handle:
        result = predict(json.load(handle))
except BaseException as exc:
    verdict(f"predict() on {sys.argv[2]} raised {first_line(exc)}")
    raise SystemExit(0)
if not isinstance(result, dict):
    verdict(f"predict() on {sys.argv[2]} returned a {type(result).__name__}, not a dict")
    raise SystemExit(0)
try:
    json.dumps(result)
except (TypeError, ValueError) as exc:
    verdict(f"predict() returned a dict that is not JSON-serializable ({first_line(exc)})")
    raise SystemExit(0)
verdict(None)
"""


def run_example(root: Path) -> list[str]:
    """Run ``predict.py`` on the example payload in a fresh ``sys.executable``, the package
    folder as working directory, as a user would; one line if it fails."""
    with tempfile.TemporaryDirectory(prefix="mlflow-archive-run-") as scratch:
        verdict_path = Path(scratch, "verdict.json")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            child = subprocess.run(
                [sys.executable, "-c", _RUNNER, str(verdict_path), EXAMPLE_FILE],
                cwd=root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired:
            return [f"{PREDICT_FILE}: predict() on {EXAMPLE_FILE} took longer than "
                    f"{RUN_TIMEOUT_SECONDS} s"]
        if not verdict_path.is_file():
            tail = (child.stderr.strip().splitlines() or ["no output"])[-1][:300]
            return [f"{PREDICT_FILE}: the Python process running it exited with code "
                    f"{child.returncode} before answering ({tail})"]
        problem = json.loads(verdict_path.read_text(encoding="utf-8"))["problem"]
    return [] if problem is None else [f"{PREDICT_FILE}: {problem}"]
