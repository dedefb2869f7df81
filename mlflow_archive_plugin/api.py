"""The four public verbs: export, import, inspect and verify an archive."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import (
    ArchiveError,
    CorruptArchiveError,
    EncryptionError,
    IntegrityError,
    SignatureError,
    UnsupportedError,
)
from mlflow_archive_plugin.formats import LAYOUTS, Entry, Layout, detect_layout, get_layout
from mlflow_archive_plugin.formats.base import parse_metadata
from mlflow_archive_plugin.plugins.flavor import save_archive_model, stored_archive
from mlflow_archive_plugin.snapshot import METADATA_NAME, Snapshot
from mlflow_archive_plugin.storage import cleanup
from mlflow_archive_plugin.storage.cleanup import scratch_dir
from mlflow_archive_plugin.storage.containers import get_container
from mlflow_archive_plugin.storage.extents import materialize
from mlflow_archive_plugin.storage.integrity import (
    CHECKSUM_NAME,
    CHECKSUM_SIGNATURE_NAME,
    hash_stream,
)
from mlflow_archive_plugin.storage.location import (
    fetched,
    is_folder_target,
    publish_file,
    publish_folder,
    refuse_existing,
    resolve,
)
from mlflow_archive_plugin.storage.pipeline import (
    ReadLimits,
    Scanned,
    archive_digest,
    container_named,
    metadata_problems,
    pick_container,
    read_snapshot,
    scan_archive,
    write_archive,
)
from mlflow_archive_plugin.trust import crypto
from mlflow_archive_plugin.trust.scanning import SCAN_MODES, enforce, scan_pickles
from mlflow_archive_plugin.trust.signing import (
    SIGNATURE_NAME,
    sign_file,
    sign_model_dir,
    signed_digest,
    verify_checksum_signature,
)

# MLflow takes seconds to import and inspect/verify never need it, so the modules that talk
# to MLflow (mlflow_source, registry, tracking) are imported inside export and import only.

ON_EXISTS_CHOICES = ("reuse", "new", "fail")


class _Result:
    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-serialisable data."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class ExportResult(_Result):
    """Where an export went and how to recognise it.

    ``sha256`` is the hash of the archive file's bytes (None for a folder); ``digest`` is the
    content digest (SHA-256 of its ``checksum.txt``), the same whatever the container.
    """

    location: str
    format: str
    container: str
    size: int | None
    sha256: str | None
    file_count: int
    digest: str
    model_name: str | None
    model_version: str | None
    warnings: list[str] = field(default_factory=list)


@dataclass
class ImportResult(_Result):
    """The registered model version an import produced, or found when ``reused`` is true.

    For an archive of several models (an MLSteam package) it describes the first, and
    ``models`` holds one result per model, in the archive's order.
    """

    name: str
    version: str
    model_uri: str
    reused: bool
    run_id: str | None
    model_id: str | None
    digest: str
    warnings: list[str] = field(default_factory=list)
    models: list[ImportResult] = field(default_factory=list)


@dataclass
class ArchiveInfo(_Result):
    """What an archive holds, read without extracting it or talking to MLflow."""

    location: str
    layout: str
    container: str
    metadata: dict[str, Any] | None
    files: list[dict[str, Any]]
    digest: str | None
    problems: list[str] = field(default_factory=list)
    signed: bool = False
    pickles: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class VerifyReport(_Result):
    """Every integrity problem found (one line each, naming the file); ``ok`` if none.

    ``ok`` says the files are intact, not who made them: that is ``authenticated``, true only
    when a key was given, ``checksum.sig`` verified with it and every file matched.
    ``signature`` says what the archive carries: ``"verified"`` (checked with the key),
    ``"unchecked"`` (signed, no key given), ``"model-only"`` (an older ``model.sig`` over
    ``model/`` alone), ``"rewritten"`` (``checksum.txt`` is not the one its signature names:
    changed by someone without the key), ``"invalid"`` (checked with the key and refused) or
    ``"unsigned"``. ``trust`` says it in one sentence.
    """

    location: str
    ok: bool
    problems: list[str]
    checked: int
    digest: str | None
    signature: str = "unsigned"
    authenticated: bool = False
    trust: str = ""


def export_model(
    model_uri: str | Sequence[str],
    dest: str | os.PathLike | None = None,
    *,
    format: str = "mlflow",
    container: str | None = None,
    force: bool = False,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    storage_options: dict | None = None,
    progress: bool | None = None,
    sign_key: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
    encryption_key: bytes | None = None,
    follow_symlinks: bool = False,
) -> ExportResult:
    """Export the model at ``model_uri`` as an archive at ``dest``.

    ``model_uri`` is any URI MLflow resolves (``models:/<name>/<version>``,
    ``models:/<name>@<alias>``, ``models:/m-<id>``, ``runs:/<run>/<name>``). ``dest`` is a
    file path or fsspec URL, or a folder in which a name is derived from the model's name and
    version; it defaults to the working directory. An existing file is replaced only with
    ``force``; the archive appears there only once complete. ``storage_options`` go to the
    destination's fsspec file system, except ``multipart_chunksize``: the part size (bytes) of
    an S3 multipart upload, whose parts go ``max_concurrency`` at a time. A model whose
    artifacts are on this machine (a local artifact store) is read where it lies, not copied
    first. With ``sign_key`` (a PEM
    elliptic-curve private key) the archive is signed with OpenSSF model-signing:
    ``checksum.sig`` signs ``checksum.txt`` and so every file, ``model.sig`` the ``model/``
    folder alone. ``options`` are the format's own
    settings; for ``mar``: ``handler``, ``model_file``, ``serialized_file``, ``extra_files``,
    ``config_file`` and ``requirements_file``, which replace or extend the generated parts;
    for ``mlarchive``: ``strict`` (refuse a framework outside MLSteam's list instead of
    warning), ``cleanup`` (``after-load`` or ``never``) and ``cleanup_files`` (glob patterns
    relative to the package root) for encrypted packages.

    Several URIs go into one archive where the format holds several models (``mlarchive``).
    With ``encryption_key`` (32 bytes; see :func:`mlflow_archive_plugin.trust.crypto.read_key`) the
    model files are encrypted with AES-256-GCM (``mlarchive`` only; the file is then named
    ``model-enc.mlarchive`` in a folder). Warnings (a framework MLSteam does not list) are
    returned in ``warnings``.

    A model imported from a foreign archive (a ``.mar`` made by torch-model-archiver) is
    exported in that archive's format as the very bytes that were imported.

    Only the model's own files are packed: a symbolic link in its folder that leads outside
    it, or nowhere, is refused (:class:`~mlflow_archive_plugin.errors.UnsafeArchiveError`)
    unless ``follow_symlinks``, which packs the target's bytes as a regular file under the
    link's name. Every URI the archive records (lineage, registry and run metadata, ``MLmodel``)
    is written without user names, passwords and secret query parameters.
    """
    layout = get_layout(format)
    uris = [model_uri] if isinstance(model_uri, str) else list(model_uri)
    if not uris:
        raise UnsupportedError("give at least one model URI to export")
    if len(uris) > 1 and not layout.several_models:
        raise UnsupportedError(f"the {layout.name} format holds one model, but {len(uris)} were "
                               "given; export them one at a time, or use --format mlarchive")
    if encryption_key is not None:
        crypto.check_key(encryption_key)
        if sign_key is not None:
            raise UnsupportedError("an encrypted package cannot also be signed; sign it, or "
                                   "encrypt it, not both")
    if sign_key is not None and len(uris) > 1:
        raise UnsupportedError("a signature covers one model; sign each model's own archive")
    layout.check_options(options)
    raw_dest = os.fspath(dest) if dest is not None else os.getcwd() + os.sep
    location = resolve(raw_dest, storage_options)
    into_folder = is_folder_target(location, raw_dest)
    chosen = pick_container(
        layout, container if into_folder else _container_for(location.path, container, layout))
    if not into_folder:
        refuse_existing(location, force)  # before any download, not after
        _remove_leftovers(location)
    from mlflow_archive_plugin.mlflow_side.served import fetch_deferred
    from mlflow_archive_plugin.mlflow_side.source import read_model

    with scratch_dir("export") as scratch:
        snapshots = []
        for index, uri in enumerate(uris):
            download = Path(scratch, "download" if index == 0 else f"download-{index}")
            download.mkdir()
            snapshots.append(read_model(
                uri, download, tracking_uri=tracking_uri, registry_uri=registry_uri,
                follow_symlinks=follow_symlinks,
            ))
        snapshot = snapshots[0]
        if len(snapshots) > 1:
            snapshot.bundle = snapshots
        stored = stored_archive(snapshot.model_dir, snapshot.mlmodel)
        if stored is not None or sign_key is not None or encryption_key is not None:
            # These read the model files themselves, not only the archive writer.
            for member in snapshots:
                fetch_deferred(member.deferred)
        if (stored is not None and stored[0].get("layout") == layout.name and not options
                and len(snapshots) == 1 and encryption_key is None):
            asked = container or (None if into_folder else container_named(location.path, layout))
            return _export_stored(snapshot, stored, location, into_folder, asked, force,
                                  sign_key)
        if encryption_key is not None:
            layout.seal(snapshot, encryption_key, Path(scratch, "sealed"))
        warnings = layout.warnings(snapshot, options)
        extra: tuple[Entry, ...] = ()
        sign_checksums = None
        if sign_key is not None:
            signature = Path(scratch) / SIGNATURE_NAME
            sign_model_dir(snapshot.model_dir, Path(sign_key), signature)
            extra = (Entry(SIGNATURE_NAME, source=signature),)
            sign_checksums = _checksum_signer(Path(sign_key), Path(scratch, "checksums"))
        if into_folder:
            location = location.child(layout.file_stem(snapshot) + layout.extension(chosen))
            _remove_leftovers(location)
        written = write_archive(
            snapshot, layout, chosen, location, force=force, show_progress=progress, extra=extra,
            options=options, sign_checksums=sign_checksums,
        )
    version = snapshot.model_version
    return ExportResult(
        location=location.url,
        format=layout.name,
        container=chosen.name,
        size=written.size,
        sha256=written.sha256,
        file_count=len(written.records) + 1,
        digest=written.digest,
        model_name=snapshot.registered_model.name if snapshot.registered_model else None,
        model_version=version.version if version else None,
        warnings=warnings,
    )


def import_archive(
    source: str | os.PathLike,
    *,
    name: str | None = None,
    experiment: str | None = None,
    on_exists: str = "reuse",
    aliases: bool = True,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    storage_options: dict | None = None,
    progress: bool | None = None,
    limits: ReadLimits | None = None,
    verify_key: str | os.PathLike | None = None,
    scan: str = "warn",
    encryption_key: bytes | None = None,
    tmp_dir: str | os.PathLike | None = None,
) -> ImportResult:
    """Register the model in the archive at ``source`` as a new model version (each model
    as its own version, for an archive of several).

    The archive is extracted into a fresh temporary folder and verified against its
    ``checksum.txt`` (and, with ``verify_key``, first its ``checksum.sig``) before anything
    is created, except files of 1 MiB or more that a local archive stores as they are: those
    are uploaded straight from the archive and verified as they go, before the version is
    created; a mismatch undoes the run and LoggedModel made so far. Pickle files are
    listed with the globals they import; ``scan="strict"`` refuses dangerous or unknown
    ones, ``"warn"`` reports them in ``warnings``. Nothing in
    the archive is unpickled or run. Importing the same archive again returns the version
    made the first time (``on_exists="reuse"``); ``"new"`` registers another, ``"fail"``
    raises :class:`~mlflow_archive_plugin.errors.VersionExistsError`. ``limits`` bounds what
    reading may produce (see :class:`ReadLimits`). An encrypted MLSteam package needs its
    ``encryption_key``; every file is decrypted before anything is registered.

    The archive is extracted under ``tmp_dir`` (default: ``TMPDIR``). Before anything is
    written, its listing (zip, folder, plain tar) is checked: an archive whose entry names
    hold no model this plugin reads, or whose files would not fit in the free space there,
    is refused in one line.
    """
    if scan not in SCAN_MODES:
        choices = ", ".join(SCAN_MODES)
        raise UnsupportedError(f"unknown scan mode {scan!r}; choose one of: {choices}")
    if on_exists not in ON_EXISTS_CHOICES:
        choices = ", ".join(ON_EXISTS_CHOICES)
        raise UnsupportedError(f"unknown on_exists {on_exists!r}; choose one of: {choices}")
    from mlflow_archive_plugin.mlflow_side.registry import register, unregister
    from mlflow_archive_plugin.mlflow_side.tracking import probe, resolve_tracking_uri

    probe(resolve_tracking_uri(tracking_uri))
    with (
        fetched(resolve(source, storage_options)) as location,
        _extracted(location, progress, limits, keep_going=False, in_place="unread",
                   tmp_dir=tmp_dir, expect_model=True)
        as (root, scanned),
        scratch_dir("model") as wrapped,
    ):
        if verify_key is not None:
            # First: with a key, nothing the signature does not cover is even parsed.
            _authenticate(root, Path(verify_key))
        snapshot = read_snapshot(root, scanned)
        extents = scanned.extents_under(root)
        problems = metadata_problems(snapshot, scanned)
        if problems:
            raise IntegrityError(f"archive failed verification: {problems[0]}", problems)
        members = snapshot.members
        if name is not None and len(members) > 1:
            raise UnsupportedError(f"--name renames one model, but the archive holds "
                                   f"{len(members)}; import it without --name")
        if snapshot.encryption is not None or verify_key is not None or snapshot.is_foreign:
            materialize(extents)  # these read the extracted files themselves
        findings = scan_pickles(root, extents=extents)
        if snapshot.encryption is not None:
            plain = Path(wrapped, "plain")
            _decrypt(snapshot, encryption_key, plain)
            findings += scan_pickles(plain)
        pickle_warnings = enforce(findings, scan)
        digest = archive_digest(scanned)
        if snapshot.is_foreign:
            # No MLflow model inside: keep the archive itself, as it came, plus its files.
            snapshot.model_dir = Path(wrapped, "model")
            snapshot.mlmodel = save_archive_model(
                location, scanned.container, root, snapshot.model_dir, layout=snapshot.layout,
                manifest=snapshot.foreign_manifest or {}, digest=digest,
            )
        done: list[tuple[Any, str]] = []  # (registry.Registered, its digest)
        try:
            for member in members:
                # Each model of a bundle is recognised on re-import by its own digest, even
                # when two of them are versions of one registered model.
                member_digest = digest if len(members) == 1 else f"{digest}#{member.model_path}"
                done.append((register(
                    member,
                    member_digest,
                    name=name,
                    experiment=experiment,
                    on_exists=on_exists,
                    aliases=aliases,
                    tracking_uri=tracking_uri,
                    registry_uri=registry_uri,
                    extents=extents,
                ), member_digest))
        except BaseException:
            for registered, _ in reversed(done):
                unregister(registered, tracking_uri=tracking_uri, registry_uri=registry_uri)
            raise
    results = [
        ImportResult(
            name=registered.name,
            version=registered.version,
            model_uri=f"models:/{registered.name}/{registered.version}",
            reused=registered.reused,
            run_id=registered.run_id,
            model_id=registered.model_id,
            digest=member_digest,
            warnings=registered.warnings,
        )
        for registered, member_digest in done
    ]
    return dataclasses.replace(
        results[0], digest=digest,
        warnings=pickle_warnings + snapshot.warnings
        + [line for result in results for line in result.warnings],
        models=results if len(results) > 1 else [],
    )


def _checksum_signer(private_key: Path, folder: Path):
    """What signs ``checksum.txt``'s bytes once the writer has them: model-signing signs a
    file, so the bytes are written to ``folder`` first."""

    def sign(checksums: bytes) -> bytes:
        folder.mkdir()
        (folder / CHECKSUM_NAME).write_bytes(checksums)
        sign_file(folder / CHECKSUM_NAME, private_key, folder / CHECKSUM_SIGNATURE_NAME)
        return (folder / CHECKSUM_SIGNATURE_NAME).read_bytes()

    return sign


def _authenticate(root: Path, key: Path) -> None:
    """Refuse the archive extracted at ``root`` unless ``checksum.sig`` signs its
    ``checksum.txt`` with ``key``. Reading has already refused any file ``checksum.txt`` does
    not list or lists with another hash, so this covers every file of the archive."""
    if (root / CHECKSUM_SIGNATURE_NAME).is_file() or not (root / SIGNATURE_NAME).is_file():
        verify_checksum_signature(root / CHECKSUM_NAME, root / CHECKSUM_SIGNATURE_NAME, key)
    else:
        raise SignatureError(
            f"the archive's signature ({SIGNATURE_NAME}) covers its model/ folder only, not "
            f"{METADATA_NAME} (names, aliases, tags) nor its other files, so it cannot be "
            f"trusted as a whole; ask its publisher to export it again with --sign-key, which "
            f"also signs {CHECKSUM_NAME}"
        )


def _decrypt(snapshot: Snapshot, key: bytes | None, into: Path) -> None:
    """Decrypt each model folder of an encrypted package into ``into``, all of them before
    anything is registered; the snapshots then point at the plain files."""
    if key is None:
        raise EncryptionError("the archive's model files are encrypted; pass --key-file or "
                              "--key-env with the key it was encrypted with")
    plain_dirs: dict[str, Path] = {}
    for member in [snapshot, *snapshot.members]:
        if member.model_path not in plain_dirs:
            plain = crypto.decrypt_tree(member.model_dir, into / member.model_path, key,
                                        snapshot.encryption or {}, member.model_path + "/")
            if not (plain / "MLmodel").is_file():
                raise CorruptArchiveError(f"{member.model_path} holds no MLmodel once "
                                          "decrypted, so it is no MLflow model")
            plain_dirs[member.model_path] = plain
        member.model_dir = plain_dirs[member.model_path]


def _export_stored(snapshot: Snapshot, stored: tuple[dict[str, Any], Path], location,
                   into_folder: bool, container: str | None, force: bool,
                   sign_key) -> ExportResult:
    """Publish an imported foreign archive as it came, byte for byte."""
    flavor, path = stored
    kept = str(flavor.get("container"))
    if container is not None and get_container(container).name != kept:
        raise UnsupportedError(
            f"this model is a {flavor.get('layout')} archive stored as {kept}, not "
            f"{get_container(container).name}; export it to a {kept} file name or folder, or "
            "re-pack its files with --format mlflow"
        )
    if sign_key is not None:
        raise UnsupportedError("an imported foreign archive is exported unchanged, so it "
                               "cannot be signed; export it with --format mlflow to sign it")
    if into_folder:
        location = location.child(str(flavor.get("file_name") or path.name))
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if path.is_dir():
        with publish_folder(location, force) as target:
            shutil.copytree(path, target, dirs_exist_ok=True)
        size = sha256 = None
    else:
        with publish_file(location, force) as target, path.open("rb") as source:
            shutil.copyfileobj(source, target, 1024 * 1024)
        with path.open("rb") as source:
            size, sha256 = hash_stream(source)
    version = snapshot.model_version
    return ExportResult(
        location=location.url,
        format=str(flavor.get("layout")),
        container=kept,
        size=size,
        sha256=sha256,
        file_count=len(files),
        digest=str(flavor.get("digest") or ""),
        model_name=snapshot.registered_model.name if snapshot.registered_model else None,
        model_version=version.version if version else None,
    )


def _remove_leftovers(location) -> None:
    """Remove what killed exports to ``location`` left beside it (partial files whose writer
    is gone, day-old unfinished uploads). Best effort: it never stops this export."""
    with contextlib.suppress(ArchiveError, OSError):
        cleanup.remove(cleanup.find_beside(location))


def _container_for(path: str, requested: str | None, layout: Layout) -> str:
    """The container a destination file name asks for, checked against ``requested``; a
    name with no known extension takes ``requested`` or the layout's default."""
    by_name = container_named(path, layout)
    if requested is None:
        return by_name or layout.default_container
    if by_name is not None and by_name != get_container(requested).name:
        raise UnsupportedError(
            f"the destination {os.path.basename(path)!r} names a {by_name} file but the "
            f"container is {requested}; change one of them"
        )
    return requested


