"""The ``torch-model-archiver`` command line, flag for flag, as ``mlflow-model-archiver`` and
``mlflow-archive model-archiver``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

# The flags live with the archiver, whose generate_model_archive() parses them when given no
# config; they are re-exported here, where callers of the original look for them.
from mlflow_archive_plugin.torchserve.archiver import (
    ModelArchiverError,
    generate_model_archive,
)
from mlflow_archive_plugin.torchserve.archiver import build_parser as build_parser
from mlflow_archive_plugin.torchserve.archiver import parse_args as parse_args


def main(argv: Sequence[str] | None = None, prog: str = "mlflow-model-archiver") -> int:
    """Run the archiver; a bad input ends in one ``error:`` line and exit status 1."""
    config = parse_args(argv, prog)
    try:
        generate_model_archive(config)
    except ModelArchiverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write the archive: {exc}", file=sys.stderr)
        return 1
    return 0


def entry_point() -> None:
    """Console script ``mlflow-model-archiver``."""
    sys.exit(main())
