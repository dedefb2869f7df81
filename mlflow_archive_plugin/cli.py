"""``mlflow-archive``: export, import, inspect and verify archives from the command line.

A mistake a user can make ends in one line on stderr (``error: ...``) and a non-zero exit,
never a traceback; ``MLFLOW_ARCHIVE_DEBUG=1`` shows the traceback for bug reports.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from typing import Any

import click

from mlflow_archive_plugin import api
from mlflow_archive_plugin.api import ON_EXISTS_CHOICES
from mlflow_archive_plugin.errors import ArchiveError, UnsupportedError
from mlflow_archive_plugin.formats import LAYOUTS, mlarchive
from mlflow_archive_plugin.storage.containers import CONTAINER_NAMES
from mlflow_archive_plugin.storage.pipeline import ReadLimits
from mlflow_archive_plugin.trust.crypto import read_key
from mlflow_archive_plugin.trust.scanning import SCAN_MODES, PickleFinding, enforce

_KEY = click.Path(exists=True, dir_okay=False)
# An encryption key file is checked by read_key, whose errors are one line.
_SECRET = click.Path(dir_okay=False)
_TRACKING_HELP = "Tracking server or database URI (default: MLFLOW_TRACKING_URI, then MLflow's)."


class _Group(click.Group):
    """Turns every failure into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except ArchiveError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; nothing was published", 130)
        except Exception as exc:  # noqa: BLE001 - the CLI must never print a traceback
            if os.environ.get("MLFLOW_ARCHIVE_DEBUG"):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            _fail(f"unexpected {type(exc).__name__}: {first} "
                  "(set MLFLOW_ARCHIVE_DEBUG=1 for a traceback)", 1)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _quiet_mlflow(verbose: bool) -> None:
    """MLflow's own logs and progress bars would bury the one line that matters."""
    if verbose:
        return
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _emit(as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, default=str))
    else:
        for line in lines:
            click.echo(line)


def _human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show MLflow's own log messages.")
@click.version_option(package_name="mlflow-archive-plugin")
def cli(verbose: bool) -> None:
    """Export MLflow models to portable, self-verifying archives and import them back."""
    _quiet_mlflow(verbose)


