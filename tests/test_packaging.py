"""The package list in pyproject.toml is written by hand (plugins/ installs as
``trioproxy_plugins``); a forgotten package would be missing from a non-editable install."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

# The compiled test run (nox -s tests_compiled) runs a copy of tests/ away from the sources.
ROOT = Path(os.environ.get("TRIOPROXY_SOURCE_ROOT") or Path(__file__).parents[1])


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (("trioproxy", "trioproxy"), ("plugins", "trioproxy_plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join((name, *rel.parts)))
    assert found == listed


def test_builtin_plugins_are_registered_through_the_entry_point_group() -> None:
    import importlib.metadata

    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="trioproxy")}
    assert eps.get("router") == "trioproxy_plugins.router"


def test_no_merge_conflict_markers_are_committed() -> None:
    """A merge resolved in a hurry once left both sides of a README row in place."""
    files = subprocess.run(
        ["git", "ls-files", "*.md", "*.py", "*.yaml", "*.toml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    marked = [
        name
        for name in files
        if re.search(r"^(<{7} |>{7} |={7}$)", (ROOT / name).read_text(errors="replace"), re.M)
    ]
    assert marked == []
