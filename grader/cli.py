"""Command line: ``python -m grader devices``, ``python -m grader check FILE.py:NAME --example 8,20``
and ``python -m grader autograde ASSIGNMENT [--workers N]`` (see grader/grading/autograde.py)."""

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
    parser = argparse.ArgumentParser(prog="python -m grader", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("autograde", help="autograde every submission of an assignment in parallel, into nbgrader's "
                                     "gradebook (python -m grader autograde --help)")
    sub.add_parser("devices", help="print the device matrix the checks will run on")
    check = sub.add_parser("check", help="run every model check on a model class or factory")
    check.add_argument("target", help="FILE.py:NAME, where NAME() builds the model")
    check.add_argument("--example", type=_shape, required=True, help="input shape, batch first, e.g. 8,20")
    check.add_argument("--expected", type=int, help="the trainable parameter count the model should have")
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
