"""Every recipe field is documented once (its attribute docstring) and docs/recipes.md is the
rendering of those docs: regenerate with `python -m rl.config_docs > docs/recipes.md`."""

import dataclasses
from pathlib import Path

from rl.config import RunConfig
from rl.config_docs import _all_paths, field_docs, render

ROOT = Path(__file__).resolve().parents[2]


def test_every_recipe_field_has_a_doc():
    missing = [f"{path or '<top>'}.{f.name}" for path, cls in _all_paths(RunConfig)
               for f in dataclasses.fields(cls) if not field_docs(cls).get(f.name)]
    assert not missing, f"fields without a doc string: {missing}"


def test_docs_recipes_md_is_current():
    on_disk = (ROOT / "docs" / "recipes.md").read_text()
    assert on_disk == render(), "docs/recipes.md is stale: python -m rl.config_docs > docs/recipes.md"


def test_every_key_is_in_the_reference():
    text = render()
    for path, cls in _all_paths(RunConfig):
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in text or f"`{path}.{f.name}`" in text, (path, f.name)
