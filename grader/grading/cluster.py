"""`python -m grader autograde ASSIGNMENT --cluster local:N | --scheduler tcp://HOST:8786`: grading on a Dask cluster.

The instructor's process (`main`) is the only writer of the gradebook and of autograded/. It plans as the
single-machine command does (nbgrader's rule for who is graded already), checks that every worker runs
this course's version, then sends each student to the cluster as one task: the submitted files, the
student's rows of the gradebook, and (once per worker, scattered) the course bundle: nbgrader_config.py,
the assignments' source folders and their definitions from the gradebook. It writes each result back with
nbgrader's API, once per student, as results arrive.

A worker grades each student through the single-machine path, in a scratch course (cluster_worker.py). The
code it runs is its own installation, loaded without importing the grader package (whose __init__ imports
torch): `_on_worker` is shipped by value and loads grader/grading/ as the package `grader_grading`.
"""

import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from . import autograde
from . import autograde_worker as worker_code
from .cluster_worker import (BROKEN, TOPIC, _differences, _read_files, _write_files, assignment_definition,
                             course_version, student_rows, write_student_rows)


# ---------------------------------------------------------------- code shipped to workers by value

class _ByValue:
    """A function pickled by value (cloudpickle), with its module: dask pickles a task's function by reference,
    which would make the worker import the grader package, hence torch."""

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        return self.function(*args)

    def __reduce__(self):
        import cloudpickle

        module = sys.modules[self.function.__module__]
        cloudpickle.register_pickle_by_value(module)
        try:
            return cloudpickle.loads, (cloudpickle.dumps(self.function),)
        finally:
            cloudpickle.unregister_pickle_by_value(module)


def _on_worker(function: str, *args):
    """Call grader/grading/cluster_worker.py's `function` from the worker's own installation, without running
    grader/__init__.py: grader/grading/ is loaded as the package `grader_grading`."""
    import importlib
    import importlib.util
    import os
    import sys
    import types

    if "grader_grading" not in sys.modules:
        spec = importlib.util.find_spec("grader")
        if spec is None:
            raise RuntimeError("the course's grader package is not installed in this worker's environment")
        package = types.ModuleType("grader_grading")
        package.__path__ = [os.path.join(spec.submodule_search_locations[0], "grading")]
        sys.modules["grader_grading"] = package
    return getattr(importlib.import_module("grader_grading.cluster_worker"), function)(*args)


# ---------------------------------------------------------------- the instructor's side

WORKER_DROPS = ("--db", "--CourseDirectory.db_url", "--course-dir", "--CourseDirectory.root", "--student",
                "--CourseDirectory.student_id", "--force", "--Autograde.force")


def course_bundle(app, assignments: list[str], passthrough: list[str], args, threads_here: dict) -> dict:
    """What every worker needs, the same for every student: the course's config, the sources, their gradebook rows."""
    from nbgrader.api import Gradebook

    coursedir = app.coursedir
    config = Path.cwd() / "nbgrader_config.py"  # nbgrader reads the course's configuration from the current folder
    layout = {key: getattr(coursedir, key) for key in ("source_directory", "submitted_directory",
                                                       "autograded_directory", "directory_structure", "notebook_id")}
    sources = {}  # by path in the course folder, as this machine's configuration lays it out
    for assignment in assignments:
        folder = Path(coursedir.format_path(coursedir.source_directory, ".", assignment))
        sources.update({str(folder.relative_to(coursedir.root) / name): data
                        for name, data in _read_files(folder).items()})
    with Gradebook(coursedir.db_url, coursedir.course_id) as gradebook:
        definitions = [assignment_definition(gradebook, a) for a in assignments]
    bundle = {"version": course_version(), "config": config.read_text() if config.exists() else "",
              "layout": layout, "course_id": coursedir.course_id, "assignments": assignments, "sources": sources,
              "definitions": definitions, "warm": args.warm, "unsafe": args.unsafe_no_sandbox,
              "worker_args": [a for a in passthrough if a.split("=", 1)[0] not in WORKER_DROPS],
              "preload": None if args.preload is None else [m for m in args.preload.split(",") if m],
              "kernel_threads": args.kernel_threads, "threads_here": threads_here}
    digest = hashlib.sha256(json.dumps(bundle, sort_keys=True, default=lambda o: o.hex() if isinstance(o, bytes)
                                       else str(o)).encode())
    bundle["key"] = digest.hexdigest()[:16]
    return bundle


