"""The project's own promises: pins agree, README shows the two commands, releases hide hidden tests."""

import re
import tomllib

import yaml

from conftest import ASSIGNMENTS, ROOT


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    python = next(d for d in conda if d.startswith("python"))
    assert python == "python=3.11", "students get Python 3.11, the version the course is tested on"
    assert "pip" in conda
    # Everything else comes through pip from pyproject, so the pins have one home.
    assert set(conda) == {python, "pip"}, f"conda packages would shadow pyproject's pins: {conda}"
    assert pip == ["-e ."], "the environment installs the course (and its pins) from pyproject.toml"
    pins = {re.split("==", d)[0].lower(): d for d in project["dependencies"]}
    assert pins["torch"] == "torch==2.13.0", "a looser torch pin downloads a multi-GB CUDA build"
    assert all("==" in d for d in project["dependencies"] + project["optional-dependencies"]["test"])


def test_readme_quick_start_is_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^make \w+", quick_start, re.M) == ["make lab", "make test"]


def test_releases_hold_no_solutions_or_hidden_tests():
    for assignment in ASSIGNMENTS:
        released = list((ROOT / "exercises" / assignment).glob("*.ipynb"))
        assert released, f"exercises/{assignment} is missing: run `make exercises`"
        for notebook in released:
            text = notebook.read_text()
            for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
                assert marker not in text, f"{notebook} contains {marker}"


def test_grader_package_holds_no_solution_markers():
    for source in (ROOT / "grader").rglob("*.py"):
        text = source.read_text()
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text, source
