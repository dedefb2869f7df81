"""Hostile archives, generated here, refused through the public API and the CLI.

No binary file is committed: a valid base archive is written by the package's own writer from a
hand-made snapshot, and every hostile variant is that archive rewritten with ``zipfile`` or
``tarfile`` with one hostile change (``checksum.txt`` kept consistent wherever the point is a
member rule rather than the checksum). Each must be refused by ``import_archive`` with its own
``ArchiveError`` subclass and a one-line message naming the entry and the rule; leave every
byte under the test's folder as it was (TMPDIR points inside it, so the package's temporary
extraction folders are watched too, and a sibling ``outside`` folder is where escapes would
land); and register nothing in an embedded SQLite registry. ``verify_archive`` must never call
one of them OK, and the CLI must refuse a representative few with one ``error:`` line.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import stat
import struct
import tarfile
import tempfile
import unicodedata
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import assert_user_error, child_env, cli, registry_census

from mlflow_archive_plugin import (
    ArchiveError,
    ReadLimits,
    archive,
    containers,
    import_archive,
    layouts,
    location,
    verify_archive,
)
from mlflow_archive_plugin.errors import (
    CorruptArchiveError,
    IntegrityError,
    NotAnArchiveError,
    UnsafeArchiveError,
    UnsupportedError,
)
from mlflow_archive_plugin.snapshot import (
    METADATA_NAME,
    ModelVersionInfo,
    RegisteredModelInfo,
    Snapshot,
)
from mlflow_archive_plugin.storage.integrity import CHECKSUM_NAME, CHUNK_SIZE

MIB = 1024 * 1024
MODEL_NAME = "hostile-demo"
MLMODEL = "model/MLmodel"
WEIGHTS = "model/weights.bin"
BOMB_NAME = "model/zeros.bin"
BOMB_MIB = 300
EMPTY_REGISTRY = {"registered_models": 0, "model_versions": 0, "runs": 0, "logged_models": 0}
SECRET = b"a file of the importer's that no archive may touch\n"
CAFE_NFC = unicodedata.normalize("NFC", "model/caf\u00e9.txt")
CAFE_NFD = unicodedata.normalize("NFD", CAFE_NFC)
RATIO_RULE = "expands to more than 1000 times its size"


# --------------------------------------------------------------------------- members and packing


@dataclass(frozen=True)
class Member:
    """One archive member as a hostile archive needs it, whatever the container."""

    name: str
    data: bytes = b""
    kind: str = "file"  # file, dir, symlink, hardlink, fifo, chardev, blockdev
    target: str = ""  # what a link points at


TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checksum_text(files: dict[str, str]) -> bytes:
    """``checksum.txt`` for ``{path: sha256}``, in the plugin's ``sha256sum`` format."""
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(files.items())).encode()


def sealed(members: list[Member]) -> list[Member]:
    """``members`` then a ``checksum.txt`` matching every regular file among them (last wins)."""
    files = {m.name: sha256(m.data) for m in members if m.kind == "file"}
    return [*members, Member(CHECKSUM_NAME, checksum_text(files))]


