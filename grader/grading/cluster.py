"""`python -m grader autograde ASSIGNMENT --cluster local:N | --scheduler tcp://HOST:8786`: grading on a Dask cluster.

The instructor's process (`main`) is the only writer of the gradebook and of autograded/. It plans as the
single-machine command does (nbgrader's rule for who is graded already), checks that every worker runs
this course's version, then sends each student to the cluster as one task: the submitted files, the
student's rows of the gradebook, and (once per worker, scattered) the course bundle: nbgrader_config.py,
the assignments' source folders and their definitions from the gradebook. It writes each result back with
nbgrader's API, once per student, as results arrive.

A worker (`Session`) builds a scratch course from the bundle, with a throw-away SQLite gradebook holding
the assignments and, before each task, this student's rows as the real gradebook holds them. It grades
through the single-machine path: a `Pool` of autograde.py with one grading process per worker thread
(autograde_worker.py: nbgrader's Autograde converter, the sandbox, warm kernels, the re-run), and returns
the autograded folder, the student's rows after grading, the outcome and the log.

Worker-side code is the worker's own installation, loaded without importing the grader package (whose
__init__ imports torch): `_on_worker` is shipped by value and loads grader/grading/ as the package
`grader_grading`.
"""

import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

from . import autograde
from . import autograde_worker as worker_code

TOPIC = "grader-autograde"  # dask events: a task started or finished grading (assignment, student, worker pid)
SESSIONS: dict = {}  # on a worker: bundle key -> Session
VERSION_PACKAGES = ("nbgrader", "nbconvert", "nbclient", "jupyter_client", "ipykernel", "torch", "distributed")


# ---------------------------------------------------------------- code shipped to workers by value

