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
    # Every requirement of every extra is pinned; an extra may pull in others of the project's own ("name[a,b]").
    extras = [d for requirements in project["optional-dependencies"].values() for d in requirements]
    unpinned = [d for d in project["dependencies"] + extras if "==" not in d and not d.startswith(f"{project['name']}[")]
    assert not unpinned, f"pin these exactly in pyproject.toml: {unpinned}"


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


def test_the_github_workflow_runs_the_makefile_on_cpu_and_gpu():
    """CI where courses are hosted calls the same make targets: `make test` on CPU, `make test-cuda` on a GPU runner."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    jobs = workflow["jobs"]
    assert set(jobs) == {"cpu", "gpu"}
    commands = {name: [step.get("run", "") for step in job["steps"]] for name, job in jobs.items()}
    assert "make test" in commands["cpu"], commands["cpu"]
    assert "make test-cuda" in commands["gpu"], commands["gpu"]
    assert "self-hosted" in jobs["gpu"]["runs-on"] and "gpu" in jobs["gpu"]["runs-on"]
    packages = " ".join(commands["cpu"])
    for needed in ("chromium", "bubblewrap", "postgresql", "python3.11"):
        assert needed in packages, f"the CPU job does not install {needed}"
    assert "download.pytorch.org/whl/cpu" in jobs["cpu"]["env"]["PIP_EXTRA_INDEX_URL"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:", makefile, re.M) and re.search(r"^test-cuda:", makefile, re.M)


def test_make_help_lists_every_target():
    makefile = (ROOT / "Makefile").read_text()
    import subprocess

    listed = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    targets = re.findall(r"^([$()A-Za-z.-]+):.*## ", makefile, re.M)
    shown = re.findall(r"^  make (\S+)", listed, re.M)
    assert shown == [t.replace("$(VENV)", ".venv") for t in targets] and ".venv" in shown