def write_zip(path: Path, members: list[Member]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names a case needs
        with zipfile.ZipFile(path, "w") as handle:
            for member in members:
                name = member.name + ("/" if member.kind == "dir" else "")
                info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                if member.kind == "file":
                    info.external_attr = (stat.S_IFREG | 0o644) << 16
                    handle.writestr(info, member.data)
                elif member.kind == "symlink":
                    info.external_attr = (stat.S_IFLNK | 0o777) << 16
                    handle.writestr(info, member.target)
                elif member.kind == "dir":
                    info.external_attr = (stat.S_IFDIR | 0o755) << 16
                    handle.writestr(info, b"")
                else:
                    raise ValueError(f"a zip cannot hold a {member.kind}")


def write_tar(path: Path, members: list[Member], compression: str = "") -> None:
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as handle:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = TAR_TYPES[member.kind]
            info.linkname = member.target
            info.mode = 0o755 if member.kind == "dir" else 0o644
            info.mtime = 1_700_000_000
            if member.kind in ("chardev", "blockdev"):
                info.devmajor, info.devminor = 1, 3
            if member.kind == "file":
                info.size = len(member.data)
                handle.addfile(info, io.BytesIO(member.data))
            else:
                handle.addfile(info)


def write_folder(path: Path, members: list[Member]) -> None:
    path.mkdir()
    for member in members:
        target = path / member.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if member.kind == "file":
            target.write_bytes(member.data)
        elif member.kind == "symlink":
            target.symlink_to(member.target)
        elif member.kind == "dir":
            target.mkdir(exist_ok=True)
        else:
            raise ValueError(f"the folder builder does not make a {member.kind}")


EXTENSIONS = {"zip": ".zip", "tar": ".tar", "tar.gz": ".tar.gz", "folder": ""}


def pack(folder: Path, container: str, members: list[Member], stem: str = "hostile") -> Path:
    path = folder / f"{stem}{EXTENSIONS[container]}"
    if container == "zip":
        write_zip(path, members)
    elif container == "folder":
        write_folder(path, members)
    else:
        write_tar(path, members, "gz" if container == "tar.gz" else "")
    return path


# --------------------------------------------------------------------------- header surgery

# Offsets of fields in a zip central directory record and in a local file header.
_CENTRAL_FIELDS = {"version_needed": (6, "<H"), "flags": (8, "<H"), "method": (10, "<H"),
                   "crc": (16, "<L"), "size": (24, "<L")}
_LOCAL_FIELDS = {"version_needed": (4, "<H"), "flags": (6, "<H"), "method": (8, "<H"),
                 "crc": (14, "<L"), "size": (22, "<L")}


def patch_zip_entry(path: Path, name: str, *, central: bool = True, **fields: int) -> None:
    """Rewrite header fields of the zip entry ``name`` in its local header and (unless told
    otherwise) its central directory record."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as handle:
        local = handle.getinfo(name).header_offset
    records = []
    record = raw.find(b"PK\x01\x02")
    while record >= 0:
        name_length = struct.unpack_from("<H", raw, record + 28)[0]
        if raw[record + 46:record + 46 + name_length] == name.encode():
            records.append(record)
        record = raw.find(b"PK\x01\x02", record + 4)
    assert len(records) == 1, f"{name}: {len(records)} central directory records"
    for field, value in fields.items():
        offset, fmt = _LOCAL_FIELDS[field]
        struct.pack_into(fmt, raw, local + offset, value)
        if central:
            offset, fmt = _CENTRAL_FIELDS[field]
            struct.pack_into(fmt, raw, records[0] + offset, value)
    path.write_bytes(bytes(raw))


def patch_tar_size(path: Path, name: str, size: int) -> None:
    """Make the ustar header of ``name`` claim ``size`` bytes, with a correct header checksum."""
    with tarfile.open(path) as handle:
        offset = handle.getmember(name).offset
    raw = bytearray(path.read_bytes())
    header = raw[offset:offset + 512]
    header[124:136] = b"%011o\0" % size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    raw[offset:offset + 512] = header
    path.write_bytes(bytes(raw))


def cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


# --------------------------------------------------------------------------- the sandbox


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (links not followed): kind, and size and SHA-256 of files."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in [*dirnames, *filenames]:
            path = Path(dirpath, entry)
            mode = path.lstat().st_mode
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                state[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                state[rel] = ("dir",)
            elif stat.S_ISREG(mode):
                state[rel] = ("file", path.stat().st_size, sha256(path.read_bytes()))
            else:
                state[rel] = ("special", stat.S_IFMT(mode))
    return state


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """What differs between two tree states, one line per path."""
    return sorted(
        [f"appeared: {p}" for p in after.keys() - before.keys()]
        + [f"vanished: {p}" for p in before.keys() - after.keys()]
        + [f"changed: {p}" for p in before.keys() & after.keys() if before[p] != after[p]]
    )


@dataclass
class Sandbox:
    """One test's observable world: everything lives under ``root`` (pytest's tmp_path)."""

    root: Path
    archives: Path  # where the hostile archive is written
    outside: Path  # a sibling folder an escape would write into
    tmp: Path  # TMPDIR: the package's temporary extraction folders
    cwd: Path  # the working directory (MLflow's relative defaults land here)
    registry_uri: str
    base: list[Member]
    request: pytest.FixtureRequest

    def tree(self) -> dict[str, tuple]:
        return tree_state(self.root)

    @contextlib.contextmanager
    def unchanged(self) -> Iterator[None]:
        """Assert that nothing under ``root`` was added, removed or modified in the block."""
        before = self.tree()
        yield
        found = changes(before, self.tree())
        assert found == [], "\n".join(found)

    def pack(self, container: str, members: list[Member]) -> Path:
        return pack(self.archives, container, members)

    def bomb(self, kind: str) -> Path:
        built = self.request.getfixturevalue("bombs")[kind]
        path = self.archives / built.name
        shutil.copyfile(built, path)
        return path


def write_model_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "MLmodel").write_text(
        "artifact_path: model\nflavors:\n  python_function:\n    loader_module: demo\n"
    )
    (root / "weights.bin").write_bytes(random.Random(20240601).randbytes(2048))
    (root / "notes.txt").write_text("a small model, written by hand for hostile tests\n")
    return root


@pytest.fixture(scope="module")
def base_archive(tmp_path_factory) -> Path:
    """A valid archive written by the package's own writer (no MLflow server involved)."""
    root = tmp_path_factory.mktemp("base")
    model_dir = write_model_dir(root / "src" / "model")
    snapshot = Snapshot(
        model_dir=model_dir,
        mlmodel={"artifact_path": "model", "flavors": {"python_function": {}}},
        registered_model=RegisteredModelInfo(name=MODEL_NAME),
        model_version=ModelVersionInfo(version="1"),
    )
    target = root / "base.zip"
    archive.write_archive(snapshot, layouts.get_layout("mlflow"),
                          containers.get_container("zip"), location.resolve(target),
                          show_progress=False)
    return target


@pytest.fixture(scope="module")
def base_members(base_archive) -> list[Member]:
    """The base archive's members in order, ``checksum.txt`` left out (``sealed`` adds it)."""
    with zipfile.ZipFile(base_archive) as handle:
        return [Member(info.filename, handle.read(info)) for info in handle.infolist()
                if info.filename != CHECKSUM_NAME]


