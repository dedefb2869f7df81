"""The ``torch-model-archiver`` command line, flag for flag, as ``mlflow-model-archiver`` and
``mlflow-archive model-archiver``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mlflow_archive_plugin.torchserve.archiver import (
    ARCHIVE_FORMATS,
    RUNTIMES,
    ModelArchiverConfig,
    ModelArchiverError,
    generate_model_archive,
)


def build_parser(prog: str = "mlflow-model-archiver") -> argparse.ArgumentParser:
    """The original's flags, short options and defaults."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Package a model for TorchServe as torch-model-archiver does: "
        "<model-name>.mar, <model-name>.tar.gz or a <model-name>/ folder.",
    )
    parser.add_argument("--model-name", required=True,
                        help="Model name; the archive is named <model-name>.mar.")
    parser.add_argument("--serialized-file", help="Weights file (.pt, .pth, .onnx ...).")
    parser.add_argument("--model-file", help="Python file with the model's class (eager mode).")
    parser.add_argument("--handler", required=True,
                        help="Handler file (handler.py or handler:function) or a TorchServe "
                             "built-in handler name.")
    parser.add_argument("--extra-files",
                        help="Comma-separated files, folders or wildcards to include.")
    parser.add_argument("--runtime", default="python", choices=RUNTIMES,
                        help='Language the handler runs in (default: "python").')
    parser.add_argument("--export-path", default=os.getcwd(),
                        help="Folder to write the archive to (default: working directory).")
    parser.add_argument("--archive-format", default="default", choices=ARCHIVE_FORMATS,
                        help="default: <name>.mar (zip); tgz: <name>.tar.gz with a <name>/ "
                             "prefix; no-archive: a <name>/ folder; zip-store: <name>.mar, "
                             "nothing compressed.")
    parser.add_argument("-f", "--force", action="store_true",
                        help="Replace an existing archive of the same name.")
    parser.add_argument("-v", "--version", required=True, help="The model's version.")
    parser.add_argument("-r", "--requirements-file",
                        help="requirements.txt with the model's Python dependencies.")
    parser.add_argument("-c", "--config-file", help="YAML model configuration (batch size ...).")
    return parser


def parse_args(argv: Sequence[str] | None = None,
               prog: str = "mlflow-model-archiver") -> ModelArchiverConfig:
    """A config from command-line flags (``sys.argv`` when ``argv`` is None)."""
    args = build_parser(prog).parse_args(argv)
    return ModelArchiverConfig(
        model_name=args.model_name,
        handler=args.handler,
        version=args.version,
        serialized_file=args.serialized_file,
        model_file=args.model_file,
        extra_files=args.extra_files,
        runtime=args.runtime,
        export_path=args.export_path,
        archive_format=args.archive_format,
        force=args.force,
        requirements_file=args.requirements_file,
        config_file=args.config_file,
    )


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