class _ByValue:
    """A function of this module, pickled by value (cloudpickle): dask pickles a task's function by reference,
    which would make the worker import the grader package, hence torch."""

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        return self.function(*args)

    def __reduce__(self):
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        try:
            return cloudpickle.loads, (cloudpickle.dumps(self.function),)
        finally:
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def course_version() -> dict:
    """What a worker must share with the instructor's machine: the grader package's files (hashed), the versions of
    the packages grading runs, Python's. Self-contained: it runs by value on workers."""
    import hashlib
    import importlib.metadata
    import importlib.util
    import platform
    from pathlib import Path

    spec = importlib.util.find_spec("grader")
    digest = hashlib.sha256()
    if spec is not None:
        package = Path(spec.submodule_search_locations[0])
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    found = {"grader package": digest.hexdigest()[:16] if spec is not None else "not installed",
             "python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _on_worker(function: str, *args):
    """Call grader/grading/cluster.py's `function` from the worker's own installation, without running
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
    return getattr(importlib.import_module("grader_grading.cluster"), function)(*args)


# ---------------------------------------------------------------- gradebook rows, through nbgrader's API

GRADE_FIELDS = ("auto_score", "manual_score", "extra_credit", "needs_manual_grade")
COMMENT_FIELDS = ("auto_comment", "manual_comment")
STUDENT_FIELDS = ("first_name", "last_name", "email", "lms_user_id")


def assignment_definition(gradebook, name: str) -> dict:
    """An assignment as generate_assignment stored it: what nbgrader's autograde reads from the gradebook."""
    assignment = gradebook.find_assignment(name)
    return {"name": name, "duedate": assignment.duedate, "notebooks": [{
        "name": nb.name, "kernelspec": nb.kernelspec,
        "grade": [(c.name, c.max_score, c.cell_type) for c in nb.grade_cells],
        "task": [(c.name, c.max_score, c.cell_type) for c in nb.task_cells],
        "solution": [c.name for c in nb.solution_cells],
        "source": [(c.name, c.cell_type, c.locked, c.source, c.checksum) for c in nb.source_cells],
    } for nb in assignment.notebooks]}


def define_assignment(gradebook, definition: dict) -> None:
    name = definition["name"]
    gradebook.update_or_create_assignment(name, duedate=definition["duedate"])
    for nb in definition["notebooks"]:
        gradebook.update_or_create_notebook(nb["name"], name, kernelspec=nb["kernelspec"])
        for cell, max_score, cell_type in nb["grade"]:
            gradebook.update_or_create_grade_cell(cell, nb["name"], name, max_score=max_score, cell_type=cell_type)
        for cell, max_score, cell_type in nb["task"]:
            gradebook.update_or_create_task_cell(cell, nb["name"], name, max_score=max_score, cell_type=cell_type)
        for cell in nb["solution"]:
            gradebook.update_or_create_solution_cell(cell, nb["name"], name)
        for cell, cell_type, locked, source, checksum in nb["source"]:
            gradebook.update_or_create_source_cell(cell, nb["name"], name, cell_type=cell_type, locked=locked,
                                                   source=source, checksum=checksum)


def student_rows(gradebook, assignment: str, student: str) -> dict:
    """Everything the gradebook holds of one student's submission: the student, the submission's timestamp and
    extension, and per notebook its flag, late penalty, grades and comments."""
    from nbgrader.api import MissingEntry

    rows = {"student": None, "submission": None}
    try:
        found = gradebook.find_student(student)
        rows["student"] = {field: getattr(found, field) for field in STUDENT_FIELDS}
        submission = gradebook.find_submission(assignment, student)
    except MissingEntry:
        return rows
    rows["submission"] = {"timestamp": submission.timestamp, "extension": submission.extension, "notebooks": {
        nb.name: {"flagged": nb.flagged, "late_submission_penalty": nb.late_submission_penalty,
                  "grades": {g.name: {f: getattr(g, f) for f in GRADE_FIELDS} for g in nb.grades},
                  "comments": {c.name: {f: getattr(c, f) for f in COMMENT_FIELDS} for c in nb.comments}}
        for nb in submission.notebooks}}
    return rows


def write_student_rows(gradebook, assignment: str, student: str, rows: dict, *, exact: bool = False) -> None:
    """Store `rows` (from `student_rows`). `exact`: also remove what `rows` lacks (a worker's scratch gradebook
    mirrors the real one); otherwise a row missing from `rows` is left alone, as nbgrader never removes one."""

    with warnings.catch_warnings():  # nbgrader's add_submission makes SQLAlchemy warn as it autoflushes: not ours to show
        warnings.simplefilter("ignore", category=Warning)
        _write_student_rows(gradebook, assignment, student, rows, exact)


def _write_student_rows(gradebook, assignment: str, student: str, rows: dict, exact: bool) -> None:
    from nbgrader.api import MissingEntry

    if rows["student"] is None or rows["submission"] is None:
        if exact:
            with contextlib.suppress(MissingEntry):
                if rows["student"] is None:
                    gradebook.remove_student(student)
                else:
                    gradebook.remove_submission(assignment, student)
        if rows["student"] is None:
            return
    gradebook.update_or_create_student(student, **rows["student"])
    if rows["submission"] is None:
        return
    kept = rows["submission"]
    submission = gradebook.update_or_create_submission(assignment, student, timestamp=kept["timestamp"],
                                                       extension=kept["extension"])
    for nb in submission.notebooks:
        values = kept["notebooks"].get(nb.name)
        if values is None:
            continue
        nb.flagged, nb.late_submission_penalty = values["flagged"], values["late_submission_penalty"]
        for items, stored in ((nb.grades, values["grades"]), (nb.comments, values["comments"])):
            for item in items:
                for field, value in stored.get(item.name, {}).items():
                    setattr(item, field, value)
    gradebook.db.commit()


# ---------------------------------------------------------------- the worker's side

class Session:
    """A scratch course on a worker, for one bundle: its folder, its SQLite gradebook, one grading Pool per
    worker thread (each a grading process with its warm server)."""

    def __init__(self, bundle: dict, where: str):
        worker_code.skip_unused_imports()
        from nbgrader.api import Gradebook
        from nbgrader.coursedir import CourseDirectory

        self.bundle = bundle
        here = os.path.dirname(sys.executable)  # nbgrader runs `alembic` by name, to create a gradebook
        if here not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
        if bundle.get("unsafe"):
            os.environ[worker_code.load_sibling("sandbox").UNSAFE_ENV] = "1"
        self.root = Path(tempfile.mkdtemp(prefix="grader-course-", dir=where))
        layout = bundle["layout"]
        self.coursedir = CourseDirectory(root=str(self.root), **layout)
        (self.root / "nbgrader_config.py").write_text(bundle["config"])
        for assignment, files in bundle["sources"].items():
            _write_files(Path(self.coursedir.format_path(layout["source_directory"], ".", assignment)), files)
        self.db_url = f"sqlite:///{self.root / 'gradebook.db'}"
        with Gradebook(self.db_url, bundle["course_id"]) as gradebook:
            for definition in bundle["definitions"]:
                define_assignment(gradebook, definition)
        self.db_url = worker_code.with_busy_timeout(self.db_url)  # one writer per worker thread
        self.log_dir = self.root / "logs"
        self.log_dir.mkdir()
        sandbox = worker_code.load_sibling("sandbox")
        secrets = [str(self.root / "gradebook.db")] + [str(self.root / layout[k]) for k in
                                                       ("source_directory", "submitted_directory",
                                                        "autograded_directory")]
        self.checked = sandbox.preflight(str(self.root), secrets=secrets)
        cores = len(os.sched_getaffinity(0))
        threads = bundle["kernel_threads"] or max(1, cores // bundle["threads_here"].get(socket.gethostname(), 1))
        pinned = [f"--CourseDirectory.{key}={value}" for key, value in layout.items()]
        self.settings = {
            "nbgrader_args": [bundle["assignments"][0], *bundle["worker_args"], *pinned, f"--db={self.db_url}",
                              f"--CourseDirectory.root={self.root}", "--force"],
            "assignments": bundle["assignments"], "warm": bundle["warm"], "log_dir": str(self.log_dir),
            "checked": True, "preload": bundle["preload"], "cwd": str(self.root),
            "thread_env": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}}
        self.app = SimpleNamespace(coursedir=self.coursedir)  # what Pool needs of an nbgrader app
        self.idle: queue.LifoQueue = queue.LifoQueue()
        self.pools: list = []

    def start_pool(self):
        pool = autograde.Pool(self.settings, self.log_dir, autograde.Progress("", 0, quiet=True))
        pool.start(1)
        self.pools.append(pool)
        return pool

    @contextlib.contextmanager
    def pool(self):
        try:
            pool = self.idle.get_nowait()
        except queue.Empty:
            pool = self.start_pool()
        try:
            yield pool
        finally:
            self.idle.put(pool)

    def close(self) -> None:
        for pool in self.pools:  # idle grading processes: killed with their warm servers, not waited for
            for member in pool.members:
                member.kill()
                member.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


_session_lock = threading.Lock()


def session(bundle: dict) -> Session:
    """This worker's session for the bundle, made on first use; a session for another bundle is closed."""
    from distributed import get_worker

    with _session_lock:
        if bundle["key"] not in SESSIONS:
            found = course_version()
            if found != bundle["version"]:
                raise RuntimeError(f"this worker has another course version: {_differences(bundle['version'], found)}")
            for old in list(SESSIONS):
                SESSIONS.pop(old).close()
            if not SESSIONS:
                import atexit

                atexit.register(lambda: [s.close() for s in SESSIONS.values()])
            SESSIONS[bundle["key"]] = Session(bundle, get_worker().local_directory)
        return SESSIONS[bundle["key"]]


def prepare(bundle: dict, threads: int) -> str:
    """Set up the session and start one grading process per thread; the sandbox's start-up line."""
    found = session(bundle)
    while len(found.pools) < threads:
        found.idle.put(found.start_pool())
    return found.checked


def grade(bundle: dict, job: dict) -> dict:
    """Grade one student through the single-machine Pool; what the instructor's process writes back."""
    from distributed import get_worker
    from nbgrader.api import Gradebook

    started = time.monotonic()
    worker = get_worker()
    assignment, student = job["assignment"], job["student"]
    event = {"assignment": assignment, "student": student, "pid": os.getpid(), "worker": worker.address}
    worker.log_event(TOPIC, {"event": "started", **event})
    found = session(bundle)
    coursedir = found.coursedir
    submitted = Path(coursedir.format_path(coursedir.submitted_directory, student, assignment))
    output = Path(coursedir.format_path(coursedir.autograded_directory, student, assignment))
    for folder in (submitted, output):
        shutil.rmtree(folder, ignore_errors=True)
    _write_files(submitted, job["files"])
    with Gradebook(found.db_url, bundle["course_id"]) as gradebook:
        write_student_rows(gradebook, assignment, student, job["rows"], exact=True)
    with found.pool() as pool:
        try:
            begun = time.monotonic()
            outcome = pool.run(found.app, [(assignment, student)], job["timeout"])[0]
            grading = time.monotonic() - begun
        except SystemExit as stop:  # nbgrader could not start, or grading processes keep dying at start
            raise RuntimeError(f"{BROKEN}{stop}") from None
    with Gradebook(found.db_url, bundle["course_id"]) as gradebook:
        rows = student_rows(gradebook, assignment, student)
    log = found.log_dir / assignment / f"{student}.log"
    result = {"outcome": outcome, "rows": rows, "files": _read_files(output) if output.is_dir() else {},
              "log": log.read_text(errors="replace") if log.exists() else "", "worker": worker.address,
              "host": socket.gethostname(), "grading_seconds": grading}
    for folder in (submitted, output):
        shutil.rmtree(folder, ignore_errors=True)
    log.unlink(missing_ok=True)
    result["task_seconds"] = time.monotonic() - started
    worker.log_event(TOPIC, {"event": "finished", **event})
    return result


BROKEN = "grading cannot start on this worker: "


def _write_files(folder: Path, files: dict) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _read_files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".ipynb_checkpoints" not in p.parts and "__pycache__" not in p.parts}


def _differences(here: dict, there: dict) -> str:
    return "; ".join(f"{name} {here.get(name)} here, {there.get(name)} there"
                     for name in sorted(set(here) | set(there)) if here.get(name) != there.get(name))


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
    sources = {a: _read_files(Path(coursedir.format_path(coursedir.source_directory, ".", a))) for a in assignments}
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
        print(f"grader autograde: no submissions of {' '.join(assignments)} under {app.coursedir.root}", file=sys.stderr)
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