@pytest.fixture(scope="module")
def template_registry(tmp_path_factory) -> Path:
    """An empty, migrated SQLite registry, copied for each test (migrating takes seconds)."""
    db = tmp_path_factory.mktemp("registry-template") / "registry.db"
    assert registry_census(f"sqlite:///{db}") == EMPTY_REGISTRY
    return db


@pytest.fixture
def sandbox(tmp_path, monkeypatch, base_members, template_registry, request) -> Sandbox:
    folders = {name: tmp_path / name for name in ("sandbox", "outside", "tmp", "cwd", "registry")}
    for folder in folders.values():
        folder.mkdir()
    (folders["outside"] / "secret.txt").write_bytes(SECRET)
    db = folders["registry"] / "registry.db"
    shutil.copyfile(template_registry, db)
    monkeypatch.setenv("TMPDIR", str(folders["tmp"]))
    monkeypatch.setattr(tempfile, "tempdir", str(folders["tmp"]))
    monkeypatch.chdir(folders["cwd"])
    return Sandbox(tmp_path, folders["sandbox"], folders["outside"], folders["tmp"],
                   folders["cwd"], f"sqlite:///{db}", list(base_members), request)


# --------------------------------------------------------------------------- compression bombs


class Zeros:
    """A readable stream of ``size`` zero bytes, produced on demand."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size is None or size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory, base_members) -> dict[str, Path]:
    """The base archive plus 300 MiB of zeros, deflated, as a zip and a tar.gz, built streaming.

    ``checksum.txt`` covers the zeros too: the archives are valid, so only the read limits can
    refuse them.
    """
    folder = tmp_path_factory.mktemp("bombs")
    digest = hashlib.sha256()
    for _ in range(BOMB_MIB):
        digest.update(bytes(MIB))
    files = {m.name: sha256(m.data) for m in base_members}
    files[BOMB_NAME] = digest.hexdigest()
    checksums = checksum_text(files)

    zip_path = folder / "bomb.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as handle:
        for member in base_members:
            handle.writestr(member.name, member.data)
        with handle.open(BOMB_NAME, "w") as sink:
            for _ in range(BOMB_MIB):
                sink.write(bytes(MIB))
        handle.writestr(CHECKSUM_NAME, checksums)

    tgz_path = folder / "bomb.tar.gz"
    with tarfile.open(tgz_path, "w:gz", compresslevel=9, format=tarfile.PAX_FORMAT) as handle:
        for member in [*base_members, Member(BOMB_NAME, b"")]:
            info = tarfile.TarInfo(member.name)
            if member.name == BOMB_NAME:
                info.size = BOMB_MIB * MIB
                handle.addfile(info, Zeros(info.size))
            else:
                info.size = len(member.data)
                handle.addfile(info, io.BytesIO(member.data))
        info = tarfile.TarInfo(CHECKSUM_NAME)
        info.size = len(checksums)
        handle.addfile(info, io.BytesIO(checksums))
    return {"zip": zip_path, "tar.gz": tgz_path}


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """No file this process writes may grow past ``limit`` bytes: a write past it fails with
    EFBIG (an OSError) instead of killing the process, as SIGXFSZ is ignored meanwhile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    """A hostile archive: how to build it, the error it must raise and what that must say.

    ``parts`` are substrings of the one-line message (the entry and the rule); ``{outside}``
    stands for the sandbox's outside folder.
    """

    id: str
    build: Callable[[Sandbox], Path]
    error: type[ArchiveError]
    parts: tuple[str, ...]

    def expected_parts(self, sandbox: Sandbox) -> list[str]:
        return [part.replace("{outside}", str(sandbox.outside)) for part in self.parts]


CASES: list[Case] = []


def hostile(error: type[ArchiveError], *parts: str):
    """Register the decorated builder as a case named after it."""

    def register(build: Callable[[Sandbox], Path]) -> Callable[[Sandbox], Path]:
        CASES.append(Case(build.__name__.replace("_", "-"), build, error, parts))
        return build

    return register


def with_metadata(sb: Sandbox, edit: Callable[[dict], object]) -> list[Member]:
    """The base members with ``mlflow-archive.json`` replaced by ``edit`` applied to its data."""
    members = []
    for member in sb.base:
        if member.name == METADATA_NAME:
            document = json.loads(member.data)
            edited = edit(document)
            document = document if edited is None else edited
            member = replace(member, data=json.dumps(document).encode())
        members.append(member)
    return members


def without(members: list[Member], name: str) -> list[Member]:
    return [m for m in members if m.name != name]


SLIP = "../../../outside/escaped.txt"  # from the staging folder up to the sandbox's root
BACKSLASH_SLIP = "..\\..\\..\\outside\\escaped.txt"
DOTDOT_RULE = "'..', '.' or empty path segment"
LONG_NAME = "model/" + "a" * 300
DEEP_NAME = "model/" + "/".join(["d" * 200] * 25) + "/deep.txt"


# -- zip slip


@hostile(UnsafeArchiveError, repr(SLIP), DOTDOT_RULE)
def zip_slip_parent_segments(sb):
    return sb.pack("zip", sealed([*sb.base, Member(SLIP, b"escaped")]))


@hostile(UnsafeArchiveError, "'{outside}/escaped.txt'", "absolute path")
def zip_slip_absolute_path(sb):
    return sb.pack("zip", sealed([*sb.base, Member(f"{sb.outside}/escaped.txt", b"escaped")]))


