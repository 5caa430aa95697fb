"""The workers' side of `python -m grader autograde --cluster/--scheduler` (cluster.py is the instructor's side).

A worker builds a scratch course (`Session`) from the course bundle the instructor scattered: its
nbgrader_config.py, the assignments' source folders, and a throw-away SQLite gradebook holding the assignments
as the real gradebook stores them. For each student (`grade`) it puts the student's rows of the real gradebook
into the scratch one, grades through the single-machine path (autograde.py's Pool: one grading process of
autograde_worker.py per worker thread, with the sandbox, a warm server and the re-run), and returns the
outcome, the student's rows as nbgrader left them, the autograded folder and the log.

Loaded on workers as `grader_grading.cluster_worker` (cluster._on_worker), without grader/__init__.py (torch).
"""

import atexit
import contextlib
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
BROKEN = "grading cannot start on this worker: "
SESSIONS: dict = {}  # bundle key -> Session
VERSION_PACKAGES = ("nbgrader", "nbconvert", "nbclient", "jupyter_client", "ipykernel", "torch", "distributed")


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

    with warnings.catch_warnings():  # nbgrader's add_submission makes SQLAlchemy warn (autoflush): not ours to show
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

    def __init__(self, bundle: dict, where: str, threads: int = 1):
        self.bundle = bundle
        here = os.path.dirname(sys.executable)  # nbgrader runs `alembic` by name, to create a gradebook
        if here not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
        sandbox = worker_code.load_sibling("sandbox")
        if bundle.get("unsafe"):
            os.environ[sandbox.UNSAFE_ENV] = "1"
        self.root = Path(tempfile.mkdtemp(prefix="grader-course-", dir=where))
        (self.root / "nbgrader_config.py").write_text(bundle["config"])
        _write_files(self.root, bundle["sources"])  # by path in the course: the grading processes preload their imports
        self.log_dir = self.root / "logs"
        self.log_dir.mkdir()
        self.db_url = worker_code.with_busy_timeout(f"sqlite:///{self.root / 'gradebook.db'}")  # a writer per thread
        layout = bundle["layout"]
        cores = len(os.sched_getaffinity(0))
        here_threads = bundle["threads_here"].get(socket.gethostname(), 1)  # the grading processes of this machine
        kernel_threads = bundle["kernel_threads"] or max(1, cores // here_threads)
        pinned = [f"--CourseDirectory.{key}={value}" for key, value in layout.items()]
        self.settings = {
            "nbgrader_args": [bundle["assignments"][0], *bundle["worker_args"], *pinned, f"--db={self.db_url}",
                              f"--CourseDirectory.root={self.root}", "--force"],
            "assignments": bundle["assignments"], "warm": bundle["warm"], "log_dir": str(self.log_dir),
            "checked": True, "preload": bundle["preload"], "cwd": str(self.root),
            "thread_env": {"OMP_NUM_THREADS": str(kernel_threads), "MKL_NUM_THREADS": str(kernel_threads)}}
        self.idle: queue.LifoQueue = queue.LifoQueue()
        self.pools: list = []
        for _ in range(threads):  # they load nbgrader and their warm servers meanwhile; no student before the check
            self.idle.put(self.start_pool())

        worker_code.skip_unused_imports()
        from nbgrader.api import Gradebook
        from nbgrader.coursedir import CourseDirectory

        self.coursedir = CourseDirectory(root=str(self.root), **layout)
        self.app = SimpleNamespace(coursedir=self.coursedir)  # what Pool needs of an nbgrader app
        with Gradebook(self.db_url, bundle["course_id"]) as gradebook:
            for definition in bundle["definitions"]:
                define_assignment(gradebook, definition)
        secrets = [str(self.root / "gradebook.db")] + [str(self.root / layout[k]) for k in
                                                       ("source_directory", "submitted_directory",
                                                        "autograded_directory")]
        try:
            self.checked = sandbox.preflight(str(self.root), secrets=secrets)
        except BaseException:
            self.close()
            raise

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


@atexit.register
def _close_sessions() -> None:
    for found in SESSIONS.values():
        found.close()


def session(bundle: dict, threads: int = 1) -> Session:
    """This worker's session for the bundle, made on first use; a session for another bundle is closed."""
    from distributed import get_worker

    with _session_lock:
        if bundle["key"] not in SESSIONS:
            found = course_version()
            if found != bundle["version"]:
                raise RuntimeError(f"this worker has another course version: {_differences(bundle['version'], found)}")
            for old in list(SESSIONS):
                SESSIONS.pop(old).close()
            SESSIONS[bundle["key"]] = Session(bundle, get_worker().local_directory, threads)
        return SESSIONS[bundle["key"]]


def prepare(bundle: dict, threads: int) -> str:
    """Set up the session and start one grading process per thread; the sandbox's start-up line."""
    found = session(bundle, threads)
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
