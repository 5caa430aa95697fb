"""Command line: ``python -m grader COMMAND``.

For students: ``devices``, ``check FILE.py:NAME --example 8,20``, ``setup-check`` and ``progress NOTEBOOK...``
(what the student kit's `make test` runs). For instructors: ``autograde ASSIGNMENT [--workers N]``
(grader/grading/autograde.py), ``student-kit`` (grader/grading/student_kit.py), ``report [ASSIGNMENT...]``
(grader/grading/report.py) and ``export --format canvas|moodle|csv`` (grader/grading/export.py).
"""

import argparse
import importlib.util
import sys
from pathlib import Path

from .checks import devices
from .checks.models import check_model
from .checks.report import CheckFailed


def _load(target: str):
    path, _, name = target.partition(":")
    if not name or not Path(path).is_file():
        raise SystemExit(f"grader check: expected FILE.py:NAME with an existing file, got {target!r}")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return getattr(module, name)
    except AttributeError:
        raise SystemExit(f"grader check: {path} defines no {name!r}") from None


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes such as 8,20, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return shape


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["autograde"]:  # its own parser: nbgrader options pass through it
        from .grading.autograde import main as autograde

        return autograde(argv[1:])
    if argv[:1] == ["student-kit"]:
        from .grading.student_kit import main as student_kit

        return student_kit(argv[1:])
    if argv[:1] == ["report"]:  # its own parser too: nbgrader's --db, --course-dir... pass through
        from .grading.report import main as report

        return report(argv[1:])
    if argv[:1] == ["export"]:
        from .grading.export import main as export

        return export(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m grader", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("autograde", help="autograde every submission of an assignment in parallel, into nbgrader's "
                                     "gradebook (python -m grader autograde --help)")
    sub.add_parser("student-kit", help="build the student kit: lessons, exercises, the grader, no solutions "
                                       "(python -m grader student-kit --help)")
    sub.add_parser("report", help="the class report: pass rates, diagnoses, flags, similar answers, as HTML and CSV "
                                  "(python -m grader report --help)")
    sub.add_parser("export", help="grades for Canvas, Moodle or a CSV, with late penalties and course totals "
                                  "(python -m grader export --help)")
    sub.add_parser("devices", help="print the device matrix the checks will run on")
    sub.add_parser("setup-check", help="check this environment: Python, the pinned packages, the grader")
    progress = sub.add_parser("progress", help="run the visible tests of exercise notebooks and count what passes")
    progress.add_argument("notebooks", nargs="+", type=Path, help="exercise notebooks (.ipynb)")
    check = sub.add_parser("check", help="run every model check on a model class or factory")
    check.add_argument("target", help="FILE.py:NAME, where NAME() builds the model")
    check.add_argument("--example", type=_shape, required=True, help="input shape, batch first, e.g. 8,20")
    check.add_argument("--expected", type=int, help="the trainable parameter count the model should have")
    args = parser.parse_args(argv)

    if args.command == "setup-check":
        return setup_check()
    if args.command == "progress":
        return progress_report(args.notebooks)
    try:
        if args.command == "devices":
            print(devices.label(devices.selected()))
            return 0
        check_model(_load(args.target), args.example, args.expected)
    except CheckFailed as failure:
        print(failure)
        return 1
    except (ValueError, RuntimeError) as error:
        print(f"grader: {error}", file=sys.stderr)
        return 2
    return 0


def setup_check() -> int:
    """One line per requirement of the course; exit 1 if any is missing."""
    import importlib.metadata as metadata
    import platform

    import torch

    problems = 0

    def line(ok: bool, text: str, fix: str = "") -> None:
        nonlocal problems
        problems += not ok
        print(f"{'✓' if ok else '✗'} {text}" + ("" if ok or not fix else f": {fix}"))

    line(sys.version_info[:2] >= (3, 11), f"Python {platform.python_version()}", "the course needs Python 3.11")
    line(torch.__version__.split("+")[0] == "2.13.0", f"torch {torch.__version__}",
         "the course is pinned to torch==2.13.0: run `make .venv` again (delete .venv first)")
    for package in ("jupyterlab", "nbgrader", "matplotlib"):
        try:
            line(True, f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            line(False, f"{package} is not installed", "delete .venv and run `make lab` again")
    line(True, f"grader checks from {Path(__file__).resolve().parent}")
    line(True, f"devices the checks run on: {devices.label(devices.selected())}")
    return 1 if problems else 0


def progress_report(notebooks: list[Path]) -> int:
    """Run each notebook's visible tests with nbgrader's validator, and print how many test cells pass."""
    import nbformat
    from nbgrader.validator import Validator

    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        print(f"grader progress: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    passing = total = 0
    for path in notebooks:
        cells = [c for c in nbformat.read(path, as_version=4).cells
                 if c.get("metadata", {}).get("nbgrader", {}).get("grade") and c.cell_type == "code"]
        results = Validator().validate(str(path))
        if "changed" in results or "type_changed" in results:
            print(f"✗ {path}: read-only cells were changed; restore them (or fetch the assignment again)")
            continue
        failed = len(results.get("failed", []))
        passing, total = passing + len(cells) - failed, total + len(cells)
        mark = "✓" if not failed else "·"
        print(f"{mark} {path}: {len(cells) - failed} of {len(cells)} test cells pass")
    print(f"{passing} of {total} test cells pass in {len(notebooks)} notebook{'s' * (len(notebooks) != 1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