def connect(args):
    """(client, cluster or None) for --cluster local:N or --scheduler ADDRESS."""
    from distributed import Client, LocalCluster

    if args.scheduler:
        client = Client(args.scheduler, timeout=60)
        client.wait_for_workers(1, timeout=300)
        return client, None
    kind, _, count = args.cluster.partition(":")
    if kind != "local" or not count.isdigit() or int(count) < 1:
        raise SystemExit(f"grader autograde: --cluster takes local:N (N worker processes), not {args.cluster!r}")
    cluster = LocalCluster(n_workers=int(count), threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit=0)  # grading runs in subprocesses, each under the sandbox's limits
    return Client(cluster), cluster


def check_workers(client) -> tuple[dict, dict]:
    """({address: version}, {host: threads}); refuses a cluster with another course version."""
    mine = course_version()
    try:
        found = client.run(_ByValue(course_version))
        hosts = client.run(socket.gethostname)
    except Exception as error:
        raise SystemExit(f"grader autograde: refused: a worker could not report its course version: {error}") from None
    different = {address: version for address, version in found.items() if version != mine}
    if different:
        lines = [f"  {address} ({hosts.get(address, '?')}): {_differences(mine, version)}"
                 for address, version in sorted(different.items())]
        raise SystemExit(f"grader autograde: refused before grading: {len(different)} of {len(found)} workers run "
                         "another version of the course than this machine (install the same course and packages on "
                         "every worker, then restart them):\n" + "\n".join(lines))
    threads_here: dict = {}
    for address, threads in client.nthreads().items():
        host = hosts.get(address, address)
        threads_here[host] = threads_here.get(host, 0) + threads
    return found, threads_here


def main(args, passthrough: list[str], nbgrader_args: list[str], assignments: list[str]) -> int:
    """The --cluster / --scheduler form of `python -m grader autograde`."""
    started = time.monotonic()
    client, cluster = connect(args)
    try:
        return _run(args, passthrough, nbgrader_args, assignments, client, started)
    except KeyboardInterrupt:
        print("grader autograde: interrupted; students in progress were left ungraded (run again to resume)",
              file=sys.stderr)
        return 130
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _run(args, passthrough, nbgrader_args, assignments, client, started) -> int:
    from nbgrader.api import Gradebook

    _, threads_here = check_workers(client)  # before anything else: another course version is refused at once
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix=f"autograde-{assignments[0]}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    app = worker_code.nbgrader_app(nbgrader_args)
    if not any(a.startswith("--log-level") for a in passthrough):
        app.log.setLevel(logging.WARNING)
    tasks, skipped, notebooks, timeout = [], [], {}, 0.0
    for assignment in assignments:
        autograde._check_gradebook(app, assignment)
        todo, passed, notebooks[assignment] = autograde.plan(app, assignment)
        tasks += [(assignment, student) for student in todo]
        skipped += [(assignment, student) for student in passed]
        timeout = max(timeout, autograde.default_student_timeout(app, notebooks[assignment]))
    if not tasks and not skipped:
        print(f"grader autograde: no submissions of {' '.join(assignments)} under {app.coursedir.root}",
              file=sys.stderr)
        return 1
    title = assignments[0] if len(assignments) == 1 else f"{len(assignments)} assignments"
    progress = autograde.Progress(title, len(tasks), quiet=args.quiet)
    outcomes = []
    if tasks:
        bundle = course_bundle(app, assignments, passthrough, args, threads_here)
        [shipped] = client.scatter([bundle], broadcast=True, hash=False)
        checked = _prepare(client, shipped)
        if not args.quiet:
            where = args.scheduler or f"a local cluster of {args.cluster.split(':')[1]}"
            print(f"grader autograde: {where}, {sum(client.nthreads().values())} grading processes; {checked}",
                  file=sys.stderr)
        try:
            with Gradebook(app.coursedir.db_url, app.coursedir.course_id) as gradebook:
                outcomes = _grade_all(client, app, gradebook, shipped, tasks, args.student_timeout or timeout,
                                      log_dir, progress)
        finally:
            progress.close()
    threads = sum(client.nthreads().values())
    wall = time.monotonic() - started
    outcomes += [{"assignment": a, "student": s, "status": "skipped", "score": None, "max_score": None,
                  "seconds": 0.0, "reason": "already graded"} for a, s in skipped]
    outcomes.sort(key=lambda o: (o["assignment"], o["student"]))
    print(autograde.table(outcomes))
    graded_notebooks = sum(len(notebooks[a]) for a, _ in tasks)
    print(autograde.summary(outcomes, graded_notebooks, threads, wall, log_dir))
    if args.report:
        args.report.write_text(json.dumps({
            "assignments": assignments, "workers": threads, "wall_seconds": round(wall, 2),
            "notebooks": graded_notebooks, "warm": args.warm, "cluster": args.scheduler or args.cluster,
            "students": outcomes}, indent=1, default=str))
    return 0 if all(o["status"] in ("graded", "skipped") for o in outcomes) else 1


