"""The real BentoML for the compatibility tests (``tox -e bentoml``).

BentoML keeps its models in a store under ``$BENTOML_HOME/models/<name>/<version>/``
(default ``~/bentoml``). It reads ``BENTOML_HOME`` once, the first time anything asks its
dependency-injection container for the home or a store, and caches every path and store
derived from it for the life of the process: changing the variable later does nothing.
So there are two ways to give a test a store of its own, both here:

* in this process: ``use_bentoml_home(home)`` (and the ``bentoml_home`` fixture, which
  uses it) sets ``BENTOML_HOME`` and overrides the container's home, every path derived
  from it and both stores, then restores all of them. ``bentoml.models.*`` and
  ``bentoml.mlflow.*`` called without an explicit store use the overridden one. This is
  what BentoML's own pytest plugin does; it relies on ``BentoMLContainer``, internal to
  BentoML, which the tox env pins.
* in a child process: ``run_bentoml(code, home)`` runs Python code with ``BENTOML_HOME``
  set before BentoML is imported, as a user's program would; ``run_bentoml_cli(args,
  home)`` runs the ``bentoml`` command the same way. Slower (about 5 s to import
  ``bentoml.mlflow``), but needs nothing of BentoML's internals.

No traffic leaves the machine: BentoML's only phone-home is its usage tracking (an HTTPS
POST to its tracking host on model save and on serve), which ``BENTOML_DO_NOT_TRACK=True``
switches off; BentoML caches that answer, so it is set here before any BentoML call, and for
every child. Nothing else in BentoML's model store, export or import goes to the network
for local paths (BentoCloud is only reached by push/pull).

``from conftest import ...`` in this folder resolves to THIS module; the names it does not
define are looked up in ``tests/conftest.py`` (see tests/torchserve/conftest.py), so
``from conftest import unique`` works here as in ``tests/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Before anything imports BentoML: its do_not_track() answer is cached on first use.
os.environ["BENTOML_DO_NOT_TRACK"] = "True"

BENTOML_TIMEOUT = 300.0
RESULT_MARKER = "@@BENTOML-RESULT@@"

# --------------------------------------------------------------- the parent conftest's names

_PARENT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"
_parent: Any = None


def pytest_configure(config: pytest.Config) -> None:
    """Find the ``tests/conftest.py`` module pytest loaded (pytest keeps it as a plugin)."""
    global _parent
    # BentoML 1.4 builds its pathspec patterns with the "gitwildmatch" name, which
    # pathspec >= 1 deprecates: noise from BentoML's own code, not ours.
    config.addinivalue_line("filterwarnings", "ignore:GitWildMatchPattern:DeprecationWarning")
    for plugin in config.pluginmanager.get_plugins():
        source = getattr(plugin, "__file__", None)
        if source and Path(source).resolve() == _PARENT_CONFTEST:
            _parent = plugin
            return


def __getattr__(name: str) -> Any:
    # Module-level __getattr__ (PEP 562): only reached for names this module does not define.
    # pytest's own conftest variables and hooks are never forwarded, or tests/conftest.py's
    # collect_ignore would be read a second time relative to this folder.
    if (
        _parent is not None
        and not name.startswith(("_", "pytest_", "collect_ignore"))
        and hasattr(_parent, name)
    ):
        return getattr(_parent, name)
    raise AttributeError(f"module {__name__!r} ({__file__}) has no attribute {name!r}")


# --------------------------------------------------------------------------- environment


def _require_bentoml() -> None:
    try:
        import bentoml  # noqa: F401
    except ImportError:
        pytest.fail(
            "bentoml is not installed in this environment: run these tests with "
            "`tox -e bentoml` (or `make test`)",
            pytrace=False,
        )


def bentoml_env(home: Path, tmp_dir: Path | None = None) -> dict[str, str]:
    """The environment of a child that runs BentoML with store ``home``: this process's,
    with BENTOML_HOME set, every usage tracker off, and (if given) TMPDIR at ``tmp_dir``,
    where BentoML builds models and unpacks imports (a failed import leaves its
    ``bentoml-import-*`` folder behind)."""
    env = dict(os.environ)
    for var in ("BENTOML_CONFIG", "BENTOML_CONFIG_OPTIONS", "BENTOML_CLOUD_CONTEXT"):
        env.pop(var, None)
    env.update(
        BENTOML_HOME=str(home),
        BENTOML_DO_NOT_TRACK="True",
        DO_NOT_TRACK="true",
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONUNBUFFERED="1",
    )
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmp_dir)
    return env


# --------------------------------------------------------------------------- in this process


@contextlib.contextmanager
def use_bentoml_home(home: Path, *, tmp_dir: Path | None = None) -> Iterator[Path]:
    """Point BentoML in THIS process at the store under ``home`` (created), then restore
    what it pointed at before. Nestable. ``tmp_dir`` (created) also becomes the process's
    temporary directory meanwhile, so BentoML's scratch folders (``bentoml-model-*``,
    ``bentoml-import-*``, ``bentoml-export-*``) land there, not in /tmp."""
    _require_bentoml()
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore
    from bentoml._internal.utils.analytics import usage_stats

    home = Path(home).resolve()
    paths = {
        "bento_store_dir": home / "bentos",
        "model_store_dir": home / "models",
        "env_store_dir": home / "envs",
        "tmp_bento_store_dir": home / "tmp",
    }
    for path in (home, *paths.values()):
        path.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {
        "bentoml_home": str(home),
        **{name: str(path) for name, path in paths.items()},
        "result_store_file": str(home / "task_result.db"),
        "bento_store": BentoStore(paths["bento_store_dir"]),
        "model_store": ModelStore(paths["model_store_dir"]),
    }
    saved_env = {var: os.environ.get(var) for var in ("BENTOML_HOME", "BENTOML_DO_NOT_TRACK")}
    saved_tempdir = tempfile.tempdir
    with contextlib.ExitStack() as stack:
        for name, value in overrides.items():
            stack.enter_context(getattr(BentoMLContainer, name).patch(value))
        os.environ["BENTOML_HOME"] = str(home)
        os.environ["BENTOML_DO_NOT_TRACK"] = "True"
        usage_stats.do_not_track.cache_clear()
        if tmp_dir is not None:
            Path(tmp_dir).mkdir(parents=True, exist_ok=True)
            tempfile.tempdir = str(Path(tmp_dir).resolve())
        try:
            yield home
        finally:
            tempfile.tempdir = saved_tempdir
            for var, value in saved_env.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
            usage_stats.do_not_track.cache_clear()


def current_model_store_dir() -> Path:
    """The folder of the model store BentoML in this process uses now."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store.get()._path)


