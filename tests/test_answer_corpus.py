"""Realistic answers to every exercise: each wrong one loses points with its hint, each right one keeps them all.

The corpora are tests/corpus/unitNN_*.py; tests/answer_lab.py grades them against the visible and hidden tests
(the re-run's program, as the mutation test does). Issue: "no wrong answer that a student would plausibly write
earns the points of the exercise it breaks", and a correct answer in another style must pass.
"""

import json
import subprocess
import sys
import time

import pytest

from answer_lab import corpus, verdict
from conftest import ROOT, tool_env

pytestmark = pytest.mark.slow

LAB = ROOT / "tests" / "answer_lab.py"
PARALLEL = 2
CORPORA = sorted(p.stem.removeprefix("unit") for p in (ROOT / "tests" / "corpus").glob("unit*.py"))
CASES = [(assignment, answer) for assignment in CORPORA for answer in corpus(assignment)]


@pytest.fixture(scope="module")
def graded():
    """(assignment, cell, name) -> outcomes, grading PARALLEL assignments at a time."""
    todo, running, found = list(CORPORA), {}, {}
    while todo or running:
        while todo and len(running) < PARALLEL:
            name = todo.pop(0)
            running[name] = subprocess.Popen([sys.executable, str(LAB), name], stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True, env=tool_env())
        for name, process in list(running.items()):
            if process.poll() is None:
                continue
            out, err = process.communicate()
            assert process.returncode == 0, f"answer lab for {name} failed:\n{err[-3000:]}"
            for record in map(json.loads, out.splitlines()):
                found[name, record["cell"], record["name"]] = record["outcomes"]
            del running[name]
        time.sleep(0.2)
    return found


def test_every_assignment_has_a_corpus():
    assignments = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit())
    assert CORPORA == assignments


@pytest.mark.parametrize("assignment, answer", CASES,
                         ids=[f"{a}-{x.cell}-{'right' if x.right else 'wrong'}-{x.name}" for a, x in CASES])
def test_answer_is_graded_as_it_must_be(graded, assignment, answer):
    problems = verdict(answer, graded[assignment, answer.cell, answer.name])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("assignment", CORPORA)
def test_every_answer_cell_has_five_wrong_and_two_right_answers(assignment):
    import nbformat

    notebook = next((ROOT / "solutions" / assignment).glob("*.ipynb"))
    cells = [c.metadata["nbgrader"]["grade_id"] for c in nbformat.read(notebook, as_version=4).cells
             if c.metadata.get("nbgrader", {}).get("solution") and not c.metadata["nbgrader"].get("grade")
             and c.cell_type == "code"]
    answers = corpus(assignment)
    short = {cell: (sum(not a.right for a in answers if a.cell == cell), sum(a.right for a in answers if a.cell == cell))
             for cell in cells}
    short = {cell: counts for cell, counts in short.items() if counts[0] < 5 or counts[1] < 2}
    assert not short, f"answer cells with fewer than 5 wrong or 2 right answers (wrong, right): {short}"
