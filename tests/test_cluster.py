"""`python -m grader autograde --scheduler ADDRESS` on a Dask LocalCluster of 2 worker processes: the gradebook equals
stock `nbgrader autograde`'s, into SQLite and into a real PostgreSQL; a worker killed by its pid in the middle of a
notebook loses no student; a cluster whose workers run another version of the course is refused before grading.

One small class of the grading lab (tests/grading_lab.py, the course's own configuration) is graded once each way,
on one cluster that the module starts (the killed worker is restarted by its nanny), and read by several tests.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, nbgrader, tool_env
from grading_lab import ASSIGNMENT, make_lab_course, reference_answers, submit, with_attack
from postgres import running_postgres

pytestmark = pytest.mark.notebooks

distributed = pytest.importorskip("distributed")
COURSE_ID = "inside-nn-module"
TOPIC = "grader-autograde"  # the events grader/grading/cluster.py logs: a student's grading started / finished


def autograde(root: Path, *args: str, wait: bool = True):
    command = [sys.executable, "-m", "grader", "autograde", ASSIGNMENT, "--report", "report.json", "--quiet", *args]
    process = subprocess.Popen(command, cwd=root, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    return process.communicate(timeout=600) + (process.returncode,) if wait else process


def gradebook_rows(url: str) -> dict:
    """Every row autograde writes, per (student, notebook), read with nbgrader's API."""
    from nbgrader.api import Gradebook

    rows = {}
    with Gradebook(url, COURSE_ID) as gradebook:
        for submission in gradebook.assignment_submissions(ASSIGNMENT):
            for notebook in submission.notebooks:
                rows[submission.student.id, notebook.name] = {
                    "grades": sorted((g.name, g.auto_score, g.manual_score, g.extra_credit, g.needs_manual_grade)
                                     for g in notebook.grades),
                    "comments": sorted((c.name, c.auto_comment, c.manual_comment) for c in notebook.comments),
                    "flagged": notebook.flagged, "late_penalty": notebook.late_submission_penalty,
                    "timestamp": str(submission.timestamp), "extension": str(submission.extension)}
    return rows


def copy_assignment(source: str, target: str) -> None:
    """The lab as generate_assignment stored it, copied with nbgrader's API (cheaper than generating it again)."""
    from nbgrader.api import Gradebook

    from grader.grading.cluster_worker import assignment_definition, define_assignment

    with Gradebook(source, COURSE_ID) as gradebook:
        definition = assignment_definition(gradebook, ASSIGNMENT)
    with Gradebook(target, COURSE_ID) as gradebook:
        define_assignment(gradebook, definition)


def sqlite(root: Path) -> str:
    return f"sqlite:///{root / 'gradebook.db'}"


def report(root: Path) -> dict:
    return {o["student"]: o for o in json.loads((root / "report.json").read_text())["students"]}


