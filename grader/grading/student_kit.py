"""The student kit: what a student needs to take the course, and nothing an instructor keeps.

`python -m grader student-kit [--out build/student-kit]` (or `make student-kit`) builds a self-contained folder
and a zip of it, from the course repository:

    lessons/          every lesson notebook
    exercises/        the release of every assignment (what `nbgrader generate_assignment` made)
    grader/           the package the notebooks import (checks, the CLI; no solutions, no hidden tests)
    docs/students.md  the student guide, with its pictures
    pyproject.toml    the course's own pins (the same torch==2.13.0 and friends), under the kit's own name
    Makefile          `make lab` and `make test`, as in the course
    README.md         the kit's quick start
    nbgrader_config.py  the course id only

Nothing else is copied: not solutions/ (answers and hidden tests), not tests/ (the attack corpus, the answer
corpora), not the gradebook or any student's work. `forbidden_paths` lists what must never be in a kit.
"""

import argparse
import shutil
import sys
import tomllib
from pathlib import Path

KIT_NAME = "inside-nn-module-kit"  # not the course's project name: a kit never replaces the course's install
FORBIDDEN = ("solutions", "tests", "source", "submitted", "autograded", "feedback", "gradebook.db", "benchmarks")

README = """# Inside nn.Module: the student kit

A Jupyter course on how PyTorch's `nn.Module` really works. You need Python 3.11 and pip.

```
make lab
make test
```

`make lab` builds `.venv` on first use (a few minutes: torch {torch}, JupyterLab, nbgrader) and opens
JupyterLab; set `JUPYTER_PORT` to choose the port (`make lab JUPYTER_PORT=8890`). `make test` checks your set-up
(Python, the pinned packages, the grader) and runs the visible tests of every exercise, printing how many pass.
`make test UNITS=04_containers` checks one unit.

- `lessons/NN_topic.ipynb`: read and run these first.
- `exercises/NN_topic/*.ipynb`: the assignments. Work there; press **Validate** before you submit.
- `docs/students.md`: how exercises, checks and feedback work.

Your instructor grades with hidden tests as well (other sizes, other devices): write general code.
"""

MAKEFILE = """# Inside nn.Module, student kit: `make lab` and `make test` build .venv first when it is missing or stale.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
JUPYTER_PORT ?= 8888
UNITS ?= *
export PATH := $(CURDIR)/$(BIN):$(PATH)
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: help lab test
.DEFAULT_GOAL := help

help: ## list the targets
\t@grep -E '^[a-z.-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\\n", $$1, $$2}'

$(VENV): pyproject.toml ## create the virtual environment
\t$(PYTHON) -m venv $(VENV)
\t$(BIN)/pip install --quiet --upgrade "pip>=24"
\t$(BIN)/pip install --quiet -e .
\t$(BIN)/jupyter labextension enable @jupyter/nbgrader >/dev/null
\ttouch $(VENV)

lab: $(VENV) ## open JupyterLab on the course (honours JUPYTER_PORT)
\t$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" --port=$(JUPYTER_PORT) --ServerApp.port_retries=0 \\
\t\t--LabApp.news_url=None $(ROOT_FLAG)

test: $(VENV) ## check the set-up, then run the visible tests of the exercises (UNITS=04_containers for one)
\t$(BIN)/python -m grader setup-check
\t$(BIN)/python -m grader progress exercises/$(UNITS)/*.ipynb
"""

NBGRADER_CONFIG = '''"""nbgrader settings for students of the course (the Validate button and the Assignments tab)."""

c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "{course_id}"
'''


def forbidden_paths(kit: Path) -> list[str]:
    """Anything in the kit that must never be there."""
    return sorted(str(p.relative_to(kit)) for p in kit.rglob("*")
                  if p.relative_to(kit).parts[0] in FORBIDDEN or p.suffix in (".db", ".sqlite"))


def _pyproject(root: Path) -> str:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = "\n".join(f'    "{pin}",' for pin in project["dependencies"])
    return f"""[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{KIT_NAME}"
version = "{project['version']}"
description = "Inside nn.Module: the student kit (lessons, exercises and the grader's checks)"
requires-python = "{project['requires-python']}"
# The course's exact pins: a looser torch pin makes pip fetch a multi-GB CUDA build.
dependencies = [
{pins}
]

[tool.setuptools]
packages = {{find = {{include = ["grader*"]}}}}
"""


def _course_id(root: Path) -> str:
    for line in (root / "nbgrader_config.py").read_text().splitlines():
        if line.startswith("c.CourseDirectory.course_id"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "inside-nn-module"


def build(root: Path, out: Path) -> tuple[Path, Path]:
    """Build the kit folder `out` (replaced if present) and `out`.zip from the course at `root`."""
    root, out = root.resolve(), out.resolve()
    if not (root / "exercises").is_dir() or not (root / "grader" / "__init__.py").is_file():
        raise SystemExit(f"grader student-kit: {root} is not the course folder (no exercises/ or grader/)")
    if (out == root or root in out.parents) and (out == root or out.relative_to(root).parts[0] != "build"):
        raise SystemExit(f"grader student-kit: write the kit outside the course's own folders (e.g. build/), not {out}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    shutil.copytree(root / "lessons", out / "lessons", ignore=shutil.ignore_patterns("*.cfg", ".ipynb_checkpoints"))
    shutil.copytree(root / "exercises", out / "exercises", ignore=skip)
    shutil.copytree(root / "grader", out / "grader", ignore=skip)
    (out / "docs").mkdir()
    shutil.copy(root / "docs" / "students.md", out / "docs" / "students.md")
    if (root / "docs" / "img").is_dir():
        shutil.copytree(root / "docs" / "img", out / "docs" / "img")
    torch_pin = next(p for p in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
                     if p.startswith("torch=="))
    (out / "README.md").write_text(README.format(torch=torch_pin.split("==")[1]))
    (out / "Makefile").write_text(MAKEFILE)
    (out / "pyproject.toml").write_text(_pyproject(root))
    (out / "nbgrader_config.py").write_text(NBGRADER_CONFIG.format(course_id=_course_id(root)))
    stray = forbidden_paths(out)
    if stray:
        raise SystemExit(f"grader student-kit: the kit would hold {stray}: refusing")
    archive = Path(shutil.make_archive(str(out), "zip", root_dir=out.parent, base_dir=out.name))
    return out, archive


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader student-kit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--course", type=Path, default=Path.cwd(), help="the course folder (default: here)")
    parser.add_argument("--out", type=Path, default=None, help="the kit folder (default: COURSE/build/student-kit)")
    args = parser.parse_args(argv)
    out = args.out or args.course / "build" / "student-kit"
    folder, archive = build(args.course, out)
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    print(f"student kit: {folder} ({files} files), {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