@hostile(UnsafeArchiveError, repr(BACKSLASH_SLIP), "backslash in name")
def zip_slip_backslashes(sb):
    return sb.pack("zip", sealed([*sb.base, Member(BACKSLASH_SLIP, b"escaped")]))


@hostile(UnsafeArchiveError, repr(SLIP), DOTDOT_RULE)
def tar_slip_parent_segments(sb):
    return sb.pack("tar", sealed([*sb.base, Member(SLIP, b"escaped")]))


@hostile(UnsafeArchiveError, "'{outside}/escaped.txt'", "absolute path")
def tar_gz_slip_absolute_path(sb):
    return sb.pack("tar.gz", sealed([*sb.base, Member(f"{sb.outside}/escaped.txt", b"escaped")]))


@hostile(UnsafeArchiveError, repr(BACKSLASH_SLIP), "backslash in name")
def tar_slip_backslashes(sb):
    return sb.pack("tar", sealed([*sb.base, Member(BACKSLASH_SLIP, b"escaped")]))


@hostile(UnsafeArchiveError, "'../../../outside/made-by-archive'", DOTDOT_RULE)
def tar_directory_member_escaping(sb):
    return sb.pack("tar", sealed([*sb.base, Member("../../../outside/made-by-archive",
                                                   kind="dir")]))


# -- links


@hostile(UnsafeArchiveError, "'model/out'", "link")
def tar_symlink_to_an_outside_folder_then_a_file_through_it(sb):
    return sb.pack("tar", sealed([*sb.base, Member("model/out", kind="symlink",
                                                   target=str(sb.outside)),
                                  Member("model/out/escaped.txt", b"escaped")]))


@hostile(UnsafeArchiveError, "'model/up'", "link")
def tar_symlink_to_the_parent_then_a_file_through_it(sb):
    return sb.pack("tar", sealed([*sb.base, Member("model/up", kind="symlink", target=".."),
                                  Member("model/up/up/escaped.txt", b"escaped")]))


@hostile(UnsafeArchiveError, "'model/out'", "link")
def tar_gz_symlink_climbing_out_then_a_file_through_it(sb):
    return sb.pack("tar.gz", sealed([*sb.base, Member("model/out", kind="symlink",
                                                      target="../../../../outside"),
                                     Member("model/out/escaped.txt", b"escaped")]))


@hostile(UnsafeArchiveError, "'model/hard'", "link")
def tar_hardlink_to_a_file_outside(sb):
    return sb.pack("tar", sealed([*sb.base, Member("model/hard", kind="hardlink",
                                                   target=str(sb.outside / "secret.txt"))]))


@hostile(UnsafeArchiveError, "'model/hard'", "link")
def tar_hardlink_outside_then_a_write_through_it(sb):
    return sb.pack("tar", sealed([*sb.base, Member("model/hard", kind="hardlink",
                                                   target="../../../outside/secret.txt"),
                                  Member("model/hard", b"overwritten through the link")]))


@hostile(UnsafeArchiveError, "'model/out'", "symbolic link")
def zip_symlink_to_an_outside_folder_then_a_file_through_it(sb):
    return sb.pack("zip", sealed([*sb.base, Member("model/out", kind="symlink",
                                                   target=str(sb.outside)),
                                  Member("model/out/escaped.txt", b"escaped")]))


@hostile(UnsafeArchiveError, "'model/out'", "symbolic link")
def folder_with_a_symlink_to_an_outside_folder(sb):
    return sb.pack("folder", sealed([*sb.base, Member("model/out", kind="symlink",
                                                      target=str(sb.outside))]))


# -- special files


@hostile(UnsafeArchiveError, "'model/pipe'", "special file")
def tar_fifo_member(sb):
    return sb.pack("tar", sealed([*sb.base, Member("model/pipe", kind="fifo")]))


@hostile(UnsafeArchiveError, "'model/null'", "special file")
def tar_character_device_member(sb):
    return sb.pack("tar", sealed([*sb.base, Member("model/null", kind="chardev")]))


@hostile(UnsafeArchiveError, "'model/disk'", "special file")
def tar_block_device_member(sb):
    return sb.pack("tar", sealed([*sb.base, Member("model/disk", kind="blockdev")]))


# -- duplicates and collisions


@hostile(UnsafeArchiveError, repr(MLMODEL), "duplicate entry")
def zip_duplicate_names(sb):
    return sb.pack("zip", sealed([*sb.base, Member(MLMODEL, b"flavors: {}\n")]))


@hostile(UnsafeArchiveError, repr(MLMODEL), "duplicate entry")
def tar_duplicate_names(sb):
    return sb.pack("tar", sealed([*sb.base, Member(MLMODEL, b"flavors: {}\n")]))


@hostile(UnsafeArchiveError, "'model/mlmodel'", f"same file as {MLMODEL!r}")
def zip_names_differing_only_by_case(sb):
    return sb.pack("zip", sealed([*sb.base, Member("model/mlmodel", b"flavors: {}\n")]))


@hostile(UnsafeArchiveError, "'model/mlmodel'", f"same file as {MLMODEL!r}")
def tar_names_differing_only_by_case(sb):
    return sb.pack("tar", sealed([*sb.base, Member("model/mlmodel", b"flavors: {}\n")]))


