"""Bad submissions through `python -m grader autograde`: each is graded or refused with a clear reason,
the batch never aborts, and the gradebook stays intact. The slow test runs stock `nbgrader
autograde` on the same corpus and checks that both leave the same gradebook rows."""

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from conftest import nbgrader, tool_env
from synthetic_course import (ASSIGNMENT, RIGHT, answered, copy_course, gradebook_rows, integrity, make_course,
                              report, submit)

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]

CELL_TIMEOUT = 3
STUDENT_TIMEOUT = 25
# A kernel memory limit, set through nbgrader's own Execute options: it applies to stock nbgrader too.
MEMORY_LIMIT = ('c.Execute.extra_arguments = ["--IPKernelApp.exec_lines=import resource; '
                'resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))"]')


def _with(root, **answers):
    return answered(root, RIGHT | answers)


def _cells_without(root, *grade_ids):
    notebook = _with(root)
    notebook.cells = [c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") not in grade_ids]
    return notebook


def _duplicated(root):
    notebook = _with(root)
    index = next(i for i, c in enumerate(notebook.cells) if c.metadata.nbgrader.get("grade_id") == "square")
    twin = copy.deepcopy(notebook.cells[index])
    twin.source = "def square(x):\n    return -1"
    twin.id = "twin-of-square"
    notebook.cells.insert(index + 1, twin)
    return notebook


def _changed_ids(root):
    notebook = _with(root)
    for cell in notebook.cells:
        if cell.metadata.nbgrader.get("grade_id") == "test_square":
            cell.metadata.nbgrader["grade_id"] = "my_own_test"
            cell.source = "pass  # the student replaced the test"
            cell.id = "my-own-test"
    return notebook


def _crawling(root, name):
    """40 cells that each sleep just under nbgrader's cell timeout: stock would sit through 100 s. The kernel
    names itself (its pid in the sandbox means nothing here), so that the test can find it."""
    notebook = _with(root, square=f"open('/proc/self/comm', 'w').write({name!r})\n"
                                  "def square(x):\n    return x * x")
    notebook.cells += [nbformat.v4.new_code_cell(f"import time\ntime.sleep({CELL_TIMEOUT - 0.5})") for _ in range(40)]
    return notebook


def corpus(root: Path, scratch: Path) -> dict:
    """student -> what they submitted (a notebook, or a raw text for a broken file)."""
    return {
        "good": _with(root),
        "malformed-json": '{"cells": [ this is not json',
        "cells-deleted": _cells_without(root, "square", "test_square"),
        "cell-duplicated": _duplicated(root),
        "ids-changed": _changed_ids(root),
        "renamed": ("toy (final)", _with(root)),
        "infinite-loop": _with(root, cube="while True:\n    pass"),
        # bytes(n) is calloc'd: address space grows fast, but without the limit no page would be touched
        "memory-hog": _with(root, cube="hog = []\nwhile True:\n    hog.append(bytes(512 << 20))"),
        "exits": _with(root, cube="import os\nos._exit(3)"),
        "segfault": _with(root, cube="import ctypes\nctypes.string_at(0)"),
        "huge-output": _with(root, cube="for i in range(5_000):\n    print('line', i)\nprint('x' * 300_000)\n"
                                        "def cube(x):\n    return x ** 3"),
        "warns": _with(root, square="import warnings\ndef square(x):\n    warnings.warn('square is slow')\n"
                                    "    return x * x"),
        "ignores-interrupt": _with(root, cube="import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                              "while True:\n    pass"),
        "crawls": _crawling(root, CRAWLER),
        "fifo": "fifo",  # the notebook is a named pipe: reading it blocks forever

        "zz-good-after": _with(root),
    }


CRAWLER = "crawl-kernel"


def _processes_named(name: str) -> list[int]:
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                found.append(int(pid))
        except OSError:
            pass
    return found


class _Watch(threading.Thread):
    """Notes whether a process of this name ran on this machine while the grading ran (the control)."""

    def __init__(self, name: str):
        super().__init__(daemon=True)
        self.process_name, self.seen, self.done = name, False, threading.Event()

    def run(self):
        while not self.done.is_set():
            self.seen = self.seen or bool(_processes_named(self.process_name))
            time.sleep(0.2)


def _gone(name: str, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _processes_named(name):
            return True
        time.sleep(0.2)
    for pid in _processes_named(name):
        os.kill(pid, signal.SIGKILL)
    return False


def _submit_all(root: Path, submissions: dict, skip=()) -> None:
    for student, what in submissions.items():
        if student in skip:
            continue
        if what == "fifo":
            path = submit(root, student, raw="")
            path.unlink()
            os.mkfifo(path)
        elif isinstance(what, str):
            submit(root, student, raw=what)
        elif isinstance(what, tuple):
            submit(root, student, what[1], name=what[0])
        else:
            submit(root, student, what)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The corpus graded once by the grader's CLI, with two workers."""
    scratch = tmp_path_factory.mktemp("bad")
    root = make_course(scratch / "course", timeout=CELL_TIMEOUT, extra_config=MEMORY_LIMIT)
    pristine = copy_course(root, scratch / "pristine")
    submissions = corpus(root, scratch)
    _submit_all(root, submissions)
    started, watch = time.monotonic(), _Watch(CRAWLER)
    watch.start()
    done = subprocess.run([sys.executable, "-m", "grader", "autograde", ASSIGNMENT, "--workers", "2",
                           "--student-timeout", str(STUDENT_TIMEOUT), "--report", "report.json"],
                          cwd=root, env=tool_env(), capture_output=True, text=True, timeout=900)
    watch.done.set()
    return {"root": root, "pristine": pristine, "scratch": scratch, "done": done, "submissions": submissions,
            "outcomes": report(root / "report.json"), "wall": time.monotonic() - started, "crawler seen": watch.seen}


def outcome(graded, student):
    return graded["outcomes"][student]


def test_the_batch_finishes_and_reports_every_student(graded):
    done = graded["done"]
    assert done.returncode == 1, "failures must show in the exit code"
    assert set(graded["outcomes"]) == set(graded["submissions"])
    for student in graded["submissions"]:  # the per-student line of the CLI report
        assert any(line.startswith(student + " ") for line in done.stdout.splitlines()), student
    assert outcome(graded, "good")["score"] == 3.0 and outcome(graded, "zz-good-after")["score"] == 3.0
    assert graded["wall"] < STUDENT_TIMEOUT + 120


def test_the_gradebook_stays_intact(graded):
    root = graded["root"]
    assert integrity(root) == "ok"
    rows = gradebook_rows(root)
    graded_students = {s for s, o in graded["outcomes"].items() if o["status"] == "graded"}
    assert {key[1] for key in rows} >= graded_students
    for (_, student, _), row in rows.items():
        if student in graded_students:
            assert [g[0] for g in row["grades"]] == ["explain", "test_cube", "test_square"], student


@pytest.mark.parametrize("student, status, reason", [
    ("malformed-json", "failed", "not valid notebook JSON"),
    ("renamed", "failed", "no notebook with a name of this assignment (toy.ipynb) was submitted; "
                          "found toy (final).ipynb"),
    ("cell-duplicated", "failed", "toy: cell square appears 2 times: nbgrader refused the notebook"),
    ("ids-changed", "failed", "toy: cells missing from the submission: test_square; toy: cell my_own_test is "
                              "not a cell of this assignment"),
    ("exits", "failed", "the kernel died while running cell cube (exit code 3)"),
    ("segfault", "failed", "the kernel died while running cell cube (killed by SIGSEGV)"),
    ("ignores-interrupt", "failed", "cell cube ran past Execute.timeout and did not stop when interrupted"),
    ("crawls", "timed out", f"still running after {STUDENT_TIMEOUT} s"),
    ("fifo", "timed out", f"still running after {STUDENT_TIMEOUT} s"),
])
def test_ungradable_submissions_name_the_reason(graded, student, status, reason):
    got = outcome(graded, student)
    assert (got["status"], reason in got["reason"]) == (status, True), got
    line = next(line for line in graded["done"].stdout.splitlines() if line.startswith(student + " "))
    assert reason in line
    assert not (graded["root"] / "autograded" / student / ASSIGNMENT).exists()  # as nbgrader leaves a failure


@pytest.mark.parametrize("student, score, note", [
    ("cells-deleted", 2.0, "toy: cells missing from the submission: square, test_square"),
    ("infinite-loop", 1.0, f"toy:cube timed out after {CELL_TIMEOUT} s"),
    ("memory-hog", 1.0, "toy:cube ran out of memory (MemoryError)"),
    ("huge-output", 3.0, "toy:cube printed too many lines: nbgrader kept the first LimitOutput.max_lines"),
    ("warns", 2.0, "toy:test_square wrote to stderr, which nbgrader scores as 0: "),
])
def test_odd_submissions_are_graded_with_a_note(graded, student, score, note):
    got = outcome(graded, student)
    assert (got["status"], got["score"]) == ("graded", score), got
    assert any(note in n for n in got["notes"]), got["notes"]


def test_notes_reach_the_feedback_where_nbgrader_carries_them(graded):
    """The timed-out cell's error stays in the autograded notebook, so generate_feedback shows it."""
    root = graded["root"]
    nbgrader("generate_feedback", ASSIGNMENT, "--student", "infinite-loop", cwd=root)
    html = next((root / "feedback" / "infinite-loop" / ASSIGNMENT).glob("*.html")).read_text()
    assert "CellTimeoutError" in html


def test_a_stopped_students_kernel_dies_with_its_worker(graded):
    assert graded["crawler seen"], "the crawling kernel never ran"
    assert _gone(CRAWLER), "the stopped student's kernel outlived the grading run"


def test_stock_nbgrader_leaves_the_same_gradebook(graded):
    """Stock `nbgrader autograde` on the same corpus, less the two our time limit stopped (stock would
    sit through 100 s for one and block forever on the other): the rows it writes equal ours,
    failures included. Stock aborts the whole batch at the duplicated cell, so it needs a second run."""
    stopped = {"crawls", "fifo"}
    stock = copy_course(graded["pristine"], graded["scratch"] / "stock")
    _submit_all(stock, graded["submissions"], skip=stopped)
    done = nbgrader("autograde", ASSIGNMENT, cwd=stock, check=False)
    assert done.returncode == 1 and "use an old version" in done.stderr
    assert not list((stock / "autograded").glob(f"*/{ASSIGNMENT}")), "stock stopped at the first student"
    done = nbgrader("autograde", ASSIGNMENT, "--CourseDirectory.student_id_exclude=cell-duplicated", cwd=stock,
                    check=False)
    assert done.returncode == 1  # the rest of the batch: nbgrader finishes it, then reports the errors
    ours = {key: row for key, row in gradebook_rows(graded["root"]).items() if key[1] not in stopped}
    assert gradebook_rows(stock) == ours
    for student, got in graded["outcomes"].items():
        if student not in stopped:
            assert (stock / "autograded" / student / ASSIGNMENT).exists() == (got["status"] == "graded"), student


def test_without_warm_kernels_a_stopped_students_kernel_dies_too(tmp_path):
    """--no-warm kernels are launched through bwrap, apart from the worker's process group: the parent kills
    their sandbox by pid."""
    root = make_course(tmp_path / "course", timeout=CELL_TIMEOUT)
    submit(root, "crawls", _crawling(root, "crawl-cold"))
    watch = _Watch("crawl-cold")
    watch.start()
    done = subprocess.run([sys.executable, "-m", "grader", "autograde", ASSIGNMENT, "--no-warm", "--quiet",
                           "--student-timeout", "12", "--report", "report.json"],
                          cwd=root, env=tool_env(), capture_output=True, text=True, timeout=300)
    watch.done.set()
    assert done.returncode == 1
    assert report(root / "report.json")["crawls"]["status"] == "timed out"
    assert watch.seen, "the crawling kernel never ran"
    assert _gone("crawl-cold", seconds=2)