@contextlib.contextmanager
def _extracted(location, progress, limits, *, keep_going: bool,
               in_place: str | None = None, tmp_dir: str | os.PathLike | None = None,
               expect_model: bool = False) -> Iterator[tuple[Path, Scanned]]:
    """The archive extracted (safely, staged) into a temporary folder under ``tmp_dir``
    (``TMPDIR`` by default), removed afterwards; with ``expect_model`` an archive whose
    listing holds no model is refused before anything is written.

    With ``in_place``, large stored entries stay in the archive (``Scanned.extents``):
    ``"verified"`` hashes them now, ``"unread"`` leaves them to be checked against
    ``checksum.txt`` as they are read (uploaded) later."""
    if tmp_dir is not None and not os.path.isdir(tmp_dir):
        raise UnsupportedError(f"the temporary folder {os.fspath(tmp_dir)!r} does not exist; "
                               "create it or choose another with --tmp-dir")
    with scratch_dir("read", dir=tmp_dir) as scratch:
        root = Path(scratch)
        scanned = scan_archive(location, extract_to=root, keep_going=keep_going,
                               show_progress=progress, limits=limits,
                               in_place=in_place is not None,
                               verify_in_place=in_place != "unread", expect_model=expect_model)
        yield root, scanned


def inspect_archive(
    source: str | os.PathLike,
    *,
    storage_options: dict | None = None,
    limits: ReadLimits | None = None,
) -> ArchiveInfo:
    """Describe the archive at ``source``: layout, container, metadata, files, pickles and
    problems, without talking to MLflow and without unpickling or running anything."""
    location = resolve(source, storage_options)
    with _extracted(location, False, limits, keep_going=True, in_place="verified") as (
            root, scanned):
        findings = scan_pickles(root, extents=scanned.extents_under(root))
        metadata = _parse_metadata(scanned.captured.get(METADATA_NAME), root)
        if metadata:
            layout = str(metadata.get("layout", "unknown"))
        else:
            try:
                layout = detect_layout(set(scanned.records), root).name
            except UnsupportedError:
                layout = "unknown"
    return ArchiveInfo(
        location=location.url,
        layout=layout,
        container=scanned.container,
        metadata=metadata,
        files=[record.to_dict() for _, record in sorted(scanned.records.items())],
        digest=scanned.digest,
        problems=scanned.integrity_problems(),
        signed=CHECKSUM_SIGNATURE_NAME in scanned.records,
        pickles=[dataclasses.asdict(finding) for finding in findings],
    )


