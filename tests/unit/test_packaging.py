"""Packaging: our `kernels` package vs the PyPI one transformers probes for; the project metadata
(Python range and classifiers, authors, license); the recipes shipped as package data and found
by name outside a clone. The run without vLLM installed: tests/integration/test_packaging_cli.py."""

import fnmatch
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

from rl.config import ConfigError, load_recipe, recipes_dir

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_transformers_does_not_mistake_our_kernels_package():
    from transformers.utils import import_utils

    assert importlib.util.find_spec("kernels") is not None  # ours is importable...
    assert not import_utils.is_kernels_available()  # ...and transformers does not use it


def test_metadata_names_the_tested_python_range_authors_and_license():
    meta = PROJECT["project"]
    low, high = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", meta["requires-python"]).groups()
    classified = {int(m) for c in meta["classifiers"] for m in re.findall(r"^Programming Language :: Python :: 3\.(\d+)$", c)}
    assert classified == set(range(int(low), int(high)))  # one classifier per version in range, no more
    assert meta["authors"] and meta["description"] and meta["readme"] == "README.md"
    has_license_file = any((ROOT / name).exists() for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"))
    assert has_license_file == ("license" in meta), "a license in pyproject.toml needs the LICENSE file, and back"
    assert {"cpu", "gpu"} <= set(meta["optional-dependencies"])  # the extras `lockstep run` names


def test_every_recipe_is_package_data_of_rl():
    patterns = PROJECT["tool"]["setuptools"]["package-data"]["rl"]
    package = ROOT / "rl"
    shipped = {p.relative_to(package).as_posix() for pattern in patterns for p in package.glob(pattern)}
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert recipes and {f"recipes/{p.name}" for p in recipes} <= shipped
    assert all(fnmatch.fnmatch(f"recipes/{p.name}", patterns[0]) for p in recipes)


def test_a_recipe_by_name_outside_a_clone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the shipped ones are used
    assert recipes_dir() == ROOT / "rl" / "recipes"
    assert load_recipe("demo").name == load_recipe(ROOT / "recipes" / "demo.yaml").name
    assert load_recipe("recipes/demo_dense.yaml").model.path == load_recipe(ROOT / "recipes" / "demo_dense.yaml").model.path
    with pytest.raises(ConfigError, match=r"no recipe of that name ships.*demo"):
        load_recipe("dmeo")


def test_lockstep_recipes_lists_the_shipped_recipes_anywhere(tmp_path, monkeypatch, capsys):
    from rl.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert all(p.name in listed for p in (ROOT / "recipes").glob("*.yaml"))
