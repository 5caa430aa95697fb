"""How long is a failed test's output, as a student sees it in the notebook? The longest one, per unit.

Runs each unit's release (exercises/NN_topic/*.ipynb) in a real Jupyter kernel twice: as released (every
answer a stub) and with every answer cell replaced by the first wrong answer that tests/corpus lists for it.
For every test cell that fails, it counts the lines the cell shows: its printed output plus the error's
traceback as IPython renders it (ANSI colours removed). Prints one row per unit and writes JSON.

    python benchmarks/failure_lines.py                      # this checkout
    python benchmarks/failure_lines.py --rev 7511f48        # an older commit (stubs only: no corpus then)

With --rev, the commit is checked out into a temporary git worktree and its kernels import that commit's
grader (PYTHONPATH), so the figure is the one a student saw at that commit.
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def shown_lines(cell) -> int:
    """Lines a cell's outputs take on screen: streams, results and the rendered traceback."""
    lines = 0
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            lines += len(output["text"].rstrip("\n").splitlines())
        elif output["output_type"] == "error":
            lines += len(ANSI.sub("", "\n".join(output["traceback"])).rstrip("\n").splitlines())
        elif "text/plain" in output.get("data", {}):
            lines += len(output["data"]["text/plain"].splitlines())
    return lines


def is_test(cell) -> bool:
    grading = cell.get("metadata", {}).get("nbgrader", {})
    return bool(grading.get("grade")) and not grading.get("solution")


def with_wrong_answers(notebook, assignment: str, course: Path):
    """The release with each answer cell replaced by the corpus's first wrong answer to it (None: no corpus)."""
    if not any((course / "tests" / "corpus").glob(f"unit{assignment[:2]}_*.py")):
        return None
    sys.path.insert(0, str(course / "tests"))
    import answer_lab

    source = next((course / "solutions" / assignment).glob("*.ipynb"))
    reference = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nbformat.read(source, as_version=4).cells
                 if c.get("metadata", {}).get("nbgrader", {}).get("solution")}
    first_wrong = {}
    for answer in answer_lab.corpus(assignment):
        if not answer.right and answer.cell not in first_wrong:
            first_wrong[answer.cell] = answer.cell_source(reference[answer.cell])
    wrong = copy.deepcopy(notebook)
    for cell in wrong.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in first_wrong:
            cell.source = first_wrong[grade_id]
    return wrong


def run(notebook, folder: Path, env: dict):
    work = Path(tempfile.mkdtemp(prefix="failure-lines-"))
    try:
        for item in folder.iterdir():
            if item.suffix != ".ipynb":
                (shutil.copytree if item.is_dir() else shutil.copy)(item, work / item.name)
        old = dict(os.environ)
        os.environ.update(env)
        try:
            NotebookClient(notebook, timeout=600, allow_errors=True, kernel_name="python3",
                           resources={"metadata": {"path": str(work)}}).execute()
        finally:
            os.environ.clear()
            os.environ.update(old)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = [(shown_lines(c), c.metadata["nbgrader"]["grade_id"]) for c in notebook.cells
              if is_test(c) and any(o["output_type"] == "error" for o in c.get("outputs", []))]
    return max(failed, default=(0, "-")), len(failed)


def measure(course: Path, env: dict) -> dict:
    results = {}
    for folder in sorted(p for p in (course / "exercises").iterdir() if p.is_dir() and p.name[:2].isdigit()):
        row = {}
        for path in sorted(folder.glob("*.ipynb")):
            release = nbformat.read(path, as_version=4)
            wrong = with_wrong_answers(release, folder.name, course)
            for kind, notebook in (("stubs", release), ("wrong", wrong)):
                if notebook is None:
                    continue
                (lines, cell), failed = run(notebook, folder, env)
                if lines >= row.get(kind, {}).get("lines", -1):
                    row[kind] = {"lines": lines, "cell": cell, "failed_tests": failed}
        results[folder.name] = row
        print(f"{folder.name:32} " + "  ".join(f"{k}: {v['lines']:3d} lines ({v['cell']}, {v['failed_tests']} failed)"
                                                for k, v in row.items()), flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", help="measure this git commit instead of the checkout")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    course, env, worktree = ROOT, {}, None
    if args.rev:
        worktree = Path(tempfile.mkdtemp(prefix="failure-lines-rev-")) / "course"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.rev],
                       check=True, capture_output=True)
        course, env = worktree, {"PYTHONPATH": str(worktree)}
    try:
        results = measure(course, env)
    finally:
        if worktree:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