def verify_archive(
    source: str | os.PathLike,
    *,
    storage_options: dict | None = None,
    progress: bool | None = None,
    limits: ReadLimits | None = None,
    key: str | os.PathLike | None = None,
    run: bool = False,
    tmp_dir: str | os.PathLike | None = None,
) -> VerifyReport:
    """Check every file of the archive at ``source`` against ``checksum.txt``, reporting all
    problems at once rather than stopping at the first; with ``key`` (a PEM public key) also
    authenticate it: ``checksum.sig`` must sign its ``checksum.txt``, refusing an unsigned
    archive. The report says what could and could not be authenticated (``signature``).
    Once every file holds, the layout's own rules are checked too; ``run`` lets those run
    the archive's code (a portable package's example through its ``predict.py``) in a child
    process. The archive is extracted under ``tmp_dir`` (default: ``TMPDIR``); one whose
    listing holds no model this plugin reads, or would not fit in the free space there, is
    refused in one line before anything is written."""
    location = resolve(source, storage_options)
    with _extracted(location, progress, limits, keep_going=True, tmp_dir=tmp_dir,
                    expect_model=True) as (root, scanned):
        problems = scanned.integrity_problems()
        raw = scanned.captured.get(METADATA_NAME)
        if raw is None:
            problems.append(f"{METADATA_NAME}: missing, so the archive holds no model this "
                            "plugin can import")
        else:
            try:
                snapshot = parse_metadata(raw, root)
            except CorruptArchiveError as exc:
                problems.append(f"{METADATA_NAME}: {exc}")
            else:
                reported = {problem.split(":", 1)[0] for problem in problems}
                problems.extend(
                    problem for problem in metadata_problems(snapshot, scanned)
                    if problem.split(":", 1)[0] not in reported
                )
                if not problems and snapshot.layout in LAYOUTS:
                    problems.extend(LAYOUTS[snapshot.layout].check(root, snapshot, run=run))
        signature, trust, signature_problems = _signature_state(root, scanned, key)
        problems.extend(signature_problems)
    checked = len([path for path in scanned.records
                   if path not in (CHECKSUM_NAME, CHECKSUM_SIGNATURE_NAME)])
    return VerifyReport(location.url, not problems, problems, checked, scanned.digest,
                        signature=signature,
                        authenticated=signature == "verified" and not problems, trust=trust)