def _prepare(client, shipped) -> str:
    """Every worker sets up its scratch course and starts its grading processes (in parallel); their start-up line."""
    futures = [client.submit(_ByValue(_on_worker), "prepare", shipped, threads, workers=[address],
                             allow_other_workers=False, pure=False, key=f"grader-prepare-{address}")
               for address, threads in client.nthreads().items()]
    lines = {}
    for future in futures:
        try:
            lines[future.result()] = True
        except Exception as error:
            raise SystemExit(f"grader autograde: grading refused on a worker: {error}") from None
    return " | ".join(lines)


def _grade_all(client, app, gradebook, shipped, tasks, timeout, log_dir, progress) -> list[dict]:
    """Submit students a window at a time (each worker thread busy, one more queued); write each result once."""
    from distributed import KilledWorker, wait

    pending, in_flight, outcomes, send_seconds = list(reversed(tasks)), {}, {}, {}
    running: set = set()

    def on_event(event):
        _, message = event
        key = (message["assignment"], message["student"])
        (running.add if message["event"] == "started" else running.discard)(key)

    client.subscribe_topic(TOPIC, on_event)
    coursedir = app.coursedir
    while pending or in_flight:
        window = 2 * max(1, sum(client.nthreads().values()))
        while pending and len(in_flight) < window:
            assignment, student = task = pending.pop()
            sending = time.monotonic()
            folder = Path(coursedir.format_path(coursedir.submitted_directory, student, assignment))
            job = {"assignment": assignment, "student": student, "files": _read_files(folder), "timeout": timeout,
                   "rows": student_rows(gradebook, assignment, student)}
            future = client.submit(_ByValue(_on_worker), "grade", shipped, job, pure=False,
                                   key=f"grader-autograde-{assignment}-{student}-{time.monotonic_ns()}")
            in_flight[future] = task
            send_seconds[task] = round(time.monotonic() - sending, 3)
        progress.running = len(running & set(in_flight.values()))
        progress.update()
        try:
            done = wait(list(in_flight), timeout=0.5, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            continue
        for future in done:
            task = in_flight.pop(future)
            assignment, student = task
            try:
                result = future.result()
            except KilledWorker as error:
                outcome = _lost(task, "crashed", "every cluster worker that graded this student died, as many times "
                                                 "as dask allows (distributed.scheduler.allowed-failures): it may "
                                                 "crash a worker; see the workers' logs")
            except Exception as error:
                if str(error).startswith(BROKEN):
                    raise SystemExit(f"grader autograde: {error}") from None
                outcome = _lost(task, "failed", worker_code._short(f"grader error on the cluster: "
                                                                   f"{type(error).__name__}: {error}", 300))
            else:
                writing = time.monotonic()
                outcome = _record(app, gradebook, result, log_dir)
                outcome["write_seconds"] = round(time.monotonic() - writing, 3)
            if outcome["status"] != "graded":
                autograde.remove_output(app, assignment, student)
            outcome.update(send_seconds=send_seconds[task], done_at=round(time.monotonic() - progress.started, 2))
            outcomes[task] = outcome
            running.discard(task)
            progress.done += 1
            progress.failed += outcome["status"] != "graded"
            progress.update(outcome)
    client.unsubscribe_topic(TOPIC)
    return [outcomes[task] for task in tasks]


def _lost(task, status: str, reason: str) -> dict:
    return {"assignment": task[0], "student": task[1], "status": status, "reason": reason, "seconds": 0.0,
            "score": None, "max_score": None}


def _record(app, gradebook, result: dict, log_dir: Path) -> dict:
    """Write one student's result: the gradebook rows (nbgrader's API), the autograded folder, the log."""
    outcome = result["outcome"]
    assignment, student = outcome["assignment"], outcome["student"]
    write_student_rows(gradebook, assignment, student, result["rows"])
    coursedir = app.coursedir
    if outcome["status"] == "graded":
        output = Path(coursedir.format_path(coursedir.autograded_directory, student, assignment))
        if coursedir.notebook_id == "*":
            shutil.rmtree(output, ignore_errors=True)
        _write_files(output, result["files"])
    (log_dir / assignment).mkdir(exist_ok=True)
    (log_dir / assignment / f"{student}.log").write_text(result["log"])
    from nbgrader.api import MissingEntry

    try:
        outcome["score"] = gradebook.find_submission(assignment, student).score
        outcome["max_score"] = gradebook.find_assignment(assignment).max_score
    except MissingEntry:
        outcome["score"] = outcome["max_score"] = None
    outcome.update(worker=result["worker"], host=result["host"],
                   overhead_seconds=round(result["task_seconds"] - result["grading_seconds"], 3))
    return outcome
