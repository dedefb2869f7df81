"""Broken BentoML archives are refused by ``mlflow-archive import`` in one line, with nothing
registered; a model whose name cannot become a BentoML tag is not exported at all.

Each broken archive starts as a real BentoML export (``bentoml.models.export_model`` of a
``bentoml.picklable_model``, as a folder) with one thing spoiled, and is packed as BentoML packs
a ``.bentomodel`` (``shutil.make_archive`` with ``xztar``, entries under ``./``). Where the real
BentoML refuses the same file, that is checked too, in a BENTOML_HOME of its own.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import (
    assert_user_error,
    cli,
    register_iris_model,
    registry_census,
    run_bentoml_cli,
    unique,
    use_bentoml_home,
)

VALID_CREATED = "2024-05-01T12:34:56.789012+00:00"


def _without_model_yaml(document: dict) -> str | None:
    return None


def _not_yaml(document: dict) -> str:
    return "name: [unclosed\nversion: {\n"


def _not_a_mapping(document: dict) -> str:
    return yaml.safe_dump(list(document))


def _missing_keys(document: dict) -> str:
    return yaml.safe_dump({k: v for k, v in document.items()
                           if k not in ("version", "module", "creation_time")}, sort_keys=False)


def _changed(**changes: object) -> Callable[[dict], str]:
    def spoil(document: dict) -> str:
        return yaml.safe_dump({**document, **changes}, sort_keys=False)
    return spoil


# name -> (how model.yaml is spoiled, words the one line must contain, BentoML refuses it too)
BROKEN = {
    "no-model-yaml": (_without_model_yaml, ["model.yaml"], True),
    "not-yaml": (_not_yaml, ["model.yaml", "not valid YAML"], True),
    "not-a-mapping": (_not_a_mapping, ["model.yaml", "not a YAML mapping"], True),
    "missing-keys": (_missing_keys, ["model.yaml", "version, module, creation_time"], True),
    "naive-time": (_changed(creation_time="2024-05-01T12:34:56"), ["creation_time",
                                                                  "timezone"], False),
    "not-iso-time": (_changed(creation_time="last tuesday"), ["creation_time", "ISO 8601"],
                     True),
    "epoch-time": (_changed(creation_time=1714566896), ["creation_time", "ISO 8601"], True),
    "invalid-tag": (_changed(name="Bad Name!"), ["model.yaml", "Bad Name!"], True),
}


@pytest.fixture(scope="module")
def bento_folder(tmp_path_factory) -> Path:
    """A real BentoML export, as a folder: model.yaml and saved_model.pkl."""
    import bentoml

    base = tmp_path_factory.mktemp("bad-source")
    with use_bentoml_home(base / "home", tmp_dir=base / "tmp"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bentoml.picklable_model is deprecated since 1.4
        model = bentoml.picklable_model.save_model(unique("bad").lower(), {"w": [1, 2]},
                                                   labels={"owner": "bob"})
        return Path(bentoml.models.export_model(model.tag, str(base / "folder"), "folder"))


def pack_like_bentoml(folder: Path, dest: Path, fmt: str = "xztar") -> Path:
    """``folder`` packed as BentoML's export_model packs it, at ``dest``."""
    packed = shutil.make_archive(str(dest.parent / f"{dest.name}-packing"), fmt, str(folder))
    return Path(packed).rename(dest)


@pytest.fixture(scope="module")
def broken(bento_folder, tmp_path_factory) -> dict[str, Path]:
    """Every broken .bentomodel, plus a gzip-compressed tar named .bentomodel."""
    out = tmp_path_factory.mktemp("broken")
    document = yaml.safe_load((bento_folder / "model.yaml").read_text())
    document["creation_time"] = VALID_CREATED
    made = {}
    for name, (spoil, _, _) in BROKEN.items():
        folder = out / name
        shutil.copytree(bento_folder, folder)
        text = spoil(document)
        if text is None:
            (folder / "model.yaml").unlink()
        else:
            (folder / "model.yaml").write_text(text)
        made[name] = pack_like_bentoml(folder, out / f"{name}.bentomodel")
    made["gzip-named-bentomodel"] = pack_like_bentoml(bento_folder,
                                                      out / "gzipped.bentomodel", "gztar")
    return made