_SIZE_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class _Size(click.ParamType):
    """A byte count with an optional K, M, G or T suffix (powers of 1024)."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
        suffix = text[-1:] if text[-1:] in _SIZE_SUFFIXES else ""
        try:
            return int(float(text.removesuffix(suffix)) * _SIZE_SUFFIXES[suffix])
        except ValueError:
            self.fail(f"{value!r} is not a size such as 500M or 2T", param, ctx)


def _limit_options(command):
    """--max-members, --max-size and --max-ratio, for every command that reads archives."""
    defaults = ReadLimits()
    command = click.option("--max-ratio", type=float, default=defaults.max_ratio,
                           show_default=True,
                           help="Refuse archives that expand more than this many times.")(command)
    command = click.option("--max-size", type=_Size(), default=defaults.max_total_bytes,
                           help="Refuse archives holding more than this (e.g. 500G; "
                                "default 2T).")(command)
    return click.option("--max-members", type=int, default=defaults.max_members,
                        show_default=True, help="Refuse archives with more files.")(command)


def _tmp_dir_option(command):
    """--tmp-dir, for the commands that extract archives."""
    return click.option("--tmp-dir", type=click.Path(file_okay=False), help="Extract into "
                        "this folder (default: TMPDIR); the archive is refused first if its "
                        "files would not fit in its free space.")(command)


def _limits(max_members: int, max_size: int, max_ratio: float) -> ReadLimits:
    return ReadLimits(max_members=max_members, max_total_bytes=max_size, max_ratio=max_ratio)


def _progress(quiet: bool) -> bool | None:
    return False if quiet else None


def _parse_storage_options(ctx, param, values) -> dict[str, Any] | None:
    """KEY=VALUE pairs as fsspec storage options: VALUE is JSON when it parses as JSON (true,
    5, "quoted"), else the text; a dotted KEY nests (client_kwargs.endpoint_url=...)."""
    options: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):  # the value is never echoed: it may be a secret
            shown = f"{key!r} is not a KEY (dotted names, no empty part)" if sep else \
                "expected KEY=VALUE, got no '='"
            raise click.BadParameter(shown, ctx=ctx, param=param)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = options
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise click.BadParameter(f"{key!r} nests under a key given a value",
                                         ctx=ctx, param=param)
        if isinstance(node.get(parts[-1]), dict):
            raise click.BadParameter(f"{key!r} is also given nested keys", ctx=ctx, param=param)
        node[parts[-1]] = value
    return options or None


def _storage_option(command):
    """--storage-option KEY=VALUE, repeatable, for every command that opens a location."""
    return click.option(
        "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
        callback=_parse_storage_options,
        help="Option for the file system of a URL (s3://, gs://, ftp:// ...), repeatable: "
             "endpoint_url=http://..., anon=true, client_kwargs.region_name=eu-west-1. "
             "VALUE is read as JSON when it parses.")(command)


def _mar_options(command):
    """torch-model-archiver's flags for what goes into a .mar besides the MLflow model."""
    helps = {
        "handler": "Your handler file (handler.py or handler:function) or a TorchServe "
                   "built-in, instead of the generated one.",
        "model-file": "Python file with the model's class (eager PyTorch).",
        "serialized-file": "A weights file to add and name in the manifest.",
        "extra-files": "Comma-separated files, folders or wildcards to add.",
        "config-file": "TorchServe model YAML config (batch size, workers ...).",
        "requirements-file": "requirements.txt instead of the model's own pinned one.",
    }
    for flag, text in reversed(helps.items()):
        command = click.option(f"--{flag}", help=f"[--format mar] {text}")(command)
    return command