@pytest.fixture
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh, empty BENTOML_HOME that BentoML in this process uses for the whole test
    (``bentoml.models.import_model(...)``, ``bentoml.mlflow.load_model(tag)``, ...).
    BentoML's scratch folders go to a ``tmp`` folder beside it. Yields the home; its model
    store is ``home / "models"``."""
    base = tmp_path_factory.mktemp("bentoml")
    with use_bentoml_home(base / "home", tmp_dir=base / "tmp") as home:
        yield home


# --------------------------------------------------------------------------- child processes


@dataclass
class BentoRun:
    """What a child run of BentoML did. ``value``: what its code passed to ``emit()``."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    value: Any = None

    def describe(self) -> str:
        return (
            f"{' '.join(self.args)[:300]}\nexit {self.returncode}\n"
            f"--- stdout (last 4000 chars)\n{self.stdout[-4000:]}\n"
            f"--- stderr (last 4000 chars)\n{self.stderr[-4000:]}"
        )


_PRELUDE = f'''\
import json as _json
def emit(value):
    """Hand ``value`` (JSON-serialisable) back to the test as ``BentoRun.value``."""
    print("\\n{RESULT_MARKER}" + _json.dumps(value), flush=True)
'''


def _finish(args: list[str], proc: subprocess.CompletedProcess[str], check: bool) -> BentoRun:
    value = None
    stdout_lines = []
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            value = json.loads(line[len(RESULT_MARKER) :])
        else:
            stdout_lines.append(line)
    run = BentoRun(args, proc.returncode, "\n".join(stdout_lines), proc.stderr, value)
    if check and proc.returncode != 0:
        pytest.fail(f"BentoML child process failed:\n{run.describe()}", pytrace=False)
    return run


def run_bentoml(
    code: str,
    home: Path,
    *,
    tmp_dir: Path | None = None,
    check: bool = True,
    timeout: float = BENTOML_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> BentoRun:
    """Run Python ``code`` (dedented) in a child of this interpreter whose BENTOML_HOME is
    ``home`` (set before BentoML is imported). The code may call ``emit(value)`` to hand a
    JSON value back as ``.value``. ``check``: a non-zero exit fails the test, with the
    child's output. ``env`` adds or overrides variables."""
    _require_bentoml()
    child_env = bentoml_env(Path(home), tmp_dir)
    child_env.update(env or {})
    args = [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)]
    proc = subprocess.run(
        args,
        env=child_env,
        cwd=str(cwd) if cwd else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return _finish([sys.executable, "-c", "<code>"], proc, check)


def bentoml_executable() -> str:
    """The ``bentoml`` command of the interpreter running the tests."""
    beside = Path(sys.executable).parent / "bentoml"
    found = str(beside) if beside.is_file() else shutil.which("bentoml")
    if found is None:
        pytest.fail(
            "the bentoml command is not installed in this environment: run these tests "
            "with `tox -e bentoml` (or `make test`)",
            pytrace=False,
        )
    return found


def run_bentoml_cli(
    args: Sequence[str],
    home: Path,
    *,
    tmp_dir: Path | None = None,
    check: bool = True,
    timeout: float = BENTOML_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> BentoRun:
    """Run ``bentoml ARGS...`` (e.g. ``["models", "import", path]``) with BENTOML_HOME
    ``home``. Same ``check``/``env`` as ``run_bentoml``."""
    child_env = bentoml_env(Path(home), tmp_dir)
    child_env.update(env or {})
    command = [bentoml_executable(), *map(str, args)]
    proc = subprocess.run(
        command,
        env=child_env,
        cwd=str(cwd) if cwd else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return _finish(command, proc, check)
