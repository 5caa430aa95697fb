"""`python -m grader autograde`: parallel grading equal to stock nbgrader, resumable, safe under
concurrency, and with each notebook isolated from the previous student's leftovers."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import nbgrader, tool_env
from synthetic_course import (ASSIGNMENT, RIGHT, WRONG, answered, copy_course, gradebook_rows, integrity,
                              make_course, report, source_notebook, submit, cell)

pytestmark = pytest.mark.notebooks


def variant_answers(kind: str) -> dict:
    """Answers of a student of kind e.g. 'RWE': square right, cube wrong, written answer given."""
    answers = {"square": (RIGHT if kind[0] == "R" else WRONG)["square"],
               "cube": (RIGHT if kind[1] == "R" else WRONG)["cube"]}
    if kind[2] == "E":
        answers["explain"] = "Because."
    return answers


# Every combination of a right or wrong square, a right or wrong cube, a written answer or none.
KINDS = ["".join(k) for k in itertools.product("RW", "RW", "E_")]


def autograde(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The grader's CLI, run from the course root as an instructor would."""
    done = subprocess.run([sys.executable, "-m", "grader", "autograde", ASSIGNMENT, "--report", "report.json",
                           "--quiet", *args], cwd=root, env=tool_env(), capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        pytest.fail(f"grader autograde exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def stock(tmp_path_factory) -> Path:
    """One student of each kind, graded by stock `nbgrader autograde` (sequential)."""
    root = make_course(tmp_path_factory.mktemp("stock"))
    for kind in KINDS:
        submit(root, kind, answered(root, variant_answers(kind)))
    pristine = copy_course(root, root.parent / "pristine")
    nbgrader("autograde", ASSIGNMENT, cwd=root)
    return root, pristine


def test_parallel_grades_equal_stock_nbgrader(stock):
    graded, pristine = stock
    ours = copy_course(pristine, pristine.parent / "ours")
    done = autograde(ours, "--workers", "2")
    assert gradebook_rows(ours) == gradebook_rows(graded)
    outcomes = report(ours / "report.json")
    assert {s: o["status"] for s, o in outcomes.items()} == {kind: "graded" for kind in KINDS}
    assert outcomes["RRE"]["score"] == 3.0 and outcomes["WW_"]["score"] == 0.0  # the written point is manual
    assert "8 submissions: 8 graded" in done.stdout
    for kind in KINDS:  # the autograded notebooks nbgrader wrote are there too
        assert (ours / "autograded" / kind / ASSIGNMENT / "toy.ipynb").is_file()


@pytest.mark.slow
def test_many_concurrent_students_lose_no_gradebook_write(stock, tmp_path):
    """24 students over 3 workers on one SQLite gradebook: every row present and equal to stock's."""
    graded, pristine = stock
    expected = {key[1]: rows for key, rows in gradebook_rows(graded).items()}
    root = make_course(tmp_path / "many")
    students = {f"{kind}-{n}": kind for n in range(3) for kind in KINDS}
    for student, kind in students.items():
        submit(root, student, answered(root, variant_answers(kind)))
    autograde(root, "--workers", "3")
    rows = gradebook_rows(root)
    assert sorted(key[1] for key in rows) == sorted(students)
    for (_, student, _), got in rows.items():
        assert got == expected[students[student]], student
    assert integrity(root) == "ok"
    assert all(o["status"] == "graded" for o in report(root / "report.json").values())


@pytest.mark.slow
def test_rerun_skips_graded_students_until_forced(stock):
    _, pristine = stock
    root = copy_course(pristine, pristine.parent / "resume")
    autograde(root, "--workers", "1", "--student", "RR*")
    assert {s for s, o in report(root / "report.json").items() if o["status"] == "graded"} == {"RRE", "RR_"}

    autograde(root, "--workers", "1")  # resumes: only the six not graded yet
    statuses = {s: o["status"] for s, o in report(root / "report.json").items()}
    assert statuses == {kind: "skipped" if kind.startswith("RR") else "graded" for kind in KINDS}
    before = gradebook_rows(root)

    done = autograde(root, "--workers", "1")
    assert set(o["status"] for o in report(root / "report.json").values()) == {"skipped"}
    assert "--force grades them again" in done.stdout

    autograde(root, "--workers", "2", "--force", "--student", "WWE")
    assert [s for s, o in report(root / "report.json").items() if o["status"] == "graded"] == ["WWE"]
    assert gradebook_rows(root) == before


@pytest.mark.slow
def test_nbgrader_options_reach_every_worker(stock):
    """Options nbgrader understands (here Execute.timeout) pass through to the converter in each worker."""
    _, pristine = stock
    root = copy_course(pristine, pristine.parent / "options")
    submit(root, "sleepy", answered(root, {"square": "import time\ntime.sleep(30)\ndef square(x):\n    return x * x"}))
    autograde(root, "--workers", "2", "--student", "sleepy", "--Execute.timeout=2")
    outcome = report(root / "report.json")["sleepy"]
    assert outcome["status"] == "graded" and outcome["seconds"] < 25
    assert any("square timed out after 2 s" in note for note in outcome["notes"])


# ------------------------------------------------------------------ isolation of warm kernels

POLLUTE = '''import builtins, math, os, string, sys, types
builtins.LEFTOVER = "from the previous student"
os.environ["LEFTOVER"] = "1"
math.sqrt = lambda x: -1.0
string.capwords = lambda *a, **k: "patched"
sys.modules["leftover_module"] = types.ModuleType("leftover_module")
sys.path.append("/leftover")
open("leftover.txt", "w").write("left behind")
os.chdir("..")
'''
CLEAN_STATE_TEST = '''"""Check that nothing from another student's kernel is here."""
import builtins, math, os, string, sys
assert not hasattr(builtins, "LEFTOVER")
assert "LEFTOVER" not in os.environ
assert math.sqrt(4) == 2
assert string.capwords("a b") == "A B"
assert "leftover_module" not in sys.modules
assert "/leftover" not in sys.path
assert not os.path.exists("leftover.txt")
assert os.path.basename(os.getcwd()) == "toy"
'''


def isolation_notebook():
    return source_notebook([
        cell("code", "### BEGIN SOLUTION\npass\n### END SOLUTION", "leftovers", solution=True),
        cell("code", CLEAN_STATE_TEST, "test_clean_state", grade=True, locked=True, points=1),
    ])


def test_a_student_never_sees_the_previous_students_leftovers(tmp_path):
    root = make_course(tmp_path / "iso", notebook=isolation_notebook())
    order = []
    for n in range(3):  # one worker grades them in this order: polluter, victim, polluter, victim...
        submit(root, f"s{n}-a-polluter", answered(root, RIGHT | {"leftovers": POLLUTE}))
        submit(root, f"s{n}-b-victim", answered(root, RIGHT | {"leftovers": "pass"}))
        order += [f"s{n}-a-polluter", f"s{n}-b-victim"]
    autograde(root, "--workers", "1")
    outcomes = report(root / "report.json")
    rows = {key[1]: dict((g[0], g[1]) for g in value["grades"]) for key, value in gradebook_rows(root).items()}
    for student in order:
        assert outcomes[student]["kernels"] == {"forked": 1, "normal": 0, "why_normal": ""}, student
        assert rows[student]["test_clean_state"] == (0.0 if "polluter" in student else 1.0), student
    assert outcomes["s0-a-polluter"]["score"] == 3.0 and outcomes["s2-b-victim"]["score"] == 4.0


def test_the_isolation_test_would_catch_a_shared_interpreter(tmp_path):
    """Control: run the polluter's code and then the victim's test in one process, and the test fails."""
    (tmp_path / "toy").mkdir()
    script = f"exec({POLLUTE!r})\nimport os\nos.chdir({str(tmp_path / 'toy')!r})\nexec({CLEAN_STATE_TEST!r})"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path / "toy", capture_output=True, text=True)
    assert done.returncode != 0 and "AssertionError" in done.stderr


# ------------------------------------------------------------------ the fork server on its own

def _kernels_module():
    from grader.grading import autograde_worker

    return autograde_worker.load_sibling("kernels")


PROBE = r'''
import json, os, signal, sys, threading
print(json.dumps({"path": sys.path, "argv": sys.argv[2:], "cwd": os.getcwd(), "name": __name__,
                  "env": sorted(k for k in os.environ if k != "JPY_PARENT_PID"),
                  "sigint": str(signal.getsignal(signal.SIGINT)), "threads": len(threading.enumerate()),
                  "leads_group": os.getpgid(0) == os.getpid(), "stdin": os.readlink("/proc/self/fd/0")[:5]}))
'''


def _run_probe(folder: Path) -> dict:
    import json

    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROBE)],
                                        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                 "language": "python"}})
    NotebookClient(notebook, kernel_manager_class=AsyncKernelManager, resources={"metadata": {"path": str(folder)}},
                   extra_arguments=["--HistoryManager.hist_file=:memory:"]).execute()
    probe = json.loads(notebook.cells[0].outputs[0]["text"])
    probe["argv"] = probe["argv"][1:]  # the connection file's name differs
    probe["cwd"] = os.path.basename(probe["cwd"])  # each kernel runs in a fresh copy of the folder
    return probe