STUDENTS = ("half", "reference")  # 2 of 5 points, with a "No response." comment; 5 of 5


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The class graded by stock nbgrader, then on the cluster into PostgreSQL, then into SQLite with a worker killed
    mid-notebook (its student is regraded by the other worker; the nanny restarts the killed one). Returns the courses,
    the runs, PostgreSQL's rows, the kill and the SQLite run's events."""
    base = make_lab_course(tmp_path_factory.mktemp("cluster") / "base")
    answers = reference_answers()
    submit(base, "half", with_attack(base, "nowhere", "", {"counting_functions": answers["counting_functions"]}))
    submit(base, "reference", with_attack(base, "nowhere", "", answers))
    courses = {way: shutil.copytree(base, base.parent / way) for way in ("stock", "sqlite", "postgresql")}
    nbgrader("autograde", ASSIGNMENT, cwd=courses["stock"])

    with running_postgres() as url, \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                     memory_limit=0) as cluster, distributed.Client(cluster) as client:
        copy_assignment(sqlite(courses["postgresql"]), url)
        postgresql_run = autograde(courses["postgresql"], "--scheduler", cluster.scheduler_address, f"--db={url}")
        postgresql_rows = gradebook_rows(url)

        # on warm workers: the worker whose student starts first is killed by its pid as soon as it starts (a notebook
        # takes a kernel, its cells and a re-run: seconds even on an idle machine; 2 s later was after it on one)
        before = len(client.get_events(TOPIC))
        running = autograde(courses["sqlite"], "--scheduler", cluster.scheduler_address, wait=False)
        kill = None
        while running.poll() is None:
            started = [m for _, m in client.get_events(TOPIC)[before:] if m["event"] == "started"]
            if kill is None and started:
                time.sleep(0.3)
                kill = dict(started[0], at=time.time())
                os.kill(kill["pid"], signal.SIGKILL)
            time.sleep(0.2)
        sqlite_run = running.communicate() + (running.returncode,)
        events = [dict(m, at=at) for at, m in client.get_events(TOPIC)[before:]]
    return {"courses": courses, "runs": {"sqlite": sqlite_run, "postgresql": postgresql_run}, "kill": kill,
            "events": events, "postgresql_rows": postgresql_rows}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_cluster_grades_as_stock_nbgrader(graded, database):
    courses = graded["courses"]
    out, err, code = graded["runs"][database]
    assert code == 0, f"grader autograde exited {code}:\n{out}\n{err}"
    stock = gradebook_rows(sqlite(courses["stock"]))
    assert sorted(student for student, _ in stock) == sorted(STUDENTS)
    ours = graded["postgresql_rows"] if database == "postgresql" else gradebook_rows(sqlite(courses["sqlite"]))
    assert ours == stock
    outcomes = report(courses[database])
    assert {s: o["status"] for s, o in outcomes.items()} == {s: "graded" for s in STUDENTS}
    assert outcomes["reference"]["score"] == outcomes["reference"]["max_score"] == 5.0
    assert outcomes["half"]["score"] == 2.0
    for student in STUDENTS:  # the instructor's process wrote each autograded notebook
        assert (courses[database] / "autograded" / student / ASSIGNMENT / "lab.ipynb").is_file()


def test_a_worker_killed_mid_notebook_loses_no_student(graded):
    kill, events = graded["kill"], graded["events"]
    assert kill is not None, "no student started grading"
    victim = kill["student"]
    on_killed = [e for e in events if e["student"] == victim and e["pid"] == kill["pid"]]
    assert [e["event"] for e in on_killed] == ["started"], "the kill came after the student's grading had finished"
    elsewhere = [e["event"] for e in events if e["student"] == victim and e["pid"] != kill["pid"]]
    assert elsewhere == ["started", "finished"], "the killed worker's student was not regraded on another worker"
    assert sorted(e["student"] for e in events if e["event"] == "finished") == sorted(STUDENTS)  # each once
    # each student is in the gradebook once, with stock's rows (test above); and once in the report
    assert report(graded["courses"]["sqlite"])[victim]["status"] == "graded"


def test_a_cluster_with_another_course_version_is_refused_before_grading(tmp_path, graded):
    """A worker whose grader package differs by one line (another copy first on its PYTHONPATH)."""
    other = tmp_path / "other"
    shutil.copytree(ROOT / "grader", other / "grader", ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "grader" / "grading" / "rerun.py", "a") as changed:
        changed.write("\n# a later version\n")
    root = shutil.copytree(graded["courses"]["stock"].parent / "base", tmp_path / "course")
    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None) as cluster:
        worker = subprocess.Popen([Path(sys.executable).parent / "dask", "worker", cluster.scheduler_address,
                                   "--nthreads", "1", "--no-nanny"], env=dict(tool_env(), PYTHONPATH=str(other)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with distributed.Client(cluster) as client:
                client.wait_for_workers(1, timeout=120)
            out, err, code = autograde(root, "--scheduler", cluster.scheduler_address)
        finally:
            worker.kill()
            worker.wait()
    assert code == 1, out + err
    assert "refused before grading: 1 of 1 workers run another version of the course" in err
    assert "grader package" in err
    assert not (root / "autograded").exists()
    assert gradebook_rows(sqlite(root)) == {}