@hostile(UnsafeArchiveError, ascii(CAFE_NFD), f"same file as {ascii(CAFE_NFC)}")
def zip_nfc_and_nfd_spellings_of_one_name(sb):
    return sb.pack("zip", sealed([*sb.base, Member(CAFE_NFC, b"composed"),
                                  Member(CAFE_NFD, b"decomposed")]))


@hostile(UnsafeArchiveError, ascii(CAFE_NFD), f"same file as {ascii(CAFE_NFC)}")
def tar_nfc_and_nfd_spellings_of_one_name(sb):
    return sb.pack("tar", sealed([*sb.base, Member(CAFE_NFC, b"composed"),
                                  Member(CAFE_NFD, b"decomposed")]))


# -- names the file system cannot hold


@hostile(UnsafeArchiveError, repr(LONG_NAME))
def zip_name_longer_than_a_file_name_may_be(sb):
    return sb.pack("zip", sealed([*sb.base, Member(LONG_NAME, b"long")]))


@hostile(UnsafeArchiveError, repr(DEEP_NAME))
def zip_path_longer_than_a_path_may_be(sb):
    return sb.pack("zip", sealed([*sb.base, Member(DEEP_NAME, b"deep")]))


# -- compression bombs (the base archive plus 300 MiB of zeros; checksums consistent)


@hostile(UnsafeArchiveError, repr(BOMB_NAME), RATIO_RULE)
def zip_bomb(sb):
    return sb.bomb("zip")


@hostile(UnsafeArchiveError, repr(BOMB_NAME), RATIO_RULE)
def tar_gz_bomb(sb):
    return sb.bomb("tar.gz")


# -- headers that lie


@hostile(CorruptArchiveError, WEIGHTS)
def zip_central_directory_understating_a_size(sb):
    path = sb.pack("zip", sealed(sb.base))
    patch_zip_entry(path, WEIGHTS, size=1024)
    return path


@hostile(IntegrityError, WEIGHTS, "differs from checksum.txt")
def zip_size_and_crc_lying_together(sb):
    path = sb.pack("zip", sealed(sb.base))
    weights = next(m.data for m in sb.base if m.name == WEIGHTS)
    patch_zip_entry(path, WEIGHTS, size=1024, crc=zlib.crc32(weights[:1024]))
    return path


@hostile(CorruptArchiveError, MLMODEL)
def zip_entry_claiming_encryption(sb):
    path = sb.pack("zip", sealed(sb.base))
    patch_zip_entry(path, MLMODEL, flags=0x1)
    return path


@hostile(CorruptArchiveError, MLMODEL)
def zip_entry_claiming_strong_encryption(sb):
    path = sb.pack("zip", sealed(sb.base))
    patch_zip_entry(path, MLMODEL, flags=0x41)
    return path


@hostile(CorruptArchiveError, MLMODEL)
def zip_entry_with_an_unknown_compression_method(sb):
    path = sb.pack("zip", sealed(sb.base))
    patch_zip_entry(path, MLMODEL, method=99)
    return path


@hostile(CorruptArchiveError, "hostile.zip")
def zip_entry_needing_a_future_zip_version(sb):
    path = sb.pack("zip", sealed(sb.base))
    patch_zip_entry(path, MLMODEL, version_needed=99)
    return path


@hostile(CorruptArchiveError, "hostile.zip")
def zip_central_name_flagged_utf8_that_is_not(sb):
    path = sb.pack("zip", sealed([*sb.base, Member("model/cafX.txt", b"not utf-8")]))
    patch_zip_entry(path, "model/cafX.txt", flags=0x800)
    path.write_bytes(path.read_bytes().replace(b"model/cafX.txt", b"model/caf\xff.txt"))
    return path


@hostile(CorruptArchiveError, "model/cafX.txt")
def zip_local_name_flagged_utf8_that_is_not(sb):
    path = sb.pack("zip", sealed([*sb.base, Member("model/cafX.txt", b"not utf-8")]))
    patch_zip_entry(path, "model/cafX.txt", central=False, flags=0x800)
    path.write_bytes(path.read_bytes().replace(b"model/cafX.txt", b"model/caf\xff.txt", 1))
    return path


@hostile(IntegrityError, MLMODEL, "differs from checksum.txt")
def tar_header_understating_a_size(sb):
    path = sb.pack("tar", sealed(sb.base))
    patch_tar_size(path, MLMODEL, 10)
    return path


# tarfile's stream mode takes an unreadable header after the first as the end of the archive,
# so without a check of its own the reader reports the members it lost, not the damage.
@hostile(CorruptArchiveError, "truncated or damaged")
def tar_header_understating_a_size_by_whole_blocks(sb):
    path = sb.pack("tar", sealed(sb.base))
    patch_tar_size(path, WEIGHTS, 1024)
    return path


@hostile(CorruptArchiveError, WEIGHTS, "truncated or damaged")
def tar_header_overstating_a_size(sb):
    path = sb.pack("tar", sealed(sb.base))
    patch_tar_size(path, WEIGHTS, 64 * 1024)
    return path


# -- truncated and garbage files


@hostile(CorruptArchiveError, "hostile.zip", "truncated or damaged")
def truncated_zip(sb):
    return cut(sb.pack("zip", sealed(sb.base)), 0.6)


@hostile(CorruptArchiveError, "truncated or damaged")
def truncated_tar(sb):
    return cut(sb.pack("tar", sealed(sb.base)), 0.3)


