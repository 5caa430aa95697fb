"""Grade realistic student answers against an assignment's visible and hidden tests, many at a time.

A corpus (tests/corpus/unitNN_*.py) lists answers to the exercises of one assignment: `Wrong` ones, each of
which must lose points on the tests named in `fails`, with the hint fragments given there, and `Right` ones,
written in another style than the reference, which must pass every test.

Grading is the re-run's program (grader.grading.rerun.source_program), as in tests/mutation_lab.py: the locked
cells as the source holds them (hidden tests included) and the answer cells, in order, in one namespace. The
runner executes the notebook once; at each answer cell it forks one child per corpus answer to that cell,
which runs the answer in its place and the cells after it, and reports every test's outcome (passed, or the
failure's text). A wrong answer's child stops once every test it must fail has run; a right answer's once the
tests of its exercise have run (at the next answer cell).

`python tests/answer_lab.py ASSIGNMENT` prints one JSON line per answer; `--summary` prints the table of
wrong answers rejected and right answers accepted, per assignment.
"""

import importlib
import json
import os
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIME_LIMIT = 120  # seconds an answer may take before it counts as failing every remaining test


@dataclass
class Answer:
    cell: str                 # the grade_id of the answer cell it replaces
    name: str                 # what the student did, in a few words
    source: str = ""          # the whole cell as the student wrote it, or
    edit: tuple = ()          # (old, new[, old, new...]): text replacements in the reference answer
    fails: dict = field(default_factory=dict)  # Wrong: test grade_id -> fragments its failure must show
    right: bool = False

    def cell_source(self, reference: str) -> str:
        if self.source:
            return self.source
        text = reference
        for old, new in zip(self.edit[::2], self.edit[1::2]):
            if old not in text:
                raise ValueError(f"{self.cell} / {self.name}: {old!r} is not in the reference answer")
            text = text.replace(old, new, 1)
        return text


def Wrong(cell, name, source="", *, edit=(), fails) -> Answer:  # noqa: N802 - reads as a kind of answer
    return Answer(cell, name, source, tuple(edit), dict(fails), right=False)


def Right(cell, name, source="", *, edit=()) -> Answer:  # noqa: N802
    return Answer(cell, name, source, tuple(edit), {}, right=True)


def corpus(assignment: str) -> list[Answer]:
    """The ANSWERS of tests/corpus/unitNN_*.py for an assignment such as 04_containers."""
    sys.path.insert(0, str(HERE))
    number, topic = assignment.split("_", 1)
    module = importlib.import_module(f"corpus.unit{number}_{topic}")
    return list(module.ANSWERS)


# ---------------------------------------------------------------- grading

def _run_cell(kind: str, grade_id: str, source: str, namespace: dict) -> str | None:
    """Execute one cell; None, or the failure's text (the check's diagnosis, or the error in one line)."""
    try:
        exec(compile(source, f"<{kind} cell {grade_id}>", "exec"), namespace)
    except BaseException as error:  # noqa: BLE001 - a test that raises anything loses its points
        text = str(error) if str(error) else ""
        return f"{type(error).__name__}: {text}"[:4000]
    return None


def grade(assignment: str, answers: list[Answer]) -> list[dict]:
    import nbformat
    import torch

    torch.set_num_threads(1)  # torch's thread pool does not survive fork: stay on one thread
    sys.path.insert(0, str(ROOT))
    from grader.grading import rerun

    notebook = next((ROOT / "solutions" / assignment).glob("*.ipynb"))
    program = rerun.source_program(nbformat.read(notebook, as_version=4))
    os.chdir(tempfile.mkdtemp(prefix="answers-"))
    sys.stdout = open(os.devnull, "w")
    namespace = {"__name__": "__main__", "get_ipython": lambda: None, "display": lambda *a, **k: None}
    by_cell: dict[str, list[Answer]] = {}
    for answer in answers:
        by_cell.setdefault(answer.cell, []).append(answer)
    unknown = set(by_cell) - {grade_id for kind, grade_id, _ in program if kind == "answer"}
    if unknown:
        raise SystemExit(f"{assignment} has no answer cell {sorted(unknown)}")
    results = []

    def rest(index: int, first_source: str, must_fail: set) -> dict:
        """Run the answer and the cells after it: a wrong answer until every test it must fail has run, a right
        one through the tests of its exercise (up to the next answer cell once a test has run)."""
        outcomes = {}
        for position in range(index, len(program)):
            kind, grade_id, source = program[position]
            if not must_fail and kind == "answer" and position > index and outcomes:
                break
            failed = _run_cell(kind, grade_id, first_source if position == index else source, namespace)
            if kind == "test":
                outcomes[grade_id] = failed
                if must_fail and must_fail <= outcomes.keys():
                    break
        return outcomes

    for index, (kind, grade_id, source) in enumerate(program):
        for answer in by_cell.get(grade_id, []) if kind == "answer" else []:
            reader, writer = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(reader)
                signal.alarm(TIME_LIMIT)
                outcomes = rest(index, answer.cell_source(source), set(answer.fails))
                os.write(writer, json.dumps(outcomes).encode())
                os._exit(0)
            os.close(writer)
            data = b""
            while chunk := os.read(reader, 65536):
                data += chunk
            os.close(reader)
            _, status = os.waitpid(pid, 0)
            outcomes = json.loads(data) if data else {"*": f"the answer ended the process (status {status})"}
            results.append({"cell": answer.cell, "name": answer.name, "right": answer.right, "outcomes": outcomes})
        failed = _run_cell(kind, grade_id, source, namespace)
        if failed and kind == "test":
            raise SystemExit(f"the reference fails {grade_id}: {failed}")
    return results


def verdict(answer: Answer, outcomes: dict) -> list[str]:
    """What is wrong with the grading of this answer; [] when it is graded as it must be."""
    problems = []
    if answer.right:
        problems += [f"{test} fails: {text}" for test, text in outcomes.items() if text]
        return problems or ([] if outcomes else ["no test ran after it"])
    for test, fragments in answer.fails.items():
        text = outcomes.get(test, "")
        if test not in outcomes:
            problems.append(f"{test} never ran")
        elif not text:
            problems.append(f"{test} passes")
        else:
            problems += [f"{test}'s failure does not say {f!r}:\n{text}" for f in fragments if f not in text]
    return problems


def summary(results: dict[str, list[tuple[Answer, dict]]]) -> str:
    lines = ["| Assignment | wrong answers rejected | right answers accepted |", "| --- | --- | --- |"]
    for assignment, graded in sorted(results.items()):
        wrong = [(a, o) for a, o in graded if not a.right]
        right = [(a, o) for a, o in graded if a.right]
        lines.append(f"| {assignment} | {sum(not verdict(a, o) for a, o in wrong)} / {len(wrong)} | "
                     f"{sum(not verdict(a, o) for a, o in right)} / {len(right)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        import subprocess

        found = {}
        for path in sorted((ROOT / "solutions").iterdir()):
            if not (HERE / "corpus" / f"unit{path.name}.py").exists():
                continue
            answers = corpus(path.name)
            done = subprocess.run([sys.executable, __file__, path.name], capture_output=True, text=True, check=True)
            records = {(r["cell"], r["name"]): r["outcomes"] for r in map(json.loads, done.stdout.splitlines())}
            found[path.name] = [(a, records[a.cell, a.name]) for a in answers]
        print(summary(found))
    else:
        name = sys.argv[1]
        for record in grade(name, corpus(name)):
            print(json.dumps(record), file=sys.__stdout__, flush=True)