def _signature_state(root: Path, scanned: Scanned, key: str | os.PathLike | None
                     ) -> tuple[str, str, list[str]]:
    """What the archive's signatures prove: the state, its sentence and any problems."""
    has_sig = CHECKSUM_SIGNATURE_NAME in scanned.records
    if key is not None:
        try:
            _authenticate(root, Path(key))
        except SignatureError as exc:
            return "invalid", "the signature does not authenticate the archive", \
                exc.problems or [str(exc)]
        return "verified", f"signed: {CHECKSUM_SIGNATURE_NAME} verifies with {key}, and " \
            f"{CHECKSUM_NAME} covers every other file", []
    if has_sig:
        claimed = signed_digest(root / CHECKSUM_SIGNATURE_NAME)
        actual = hashlib.sha256(scanned.captured.get(CHECKSUM_NAME, b"")).hexdigest()
        if claimed != actual:
            return "rewritten", "not authentic", [
                f"{CHECKSUM_NAME}: rewritten after signing ({CHECKSUM_SIGNATURE_NAME} signs "
                f"another {CHECKSUM_NAME}), so someone without the signing key changed the "
                "archive; do not use it, and get a fresh copy from its publisher"]
        return "unchecked", "signed, but the signature was not checked: pass --key with " \
            "the publisher's public key to authenticate it", []
    if SIGNATURE_NAME in scanned.records:
        return "model-only", f"only model/ is signed ({SIGNATURE_NAME}, an older export): " \
            f"{METADATA_NAME} and the other files are not authenticated", []
    return "unsigned", f"unsigned: {CHECKSUM_NAME} shows the files are intact, not who made " \
        f"them, since whoever can change the archive can rewrite {CHECKSUM_NAME} too", []