@hostile(CorruptArchiveError, "truncated or damaged")
def tar_cut_between_two_members(sb):
    path = sb.pack("tar", sealed(sb.base))
    with tarfile.open(path) as handle:
        boundary = handle.getmember(METADATA_NAME).offset
    path.write_bytes(path.read_bytes()[:boundary])
    return path


@hostile(CorruptArchiveError, "truncated or damaged")
def truncated_tar_gz(sb):
    return cut(sb.pack("tar.gz", sealed(sb.base)), 0.6)


@hostile(NotAnArchiveError, "hostile.zip", "not an archive")
def garbage_bytes(sb):
    path = sb.archives / "hostile.zip"
    path.write_bytes(random.Random(1).randbytes(4096))
    return path


@hostile(NotAnArchiveError, "hostile.zip", "not an archive")
def empty_file(sb):
    path = sb.archives / "hostile.zip"
    path.write_bytes(b"")
    return path


@hostile(CorruptArchiveError, "hostile.zip", "truncated or damaged")
def zip_magic_then_garbage(sb):
    path = sb.archives / "hostile.zip"
    path.write_bytes(b"PK\x03\x04" + random.Random(2).randbytes(4096))
    return path


@hostile(CorruptArchiveError, "truncated or damaged")
def gzip_magic_then_garbage(sb):
    path = sb.archives / "hostile.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + random.Random(3).randbytes(4096))
    return path


# -- malformed mlflow-archive.json


def _replace_metadata(sb: Sandbox, data: bytes) -> list[Member]:
    return [replace(m, data=data) if m.name == METADATA_NAME else m for m in sb.base]


@hostile(CorruptArchiveError, METADATA_NAME, "not valid JSON")
def metadata_that_is_not_json(sb):
    return sb.pack("zip", sealed(_replace_metadata(sb, b'{"format": "mlflow-archive",')))


@hostile(CorruptArchiveError, METADATA_NAME, "the top level is not an object")
def metadata_that_is_a_list(sb):
    return sb.pack("zip", sealed(_replace_metadata(sb, b"[]")))


@hostile(CorruptArchiveError, METADATA_NAME, "RegisteredModelInfo section is not an object")
def metadata_section_of_the_wrong_type(sb):
    return sb.pack("zip", sealed(with_metadata(sb, lambda d: d.update(registered_model="x"))))


@hostile(CorruptArchiveError, METADATA_NAME, "RunInfo.params should be a dict")
def metadata_field_of_the_wrong_type(sb):
    run = {"run_id": "r1", "params": ["C", "0.5"]}
    return sb.pack("zip", sealed(with_metadata(sb, lambda d: d.update(run=run))))


@hostile(CorruptArchiveError, METADATA_NAME, "'mlmodel' is missing or not an object")
def metadata_mlmodel_that_is_a_list(sb):
    return sb.pack("zip", sealed(with_metadata(sb, lambda d: d.update(mlmodel=[]))))


@hostile(CorruptArchiveError, METADATA_NAME, "'schema_version' is not a positive integer")
def metadata_schema_version_as_text(sb):
    return sb.pack("zip", sealed(with_metadata(sb, lambda d: d.update(schema_version="1"))))


@hostile(CorruptArchiveError, METADATA_NAME, "a field has the wrong shape")
def metadata_file_list_without_sizes(sb):
    files = [{"path": MLMODEL}]
    return sb.pack("zip", sealed(with_metadata(sb, lambda d: d.update(files=files))))


@hostile(UnsafeArchiveError, "{outside}/stolen")
def metadata_model_path_pointing_outside(sb):
    stolen = sb.outside / "stolen"
    stolen.mkdir()
    (stolen / "MLmodel").write_text("flavors: {}\n")
    (stolen / "credentials").write_bytes(SECRET)
    return sb.pack("zip", sealed(with_metadata(sb, lambda d: d.update(model_path=str(stolen)))))


@hostile(UnsafeArchiveError, "../../outside/stolen")
def metadata_model_path_climbing_out(sb):
    # The archive is extracted into TMPDIR/mlflow-archive-*/: two levels up is the sandbox root.
    stolen = sb.outside / "stolen"
    stolen.mkdir()
    (stolen / "MLmodel").write_text("flavors: {}\n")
    (stolen / "credentials").write_bytes(SECRET)
    edit = lambda d: d.update(model_path="../../outside/stolen")  # noqa: E731
    return sb.pack("zip", sealed(with_metadata(sb, edit)))


@hostile(CorruptArchiveError, "no model/MLmodel")
def archive_without_model_mlmodel(sb):
    return sb.pack("zip", sealed(without(sb.base, MLMODEL)))


@hostile(UnsupportedError, METADATA_NAME)
def archive_without_metadata(sb):
    return sb.pack("tar", sealed(without(sb.base, METADATA_NAME)))


@hostile(IntegrityError, WEIGHTS, f"differs from its hash in {METADATA_NAME}")
def metadata_file_hash_disagreeing_with_the_file(sb):
    def edit(document):
        for record in document["files"]:
            if record["path"] == WEIGHTS:
                record["sha256"] = "0" * 64

    return sb.pack("zip", sealed(with_metadata(sb, edit)))


# -- malformed or disagreeing checksum.txt


