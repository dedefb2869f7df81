"""The portable package's file names, and the small readers and writers its parts share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import CorruptArchiveError
from mlflow_archive_plugin.trust.parsing import load_json

MODEL_DIR = "model"
REQUIREMENTS_FILE = "requirements.txt"
PREDICT_FILE = "predict.py"
SIGNATURE_FILE = "signature.json"
EXAMPLE_FILE = "example-payload.json"
CARD_FILE = "model-card.md"
PACKAGE_FILES = (REQUIREMENTS_FILE, PREDICT_FILE, SIGNATURE_FILE, EXAMPLE_FILE, CARD_FILE)


def json_text(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def load_json_file(path: Path) -> tuple[Any, list[str]]:
    """A JSON file of the package, parsed within the limits, or one line why it is not."""
    try:
        return load_json(path.read_bytes(), what=path.name), []
    except CorruptArchiveError as exc:
        return None, [f"{path.name}: {exc}"]