def _parse_metadata(raw: bytes | None, root: Path) -> dict[str, Any] | None:
    """The document as inspect shows it, the export note's facts back in its lineage."""
    if raw is None:
        return None
    snapshot = parse_metadata(raw, root)
    document = snapshot.to_document()
    document["lineage"] = dataclasses.asdict(snapshot.lineage)
    return document


@dataclass
class CleanReport:
    """What :func:`clean_leftovers` found (and, unless ``dry_run``, removed): one line each."""

    removed: list[str]
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return {"removed": self.removed, "dry_run": self.dry_run}


def clean_leftovers(
    dests: Sequence[str | os.PathLike] = (),
    *,
    tracking_uri: str | None = None,
    tmp_dir: str | os.PathLike | None = None,
    older_than_hours: float = 24.0,
    dry_run: bool = False,
    storage_options: dict | None = None,
) -> CleanReport:
    """Remove what killed exports and imports left: partial files and folders beside each
    export destination in ``dests`` (or in a destination folder) and, on S3, their unfinished
    multipart uploads; this plugin's working folders in ``tmp_dir`` (default: ``TMPDIR``); and
    with ``tracking_uri``, the runs and logged models killed imports left in that registry.

    A leftover whose writer ran on this machine is removed once that process is gone; one
    whose owner cannot be checked (another machine, an S3 upload, a registry) once it is older
    than ``older_than_hours``. With ``dry_run`` nothing is removed; the report says what would
    be.
    """
    older_than = older_than_hours * 3600
    found = []
    for dest in dests:
        found += cleanup.find_at_destination(dest, storage_options=storage_options,
                                             older_than=older_than)
    found += cleanup.find_in_temporary(tmp_dir, older_than=older_than)
    lines = [item.line() for item in found]
    if not dry_run:
        cleanup.remove(found)
    if tracking_uri is not None:
        from mlflow_archive_plugin.mlflow_side.registry import (
            find_killed_imports,
            remove_killed_imports,
        )

        killed = find_killed_imports(tracking_uri, older_than=older_than)
        lines += [item.line() for item in killed]
        if not dry_run:
            remove_killed_imports(killed, tracking_uri)
    return CleanReport(lines, dry_run)