def _with_checksum(sb: Sandbox, edit: Callable[[bytes], bytes]) -> list[Member]:
    *members, checksum = sealed(sb.base)
    return [*members, replace(checksum, data=edit(checksum.data))]


@hostile(CorruptArchiveError, CHECKSUM_NAME, "line 2 is not '<sha256>  <path>'")
def checksum_with_a_malformed_line(sb):
    def edit(data):
        first, rest = data.split(b"\n", 1)
        return first + b"\nnot a checksum line\n" + rest

    return sb.pack("zip", _with_checksum(sb, edit))


@hostile(CorruptArchiveError, CHECKSUM_NAME, "not UTF-8")
def checksum_that_is_not_utf8(sb):
    return sb.pack("zip", _with_checksum(sb, lambda data: data + b"\xff\xfe\n"))


@hostile(CorruptArchiveError, CHECKSUM_NAME, f"lists {MLMODEL!r} twice")
def checksum_listing_a_path_twice(sb):
    def edit(data):
        [line] = [line for line in data.split(b"\n") if line.endswith(MLMODEL.encode())]
        return data + line + b"\n"

    return sb.pack("zip", _with_checksum(sb, edit))


@hostile(IntegrityError, CHECKSUM_NAME, "missing")
def checksum_missing(sb):
    return sb.pack("zip", sb.base)


@hostile(IntegrityError, MLMODEL, "content differs from checksum.txt")
def checksum_disagreeing_with_a_file(sb):
    *members, checksum = sealed(sb.base)
    tampered = [replace(m, data=m.data + b"# tampered\n") if m.name == MLMODEL else m
                for m in members]
    return sb.pack("tar.gz", [*tampered, checksum])


@hostile(IntegrityError, "model/extra.txt", "extra file not listed in checksum.txt")
def file_not_listed_in_checksum(sb):
    return sb.pack("zip", [*sealed(sb.base), Member("model/extra.txt", b"smuggled")])


@hostile(IntegrityError, "../../outside/secret.txt", "missing (listed in checksum.txt)")
def checksum_listing_a_file_outside_the_archive(sb):
    line = f"{sha256(SECRET)}  ../../outside/secret.txt\n".encode()
    return sb.pack("zip", _with_checksum(sb, lambda data: data + line))


CASE_IDS = [case.id for case in CASES]


def by_id(*ids: str) -> list[Case]:
    return [case for case in CASES if case.id in ids]


# --------------------------------------------------------------------------- sanity of the kit


def test_sealed_base_members_reproduce_the_writers_checksum(base_archive, base_members):
    with zipfile.ZipFile(base_archive) as handle:
        written = handle.read(CHECKSUM_NAME)
    assert sealed(base_members)[-1].data == written


@pytest.mark.parametrize("container", ["zip", "tar", "tar.gz", "folder"])
def test_base_archive_repacked_by_these_builders_imports(sandbox, container):
    """The hostile variants differ from an archive that imports only by their one change."""
    path = sandbox.pack(container, sealed(sandbox.base))
    result = import_archive(path, tracking_uri=sandbox.registry_uri)
    assert (result.name, result.version) == (MODEL_NAME, "1")


# --------------------------------------------------------------------------- every case, by API


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_import_refuses_with_the_cases_own_error_and_message(sandbox, case):
    path = case.build(sandbox)
    with pytest.raises(case.error) as caught:
        import_archive(path, tracking_uri=sandbox.registry_uri)
    message = str(caught.value)
    assert "\n" not in message
    missing = [part for part in case.expected_parts(sandbox) if part not in message]
    assert missing == [], message


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_refused_import_leaves_every_file_as_it_was(sandbox, case):
    path = case.build(sandbox)
    with sandbox.unchanged(), contextlib.suppress(ArchiveError):
        import_archive(path, tracking_uri=sandbox.registry_uri)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_refused_import_registers_nothing(sandbox, case):
    path = case.build(sandbox)
    with contextlib.suppress(ArchiveError):
        import_archive(path, tracking_uri=sandbox.registry_uri)
    assert registry_census(sandbox.registry_uri) == EMPTY_REGISTRY


# verify checks files against checksum.txt (and the metadata's file list when there is one): an
# archive without mlflow-archive.json whose checksums match is intact in that sense, as foreign
# layouts are, even though import cannot register it.
VERIFY_CASES = [case for case in CASES if case.id != "archive-without-metadata"]


@pytest.mark.parametrize("case", VERIFY_CASES, ids=[case.id for case in VERIFY_CASES])
def test_verify_never_reports_a_hostile_archive_as_ok(sandbox, case):
    path = case.build(sandbox)
    try:
        report = verify_archive(path)
    except ArchiveError:
        return  # refused outright, as import refuses it
    assert (report.ok, bool(report.problems)) == (False, True), report


def test_verify_of_a_zip_with_one_unreadable_entry_reports_that_entry_once(sandbox):
    """verify reports every problem, one line each: an entry whose bytes cannot be read is one
    problem, not also one of the files mlflow-archive.json lists as missing."""
    path = zip_central_directory_understating_a_size(sandbox)
    report = verify_archive(path)
    assert len(report.problems) == 1 and WEIGHTS in report.problems[0], report.problems