def _mlarchive_options(command):
    """MLSteam package settings: strict spec output, encryption, cleanup of decrypted files."""
    options = [
        click.option("--strict", is_flag=True, help="[--format mlarchive] Refuse a model whose "
                     "framework MLSteam does not list, instead of warning."),
        click.option("--encrypt", is_flag=True, help="[--format mlarchive] Encrypt the model "
                     "files (AES-256-GCM); in a folder the file is model-enc.mlarchive."),
        click.option("--key-file", type=_SECRET, help="The 32-byte key for --encrypt: raw, 64 hex "
                     "characters or base64."),
        click.option("--key-env", metavar="VAR", help="Environment variable holding the key "
                     "for --encrypt (hex or base64)."),
        click.option("--cleanup", type=click.Choice(mlarchive.CLEANUP_POLICIES),
                     help="[--encrypt] enc_model_cleanup: delete decrypted files after load "
                          "(default after-load) or never."),
        click.option("--cleanup-file", "cleanup_files", multiple=True, metavar="PATTERN",
                     help="[--encrypt] enc_model_cleanup_files glob, relative to the package "
                          "root; repeatable (default: models)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _mlarchive_settings(fmt: str, strict: bool, encrypt: bool, key_file: str | None,
                        key_env: str | None, cleanup: str | None,
                        cleanup_files: tuple[str, ...]) -> tuple[dict[str, Any], bytes | None]:
    """The mlarchive layout's options and the encryption key, from the export flags."""
    options: dict[str, Any] = {}
    if strict:
        options["strict"] = True
    if cleanup:
        options["cleanup"] = cleanup
    if cleanup_files:
        options["cleanup_files"] = list(cleanup_files)
    flags = [flag for flag, given in (("--strict", strict), ("--encrypt", encrypt),
                                      ("--cleanup", cleanup), ("--cleanup-file", cleanup_files))
             if given]
    if flags and fmt != "mlarchive":
        raise UnsupportedError(f"{flags[0]} applies to --format mlarchive only")
    if (cleanup or cleanup_files) and not encrypt:
        raise UnsupportedError("--cleanup and --cleanup-file apply to encrypted packages; "
                               "add --encrypt")
    if (key_file or key_env) and not encrypt:
        raise UnsupportedError("--key-file and --key-env give the key for --encrypt; add "
                               "--encrypt")
    if encrypt and not (key_file or key_env):
        raise UnsupportedError("--encrypt needs a key: --key-file PATH or --key-env VAR "
                               "(make one with: openssl rand -hex 32)")
    return options, (_read_key(key_file, key_env) if encrypt else None)


def _read_key(key_file: str | None, key_env: str | None) -> bytes | None:
    if key_file is None and key_env is None:
        return None
    return read_key(key_file, key_env)


@cli.command("export")
@click.argument("model_uris", nargs=-1, required=True, metavar="MODEL_URI...")
@click.option("-o", "--output", "dest", help="File, URL, or folder to write into (default: .).")
@click.option("--format", "fmt", type=click.Choice(sorted(LAYOUTS)), default="mlflow",
              show_default=True, help="Archive layout.")
@click.option("--container", type=click.Choice(CONTAINER_NAMES),
              help="How the files are packed (default: the format's own, zip for mlflow).")
@click.option("--force", is_flag=True, help="Replace an existing archive at the destination.")
@click.option("--tracking-uri", help=_TRACKING_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--sign-key", type=_KEY, help="Sign with this PEM EC private key (OpenSSF "
              "model-signing; needs the [sign] extra): model.sig over model/, checksum.sig "
              "over checksum.txt and so every file.")
@click.option("--follow-symlinks", is_flag=True, help="Pack the target of a symbolic link in "
              "the model folder that leads outside it, as a regular file (refused without).")
@_storage_option
@_mar_options
@_mlarchive_options
def export_command(model_uris, dest, fmt, container, force, tracking_uri, as_json, quiet,
                   sign_key, follow_symlinks, storage_options, strict, encrypt, key_file,
                   key_env, cleanup, cleanup_files, **mar):
    """Export MODEL_URI (models:/NAME/VERSION, models:/NAME@ALIAS, models:/m-ID, runs:/RUN/NAME).

    With --format mar the archive is a TorchServe .mar serving the model through
    mlflow.pyfunc; --handler, --model-file, --serialized-file, --extra-files, --config-file
    and --requirements-file replace or extend the generated parts, as torch-model-archiver's
    flags of the same names do.

    With --format mlarchive the archive is an MLSteam package; several MODEL_URIs go into one
    package, and --encrypt encrypts the model files with the key from --key-file or
    --key-env.
    """
    options = {key: value for key, value in mar.items() if value is not None}
    if options and fmt != "mar":
        flag = "--" + next(iter(options)).replace("_", "-")
        raise click.UsageError(f"{flag} applies to --format mar only")
    if len(model_uris) > 1 and fmt != "mlarchive":
        raise UnsupportedError(f"several models go into one archive with --format mlarchive "
                               f"only; export them one at a time with --format {fmt}")
    mlarchive_options, key = _mlarchive_settings(fmt, strict, encrypt, key_file, key_env,
                                                 cleanup, cleanup_files)
    options.update(mlarchive_options)
    result = api.export_model(model_uris[0] if len(model_uris) == 1 else list(model_uris), dest,
                              format=fmt, container=container, force=force,
                              tracking_uri=tracking_uri, storage_options=storage_options,
                              progress=_progress(quiet), sign_key=sign_key,
                              options=options or None, encryption_key=key,
                              follow_symlinks=follow_symlinks)
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)
    data = {key: getattr(result, key) for key in
            ("location", "format", "container", "size", "sha256", "file_count", "digest")}
    _emit(as_json, data, [
        f"exported {' '.join(model_uris)} -> {result.location}",
        f"  format {result.format}, container {result.container}, {result.file_count} files, "
        f"{_human_size(result.size)}",
        *([f"  sha256 {result.sha256}"] if result.sha256 else []),
        f"  digest {result.digest}",
    ])


@cli.command("import")
@click.argument("source")
@click.option("--name", help="Register under this name instead of the archive's.")
@click.option("--experiment", help="Experiment for the recreated run (default: the source "
              "run's experiment, by name; else the model name).")
@click.option("--on-exists", type=click.Choice(ON_EXISTS_CHOICES), default="reuse",
              show_default=True, help="What to do when this archive was imported before.")
@click.option("--no-aliases", is_flag=True, help="Do not set the archive's aliases.")
@click.option("--tracking-uri", help=_TRACKING_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_limit_options
@click.option("--verify-key", type=_KEY, help="Refuse the archive unless its checksum.sig "
              "(which covers every file) verifies with this PEM public key.")
@click.option("--scan", type=click.Choice(SCAN_MODES), default="warn", show_default=True,
              help="Pickle scanning: strict refuses dangerous or unknown imports.")
@click.option("--key-file", type=_SECRET, help="Key of an encrypted MLSteam package (32 bytes: "
              "raw, 64 hex characters or base64).")
@click.option("--key-env", metavar="VAR", help="Environment variable holding the key of an "
              "encrypted MLSteam package.")
@_tmp_dir_option
@_storage_option
def import_command(source, name, experiment, on_exists, no_aliases, tracking_uri, as_json, quiet,
                   max_members, max_size, max_ratio, verify_key, scan, key_file, key_env,
                   tmp_dir, storage_options):
    """Verify the archive at SOURCE and register it as a model version (one per model, for an
    MLSteam package of several)."""
    if key_file and key_env:
        raise UnsupportedError("give the key one way: --key-file or --key-env")
    result = api.import_archive(source, name=name, experiment=experiment, on_exists=on_exists,
                                aliases=not no_aliases, tracking_uri=tracking_uri,
                                storage_options=storage_options, progress=_progress(quiet),
                                limits=_limits(max_members, max_size, max_ratio),
                                verify_key=verify_key, scan=scan,
                                encryption_key=_read_key(key_file, key_env), tmp_dir=tmp_dir)
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)
    keys = ("name", "version", "model_uri", "reused", "warnings")
    data = {key: getattr(result, key) for key in keys}
    if result.models:
        data["models"] = [{key: getattr(model, key) for key in keys} for model in result.models]
    _emit(as_json, data, [
        f"{'already imported as' if model.reused else 'registered'} {model.model_uri}"
        for model in result.models or [result]
    ])


@cli.command("clean")
@click.argument("dests", nargs=-1, metavar="[DEST...]")
@click.option("--tracking-uri", help="Also remove the runs and logged models that killed "
              "imports left in this registry.")
@click.option("--tmp-dir", type=click.Path(file_okay=False),
              help="The temporary folder to clean (default: TMPDIR).")
@click.option("--older-than", type=float, default=24.0, show_default=True, metavar="HOURS",
              help="Age after which a leftover whose owner cannot be checked (written on "
                   "another machine, an S3 upload, a registry run) is removed.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_storage_option
def clean_command(dests, tracking_uri, tmp_dir, older_than, dry_run, as_json, storage_options):
    """Remove what killed exports and imports left: partial files beside each export
    destination DEST (a file or a folder exported into; on S3 also unfinished multipart
    uploads), this plugin's working folders in the temporary folder, and with --tracking-uri
    a registry's half-imported runs and logged models. Those of a process still running are
    kept."""
    report = api.clean_leftovers(dests, tracking_uri=tracking_uri, tmp_dir=tmp_dir,
                                 older_than_hours=older_than, dry_run=dry_run,
                                 storage_options=storage_options)
    verb = "would remove" if dry_run else "removed"
    _emit(as_json, report.to_dict(),
          [f"{verb} {line}" for line in report.removed] or ["nothing to clean"])


@cli.command("inspect")
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_limit_options
@_storage_option
def inspect_command(source, as_json, max_members, max_size, max_ratio, storage_options):
    """Show what the archive at SOURCE holds, without extracting it."""
    info = api.inspect_archive(source, storage_options=storage_options,
                               limits=_limits(max_members, max_size, max_ratio))
    meta = info.metadata or {}
    registered = meta.get("registered_model") or {}
    version = meta.get("model_version") or {}
    run = meta.get("run") or {}
    lines = [
        f"{info.location}",
        f"  layout {info.layout}, container {info.container}, {len(info.files)} files",
        f"  model {registered.get('name', '-')} version {version.get('version', '-')}"
        f"  aliases {', '.join(version.get('aliases') or []) or '-'}",
        f"  run {run.get('run_name', '-')} ({len(run.get('params') or {})} params, "
        f"{len(run.get('metrics') or (run.get('metric_history') or {}).get('keys') or {})}"
        " metrics)",
        f"  flavors {', '.join(sorted((meta.get('mlmodel') or {}).get('flavors') or {})) or '-'}",
        f"  digest {info.digest or '-'}, {_signed_state(info)}",
        *[f"  {f['sha256'][:12]}  {f['size']:>12}  {f['path']}" for f in info.files],
        *[f"  pickle: {line}" for line in enforce(_findings(info.pickles), "warn")],
        *[f"  problem: {p}" for p in info.problems],
    ]
    _emit(as_json, info.to_dict(), lines)


def _signed_state(info: api.ArchiveInfo) -> str:
    if info.signed:
        return "signed (checksum.sig; verify --key checks it)"
    if any(entry["path"] == "model.sig" for entry in info.files):
        return "only model/ signed (model.sig): names, tags and aliases are not"
    return "not signed"


@cli.command("verify")
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_limit_options
@click.option("--key", type=_KEY, help="Also authenticate the archive: its checksum.sig must "
              "verify with this PEM public key (an unsigned archive fails).")
@click.option("--run", is_flag=True, help="Also run the archive's own code where its format "
              "asks for it (a portable package's example through predict.py, in a child "
              "process). Off by default: verifying never runs what it verifies.")
@_tmp_dir_option
@_storage_option
def verify_command(source, as_json, quiet, max_members, max_size, max_ratio, key, run,
                   tmp_dir, storage_options):
    """Check every file of the archive at SOURCE against its checksum.txt, then its format's
    own rules."""
    report = api.verify_archive(source, storage_options=storage_options,
                                progress=_progress(quiet),
                                limits=_limits(max_members, max_size, max_ratio), key=key,
                                run=run, tmp_dir=tmp_dir)
    if as_json:
        _emit(True, report.to_dict(), [])
    elif report.ok:
        # "OK" only for what a key authenticated; otherwise say what is not known.
        verdict = "OK" if report.authenticated else "intact"
        click.echo(f"{verdict}: {report.checked} files match checksum.txt (digest "
                   f"{report.digest}); {report.trust}")
    else:
        for problem in report.problems:
            click.echo(f"error: {problem}", err=True)
    if not report.ok:
        sys.exit(1)


@cli.command("model-archiver", add_help_option=False,
             context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def model_archiver_command(args):
    """torch-model-archiver, flag for flag (--model-name, --version, --handler, ...)."""
    from mlflow_archive_plugin.torchserve.cli import main as archiver_main

    sys.exit(archiver_main(list(args), prog="mlflow-archive model-archiver"))


_WORKERS_HELP = "Models handled at once (default: min(4, CPU count)); versions of one model " \
    "go one after another."


@cli.command("export-registry")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="A registered model to export, every version of it; repeatable.")
@click.option("--all", "all_models", is_flag=True, help="Export every registered model.")
@click.option("-o", "--output", "dest", required=True,
              help="Folder or URL (s3://...) for the archives and registry-index.json.")
@click.option("--workers", type=int, help=_WORKERS_HELP)
@click.option("--format", "fmt", type=click.Choice(sorted(LAYOUTS)), default="mlflow",
              show_default=True, help="Archive layout.")
@click.option("--container", type=click.Choice(CONTAINER_NAMES),
              help="How the files are packed (default: the format's own, zip for mlflow).")
@click.option("--tracking-uri", help=_TRACKING_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no per-version lines.")
@_storage_option
def export_registry_command(models, all_models, dest, workers, fmt, container, tracking_uri,
                            as_json, quiet, storage_options):
    """Export every version of the chosen registered models into one folder, an archive each,
    plus registry-index.json (written last, so an interrupted run leaves none). A re-run
    exports only what is missing, damaged or changed."""
    from mlflow_archive_plugin.mlflow_side.bulk import export_registry

    if bool(models) == all_models:
        raise UnsupportedError("name the models to export with --model NAME (repeatable), or "
                               "pass --all for every registered model, not both")
    result = export_registry(dest, None if all_models else list(models), format=fmt,
                             container=container, workers=workers, tracking_uri=tracking_uri,
                             storage_options=storage_options, progress=_progress(quiet),
                             on_version=_bulk_reporter(as_json, quiet))
    counts = result.counts
    _finish_bulk(as_json, result, [
        f"export-registry: {_count(result.models, 'model')}, "
        f"{_count(len(result.versions), 'version')} "
        f"({counts.get('exported', 0)} exported, {counts.get('skipped', 0)} already there, "
        f"{counts.get('failed', 0)} failed), {_human_size(result.bytes)} written in "
        f"{result.seconds:.1f} s",
        f"  index {result.index}",
    ])


@cli.command("import-registry")
@click.argument("source")
@click.option("--workers", type=int, help=_WORKERS_HELP)
@click.option("--preserve-version-numbers", is_flag=True,
              help="Give each version its source number where the target has not used it "
                   "(placeholder versions fill gaps and are deleted); report the others.")
@click.option("--tracking-uri", help=_TRACKING_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no per-version lines.")
@_storage_option
def import_registry_command(source, workers, preserve_version_numbers, tracking_uri, as_json,
                            quiet, storage_options):
    """Recreate what export-registry wrote at SOURCE (its folder or registry-index.json):
    each model's versions in their original order, then its aliases. A re-run imports only
    what the target does not hold yet."""
    from mlflow_archive_plugin.mlflow_side.bulk import import_registry

    result = import_registry(source, workers=workers,
                             preserve_version_numbers=preserve_version_numbers,
                             tracking_uri=tracking_uri, storage_options=storage_options,
                             progress=_progress(quiet), on_version=_bulk_reporter(as_json, quiet))
    counts = result.counts
    renumbered = ", ".join(f"{o.name} {o.version}->{o.target_version}"
                           for o in result.renumbered)
    _finish_bulk(as_json, result, [
        f"import-registry: {_count(result.models, 'model')}, "
        f"{_count(len(result.versions), 'version')} "
        f"({counts.get('imported', 0)} imported, {counts.get('reused', 0)} already there, "
        f"{counts.get('failed', 0)} failed, {counts.get('blocked', 0)} not tried), "
        f"{_human_size(result.bytes)} read in {result.seconds:.1f} s",
        *([f"  could not keep version numbers: {renumbered}"] if renumbered else []),
    ])


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _bulk_reporter(as_json: bool, quiet: bool):
    """Prints each version's line as it is done (above any progress bar), unless told not to."""
    if as_json or quiet:
        return None
    from tqdm.auto import tqdm

    return lambda outcome: tqdm.write(outcome.line())


def _finish_bulk(as_json: bool, result, summary: list[str]) -> None:
    """The summary (or the JSON), warnings, then every failure on one line each: exit 1."""
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)
    _emit(as_json, result.to_dict(), summary)
    for failure in result.failures:
        click.echo(f"error: {failure.line()}", err=True)
    if result.failures:
        sys.exit(1)


def _findings(pickles: list[dict[str, Any]]) -> list[PickleFinding]:
    return [PickleFinding(**finding) for finding in pickles]


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="mlflow-archive")


if __name__ == "__main__":
    main()