@pytest.fixture(scope="module")
def refusals(broken, server_b, tmp_path_factory):
    """Each broken file imported by the CLI into server_b (two at a time); the registry's
    counts before and after all of them."""
    cwd = tmp_path_factory.mktemp("refusals")
    before = registry_census(server_b.url)

    def run(path: Path):
        return cli("import", str(path), "--tracking-uri", server_b.url, "-q", cwd=cwd)

    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(broken, pool.map(run, broken.values()), strict=True))
    return procs, before, registry_census(server_b.url)


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_model_yaml_is_refused_in_one_line(refusals, name):
    line = assert_user_error(refusals[0][name])
    for word in BROKEN[name][1]:
        assert word in line, line


def test_a_gzip_file_named_bentomodel_is_refused_in_one_line(refusals):
    line = assert_user_error(refusals[0]["gzip-named-bentomodel"])
    assert "tar.gz" in line and ".bentomodel" in line and "tar.xz" in line, line


def test_nothing_is_registered_for_any_broken_archive(refusals, broken):
    procs, before, after = refusals
    assert set(procs) == set(broken)
    assert all(proc.returncode != 0 for proc in procs.values())
    assert after == before


@pytest.mark.parametrize("name", [name for name, (*_, refused) in BROKEN.items() if refused]
                         + ["gzip-named-bentomodel"])
def test_real_bentoml_refuses_it_too(broken, name, bentoml_home):
    import bentoml

    with pytest.raises(Exception):  # noqa: B017 - BentoML raises a different type for each
        bentoml.models.import_model(str(broken[name]))
    assert not any((bentoml_home / "models").iterdir())


def test_real_bentoml_takes_a_naive_time_but_then_cannot_list_its_store(broken, bento_folder,
                                                                        tmp_path):
    """Why a naive creation_time is refused although BentoML's import takes it: once such a
    model is in a store beside any other, ``bentoml models list`` fails for the whole store."""
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    other = shutil.copytree(bento_folder, tmp_path / "other")
    document = yaml.safe_load((other / "model.yaml").read_text())
    (other / "model.yaml").write_text(yaml.safe_dump({**document, "name": "other"},
                                                     sort_keys=False))
    fine = pack_like_bentoml(other, tmp_path / "other.bentomodel")
    for path in (broken["naive-time"], fine):
        run_bentoml_cli(["models", "import", path], home, tmp_dir=scratch)
    listed = run_bentoml_cli(["models", "list"], home, tmp_dir=scratch, check=False)
    assert listed.returncode != 0
    assert "can't compare offset-naive and offset-aware datetimes" in listed.stderr


def test_real_bentoml_imports_the_unbroken_archive(bento_folder, tmp_path, bentoml_home):
    """The broken files fail for what was spoiled, not for how they were packed."""
    import bentoml

    packed = pack_like_bentoml(bento_folder, tmp_path / "fine.bentomodel")
    document = yaml.safe_load((bento_folder / "model.yaml").read_text())
    model = bentoml.models.import_model(str(packed))
    assert (model.tag.name, model.tag.version) == (document["name"], document["version"])


def test_a_model_name_with_no_letter_or_digit_is_not_exported(server_a, tmp_path):
    name = "\u00c4\u00d6\u00dc " + "\u00e9" * 3
    register_iris_model(server_a.url, name)
    out = tmp_path / "out"
    out.mkdir()
    proc = cli("export", f"models:/{name}/1", "--format", "bentoml", "-o", f"{out}/",
               "--tracking-uri", server_a.url, "-q", cwd=tmp_path)
    line = assert_user_error(proc)
    assert "BentoML tag" in line and "name" in line, line
    assert list(out.iterdir()) == []