def test_verify_of_a_zip_with_one_broken_local_header_still_checks_the_other_entries(sandbox):
    """An entry that cannot even be opened must not end the scan: the entries after it are
    still read and checked, so every problem reported is about that entry."""
    path = sandbox.pack("zip", sealed(sandbox.base))
    with zipfile.ZipFile(path) as handle:
        broken = handle.infolist()[1]  # not the first: its signature tells a zip from a tar
    raw = bytearray(path.read_bytes())
    raw[broken.header_offset:broken.header_offset + 4] = b"PK\x00\x00"
    path.write_bytes(bytes(raw))
    report = verify_archive(path)
    assert [p for p in report.problems if not p.startswith(f"{broken.filename}:")] == []


def test_unicode_collision_message_tells_the_two_names_apart(sandbox):
    """NFC and NFD spellings render alike: printed as they are, the message reads as if one
    name were listed twice, so it must show what sets them apart."""
    path = zip_nfc_and_nfd_spellings_of_one_name(sandbox)
    with pytest.raises(UnsafeArchiveError) as caught:
        import_archive(path, tracking_uri=sandbox.registry_uri)
    as_read = unicodedata.normalize("NFC", str(caught.value))
    assert f"{CAFE_NFC!r}: same file as {CAFE_NFC!r}" not in as_read, str(caught.value)


# --------------------------------------------------------------------------- the CLI, a few cases

CLI_VERIFY_CASES = by_id(
    "zip-slip-backslashes",
    "tar-symlink-to-an-outside-folder-then-a-file-through-it",
    "tar-character-device-member",
    "zip-nfc-and-nfd-spellings-of-one-name",
    "zip-entry-claiming-encryption",
)


@pytest.mark.parametrize("case", CLI_VERIFY_CASES, ids=[c.id for c in CLI_VERIFY_CASES])
def test_cli_verify_refuses_with_one_error_line_naming_the_entry(sandbox, case):
    path = case.build(sandbox)
    proc = cli("verify", str(path), cwd=sandbox.cwd, env=child_env(TMPDIR=str(sandbox.tmp)))
    line = assert_user_error(proc)
    missing = [part for part in case.expected_parts(sandbox) if part not in line]
    assert missing == [], line


def test_cli_import_refuses_a_zip_slip_with_one_error_line(sandbox):
    path = zip_slip_parent_segments(sandbox)
    proc = cli("import", str(path), "--tracking-uri", sandbox.registry_uri, "-q",
               cwd=sandbox.cwd, env=child_env(TMPDIR=str(sandbox.tmp)))
    line = assert_user_error(proc)
    assert repr(SLIP) in line and DOTDOT_RULE in line, line


# --------------------------------------------------------------------------- limits


def test_file_size_limit_turns_a_larger_write_into_an_oserror(tmp_path):
    """The guard the bomb tests rely on: a file written past the limit fails, visibly."""
    with file_size_limit(MIB), pytest.raises(OSError, match="too large"):
        (tmp_path / "big").write_bytes(bytes(2 * MIB))


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_bomb_refusal_writes_no_file_larger_than_the_ratio_allows(sandbox, kind):
    """Counted on bytes produced: the refusal comes once 1000 x the archive's size is out,
    one chunk at most past it, before the 300 MiB are all inflated and written."""
    path = sandbox.bomb(kind)
    allowed = int(ReadLimits().max_ratio * path.stat().st_size) + CHUNK_SIZE
    assert allowed < BOMB_MIB * MIB, "the bomb must expand past what the ratio allows"
    with file_size_limit(allowed), pytest.raises(UnsafeArchiveError, match=RATIO_RULE):
        import_archive(path, tracking_uri=sandbox.registry_uri)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_bomb_under_a_small_size_limit_stops_after_that_many_bytes(sandbox, kind):
    path = sandbox.bomb(kind)
    limits = ReadLimits(max_total_bytes=8 * MIB)
    with (
        file_size_limit(8 * MIB + CHUNK_SIZE),
        pytest.raises(UnsafeArchiveError, match=f"holds more than {8 * MIB} bytes"),
    ):
        import_archive(path, tracking_uri=sandbox.registry_uri, limits=limits)


def test_raised_ratio_lets_the_compressible_archive_through(sandbox):
    report = verify_archive(sandbox.bomb("tar.gz"), limits=ReadLimits(max_ratio=1_000_000))
    assert (report.ok, report.problems) == (True, [])


def many_files(sb: Sandbox, count: int) -> list[Member]:
    extra = [Member(f"model/extra/{i:03d}.txt", f"file {i}\n".encode()) for i in range(count)]
    return sealed([*sb.base, *extra])


def test_archive_with_more_files_than_max_members_is_refused(sandbox):
    members = many_files(sandbox, 40)
    path = sandbox.pack("zip", members)
    # a zip's central directory lists them all: refused before any entry is read
    with pytest.raises(UnsafeArchiveError,
                       match=f"it lists {len(members)} files, more than 10 files"):
        import_archive(path, tracking_uri=sandbox.registry_uri, limits=ReadLimits(max_members=10))


def test_raised_max_members_lets_many_files_through(sandbox):
    path = sandbox.pack("tar", many_files(sandbox, 40))
    import_archive(path, tracking_uri=sandbox.registry_uri, limits=ReadLimits(max_members=100))
    assert registry_census(sandbox.registry_uri)["model_versions"] == 1
