"""``requirements.txt``: the model's requirements pinned to exact versions on export, and
the check that each line of a package's file pins one version."""

from __future__ import annotations

import importlib.metadata
import re

from packaging.requirements import InvalidRequirement, Requirement

from mlflow_archive_plugin.errors import UnsupportedError
from mlflow_archive_plugin.formats.portable.files import REQUIREMENTS_FILE, read_text
from mlflow_archive_plugin.snapshot import Snapshot

# Options that pull other files into a requirements file or install from a source tree:
# nothing a pinned, self-contained requirements.txt can hold.
_FILE_OPTIONS = ("-r", "--requirement", "-c", "--constraint", "-e", "--editable")
_INLINE_COMMENT = re.compile(r"\s+#.*$")
_PINNING_OPERATORS = ("==", "===")


def pinned_requirements(snapshot: Snapshot) -> str:
    """The model's ``requirements.txt`` with every requirement pinned with ``==``.

    A requirement the model left open is pinned to the version installed here, the one the
    export ran with; one that is not installed here, or installed at a version outside its
    range, is a one-line error naming it.
    """
    source = snapshot.model_dir / REQUIREMENTS_FILE
    if not source.is_file():
        mlflow_version = str(snapshot.mlmodel.get("mlflow_version") or "") or _installed("mlflow")
        return f"mlflow=={mlflow_version}\n"
    lines = []
    for number, raw in enumerate(read_text(source).splitlines(), start=1):
        line = _INLINE_COMMENT.sub("", raw).strip()
        if not line or line.startswith("#"):
            continue
        where = f"the model's {REQUIREMENTS_FILE} line {number} ({line!r})"
        if line.startswith("-"):
            if line.split()[0].split("=")[0] in _FILE_OPTIONS:
                raise UnsupportedError(f"{where} refers to other files, which a portable "
                                       "package cannot pin; log the model with its "
                                       "requirements listed one by one")
            lines.append(line)  # an index option, not a requirement
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise UnsupportedError(f"{where} is not a valid requirement ({exc})") from exc
        lines.append(line if _is_pinned(requirement) else _pin(requirement, where))
    return "".join(f"{line}\n" for line in lines)


def _is_pinned(requirement: Requirement) -> bool:
    specifiers = list(requirement.specifier)
    return (
        requirement.url is None
        and len(specifiers) == 1
        and specifiers[0].operator in _PINNING_OPERATORS
        and "*" not in specifiers[0].version
    )


def _pin(requirement: Requirement, where: str) -> str:
    if requirement.marker is not None and not requirement.marker.evaluate():
        raise UnsupportedError(f"{where} is not pinned and applies only where "
                               f"'{requirement.marker}' holds, not here, so it cannot be pinned "
                               "to an installed version; pin it when logging the model")
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        raise UnsupportedError(f"{where} is not pinned, and {requirement.name} is not installed "
                               "here to pin it to; install it, or log the model with "
                               f"{requirement.name}==<version>, and export again") from None
    if not requirement.specifier.contains(version, prereleases=True):
        raise UnsupportedError(f"{where} is not pinned, and the installed {requirement.name} "
                               f"{version} is outside its range; install a matching version "
                               "and export again")
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    marker = f"; {requirement.marker}" if requirement.marker is not None else ""
    return f"{requirement.name}{extras}=={version}{marker}"


def _installed(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise UnsupportedError(f"the model has no {REQUIREMENTS_FILE} and {name} is not "
                               "installed here to pin it to; log the model again") from None


def requirement_problems(text: str) -> list[str]:
    """One line for every requirement in ``text`` that is not pinned to one version."""
    problems = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _INLINE_COMMENT.sub("", raw).strip()
        if not line or line.startswith("#"):
            continue
        where = f"{REQUIREMENTS_FILE}: line {number} {line!r}"
        if line.startswith("-"):
            if line.split()[0].split("=")[0] in _FILE_OPTIONS:
                problems.append(f"{where} refers to other files; list pinned requirements "
                                "instead")
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            problems.append(f"{where} is not a valid requirement")
            continue
        if not _is_pinned(requirement):
            problems.append(f"{where} is not pinned to one version; write "
                            f"{requirement.name}==<version>")
    return problems