def test_a_forked_kernel_looks_like_a_freshly_started_one(tmp_path):
    """Forked by the warm server, or launched through bwrap as stock nbgrader's GuardedExecute launches it."""
    kernels = _kernels_module()
    kernels.install(None)
    try:
        fresh = _run_probe(tmp_path)
    finally:
        kernels.uninstall()
    server = kernels.ForkServer()
    server.preload(["math"])
    kernels.install(server)
    try:
        forked = _run_probe(tmp_path)
        assert (server.forked, server.fallbacks, server.problem) == (1, 0, "")
    finally:
        kernels.uninstall()
        server.close()
    assert forked == fresh
    assert fresh["cwd"] == tmp_path.name


def test_the_fork_server_refuses_to_fork_a_state_with_threads(tmp_path):
    """A preloaded module that starts a thread makes forking unsafe: kernels then start the normal way."""
    (tmp_path / "starts_a_thread.py").write_text("import threading, time\n"
                                                 "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    tmp_path.chmod(0o755)  # readable by the sandbox's own uid (pytest makes it 0700)
    kernels = _kernels_module()
    server = kernels.ForkServer(env=dict(os.environ, PYTHONPATH=str(tmp_path)), readonly=[str(tmp_path)])
    server.preload(["starts_a_thread"])
    kernels.install(server)
    try:
        assert not server.wait_ready()
        assert "a Python thread is running" in server.problem
        assert _run_probe(tmp_path)["cwd"] == tmp_path.name  # graded all the same, by a kernel launched through bwrap
        assert (server.forked, server.fallbacks) == (0, 1)
    finally:
        kernels.uninstall()
        server.close()
