"""One grading worker: nbgrader's own Autograde converter, run for each student the parent hands it.

The worker loads the course's nbgrader configuration exactly as `nbgrader autograde` does (its
AutogradeApp, with the same command-line options), then for each student sets
`CourseDirectory.student_id` and runs nbgrader's `Autograde` converter, so every preprocessor the
configuration lists runs and every gradebook row is written by nbgrader itself. It reports one
JSON line per student to the parent: the score read back from the gradebook, and a reason an
instructor can act on when something was unusual.

Protocol: the parent writes `{"assignment": ID, "student": ID}` lines to stdin; the worker answers on its original
stdout, which it keeps for itself (everything else that prints, including kernels, goes to
stderr, the worker's log).

This file has no imports from the grader package: the parent starts workers with `python -c` and
this file's path (see `command`) so that a worker does not import torch (grader/__init__.py does).
"""

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

SQLITE_BUSY_SECONDS = 120
BOOTSTRAP = ("import importlib.util as u, sys; s = u.spec_from_file_location('grader_autograde_worker', sys.argv[1]); "
             "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); m.main(sys.argv[2:])")


def command(settings: dict) -> list[str]:
    """The command line that starts a worker with these settings."""
    return [sys.executable, "-c", BOOTSTRAP, __file__, json.dumps(settings)]


def load_sibling(name: str):
    """grader/<name>.py as a standalone module (without importing the grader package, hence torch)."""
    module_name = f"grader_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


# ---------------------------------------------------------------- nbgrader, configured like the CLI

def skip_unused_imports() -> None:
    """jsonschema registers an 'iri' format checker when the optional rfc3987_syntax package imports,
    which builds a grammar and costs 1.4 s per process. Nothing on nbgrader's autograde path
    validates formats (neither nbformat, nbgrader, nbconvert, nbclient nor jupyter_client uses a
    FormatChecker), so grading processes leave it out."""
    sys.modules.setdefault("rfc3987_syntax", None)


def nbgrader_app(nbgrader_args: list[str]):
    """nbgrader's AutogradeApp, initialised from these command-line arguments (config files included)."""
    skip_unused_imports()
    from nbgrader.apps.autogradeapp import AutogradeApp

    app = AutogradeApp()
    app.initialize(list(nbgrader_args))
    if len(app.extra_args) > 1:
        raise SystemExit("nbgrader autograde takes one assignment, got: " + " ".join(app.extra_args))
    if app.extra_args:
        app.coursedir.assignment_id = app.extra_args[0]
    if not app.coursedir.assignment_id:
        raise SystemExit("an assignment must be given")
    return app


def source_notebooks(app) -> list[Path]:
    coursedir = app.coursedir
    source = Path(coursedir.format_path(coursedir.source_directory, ".", coursedir.assignment_id))
    return sorted(source.glob(f"{coursedir.notebook_id}.ipynb"))


def with_busy_timeout(db_url: str, seconds: int = SQLITE_BUSY_SECONDS) -> str:
    """An SQLite URL that waits for a concurrent writer instead of failing with 'database is locked'."""
    if not db_url.startswith("sqlite") or "timeout=" in db_url:
        return db_url
    return f"{db_url}{'&' if '?' in db_url else '?'}timeout={seconds}"


def configure(app, scratch: Path) -> None:
    """What grading in parallel needs on top of the course's configuration (which keeps precedence)."""
    from traitlets.config import Config

    app.coursedir.db_url = with_busy_timeout(app.coursedir.db_url)
    extra = Config()
    # Unix sockets in a folder of this worker's: parallel kernels cannot race for TCP ports (nbgrader #174).
    if not {"transport", "ip"} & set(app.config.get("KernelManager", {})):
        extra.KernelManager.transport = "ipc"
        extra.KernelManager.ip = str(scratch / "kernel")
    extra.NotebookClient.on_cell_execute = _note_cell  # which cell was running if the kernel dies
    app.update_config(extra)


_running = {"cell": None}


def _note_cell(cell, cell_index, **_):
    _running["cell"] = cell.metadata.get("nbgrader", {}).get("grade_id") or f"#{cell_index + 1}"


def preload_modules(app, settings: dict) -> list[str]:
    """What the warm server imports: --preload, or what the notebooks of every assignment to grade import."""
    kernels = load_sibling("kernels")
    if settings.get("preload") is not None:
        return list(settings["preload"])
    found, current = [], app.coursedir.assignment_id
    for assignment in settings.get("assignments") or [current]:
        app.coursedir.assignment_id = assignment
        found += [m for m in kernels.imported_modules(source_notebooks(app)) if m not in found]
    app.coursedir.assignment_id = current
    return found


def reruns_configured(app) -> bool:
    """Does the course's configuration re-run the tests (the grading defences' RerunTests)?"""
    preprocessors = app.config.get("Autograde", {}).get("autograde_preprocessors", [])
    return any("RerunTests" in getattr(p, "__name__", str(p)) for p in preprocessors)


def reruns_hinted() -> bool:
    """A guess, before nbgrader is loaded, that the course's configuration re-runs the tests: the warm servers
    can then start importing torch, the grader and the re-run at once (a wrong guess costs that import)."""
    try:
        return "RerunTests" in Path("nbgrader_config.py").read_text()
    except OSError:
        return False



# ---------------------------------------------------------------- one student

class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def grade(app, student: str, kernels, log_dir: Path | None) -> dict:
    """Autograde one student with nbgrader's converter; the outcome the parent reports."""
    from nbgrader.converters import Autograde, NbGraderException

    started = time.monotonic()
    for attempt in range(3):
        app.coursedir.student_id = student
        _running["cell"] = None
        kernels.last_kernel = None
        records = _Records()
        app.log.addHandler(records)
        error = ""
        try:
            Autograde(coursedir=app.coursedir, parent=app).start()
        except NbGraderException:
            error = "nbgrader"
        except Exception:
            error = traceback.format_exc()
        finally:
            app.log.removeHandler(records)
        text = "\n".join(_format(r) for r in records.records) + ("\n" + error if error not in ("", "nbgrader") else "")
        if not (error and "database is locked" in text):
            break
        time.sleep(1 + attempt)  # another writer held the SQLite lock past the busy timeout: grade again
    outcome = {"assignment": app.coursedir.assignment_id, "student": student,
               "seconds": round(time.monotonic() - started, 2)}
    if log_dir is not None:
        (log_dir / app.coursedir.assignment_id).mkdir(exist_ok=True)
        (log_dir / app.coursedir.assignment_id / f"{student}.log").write_text(text)
    if error:
        expected = [p.name for p in source_notebooks(app)]
        reason = failure_reason(text, kernels.last_kernel, expected)
        structure = structure_notes(app, student)
        if structure:  # nbgrader's own message is then often about metadata, not about what the student did
            reason = f"{'; '.join(structure)}: nbgrader refused the notebook ({reason})"
        outcome.update(status="failed", reason=reason)
    else:
        outcome.update(status="graded", notes=notes(app, student, records.records))
    outcome.update(_scores(app, student))
    return outcome


def _format(record: logging.LogRecord) -> str:
    return f"[{record.levelname}] {record.getMessage()}"


def _scores(app, student: str) -> dict:
    from nbgrader.api import Gradebook, MissingEntry

    assignment = app.coursedir.assignment_id
    with Gradebook(app.coursedir.db_url, app.coursedir.course_id) as gradebook:
        try:
            max_score = gradebook.find_assignment(assignment).max_score
            score = gradebook.find_submission(assignment, student).score
        except MissingEntry:
            return {"score": None, "max_score": None}
    return {"score": score, "max_score": max_score}


# ---------------------------------------------------------------- reasons an instructor can act on

def _signal_name(code: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(-code).name
    return f"signal {-code}"


def kernel_exit(process) -> str:
    """'exit code 3' or 'killed by SIGSEGV' for the last kernel, or '' when unknown."""
    code = None
    if process is not None:
        with contextlib.suppress(Exception):
            code = process.poll()
    if code is None:
        return ""
    if code < 0:
        name = _signal_name(code)
        return f"killed by {name}" + (": out of memory, or killed from outside" if name == "SIGKILL" else "")
    return f"exit code {code}"


def failure_reason(log: str, last_kernel=None, expected=()) -> str:
    """Why nbgrader could not grade this submission, in one line."""
    cell = _running["cell"]
    if "DeadKernelError" in log or "Kernel died" in log:
        how = kernel_exit(last_kernel)
        where = f" while running cell {cell}" if cell else ""
        return f"the kernel died{where}" + (f" ({how})" if how else "") + ": nbgrader cannot grade this submission"
    if "CellTimeoutError" in log:
        where = f"cell {cell}" if cell else "a cell"
        return f"{where} ran past Execute.timeout and did not stop when interrupted: nbgrader gave up on it"
    if "No notebooks found" in log:
        found = [Path(p).name for p in re.findall(r"Skipping unknown notebook: (.*)", log)]
        return (f"no notebook with a name of this assignment ({', '.join(expected) or '?'}) was submitted; "
                f"found {', '.join(found) or 'none'} (renamed?): nothing was graded")
    patterns = [
        (r"NotJSONError: (.*)", "a submitted notebook is not valid notebook JSON: {0}"),
        (r"nbformat\.\S*ValidationError: (.*)", "a submitted notebook is not a valid notebook: {0}"),

        (r"Kernel didn't respond in (\d+) seconds", "the kernel did not start within {0} s"),
        (r"database is locked", "the gradebook stayed locked by another writer; grade this student again"),
        (r"SchemaTooOldError|SchemaTooNewError", "a notebook's nbgrader metadata has another schema version"),
    ]
    for pattern, template in patterns:
        match = re.search(pattern, log)
        if match:
            return template.format(*(_short(g) for g in match.groups()))
    lines = [line for line in log.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"\w+(\.\w+)*(Error|Exception)\b", line.strip())]
    return _short((errors or lines or ["nbgrader failed without a message"])[-1])


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


_LOG_NOTES = [
    (r"Skipping unknown notebook: (.*)", lambda m: f"{Path(m[1]).name} is not a notebook of this assignment (renamed?): not graded"),
    (r"No submitted file: (.*)", lambda m: f"{Path(m[1]).name} was not submitted: its cells score 0"),
    (r"(\S+) is ([\d.]+) seconds late", lambda m: f"submitted {float(m[2]):.0f} s late"),
]


def notes(app, student: str, records) -> list[str]:
    """What was unusual about a graded submission: from nbgrader's warnings and the graded notebooks."""
    found = []
    for record in records:
        if record.levelno < logging.WARNING:
            continue
        message = record.getMessage()
        for pattern, explain in _LOG_NOTES:
            match = re.search(pattern, message)
            if match:
                found.append(explain(match))
                break
    found += structure_notes(app, student) + _cell_notes(app, student)
    return list(dict.fromkeys(found))


def structure_notes(app, student: str) -> list[str]:
    """How the submitted notebooks' nbgrader cells differ from the source: missing, repeated, unknown ids."""
    coursedir = app.coursedir
    folder = Path(coursedir.format_path(coursedir.submitted_directory, student, coursedir.assignment_id))
    found = []
    for source in source_notebooks(app):
        try:
            expected = _grade_ids(json.loads(source.read_text()))
            submitted = _grade_ids(json.loads((folder / source.name).read_text()))
        except (OSError, ValueError, AttributeError, TypeError):
            continue  # not submitted, or not JSON: reported elsewhere
        missing = [i for i in expected if i not in submitted]
        if missing:
            found.append(f"{source.stem}: cells missing from the submission: {', '.join(missing)}")
        for grade_id in dict.fromkeys(submitted):
            count = submitted.count(grade_id)
            if count > 1:
                found.append(f"{source.stem}: cell {grade_id} appears {count} times")
            if grade_id not in expected:
                found.append(f"{source.stem}: cell {grade_id} is not a cell of this assignment (an id was changed?)")
    return found


def _grade_ids(notebook: dict) -> list[str]:
    return [c["metadata"]["nbgrader"]["grade_id"] for c in notebook.get("cells", [])
            if isinstance(c.get("metadata", {}).get("nbgrader"), dict) and c["metadata"]["nbgrader"].get("grade_id")]


def _cell_notes(app, student: str) -> list[str]:
    import nbformat

    from nbgrader.preprocessors import Execute

    timeout = Execute(parent=app).timeout
    folder = Path(app.coursedir.format_path(app.coursedir.autograded_directory, student, app.coursedir.assignment_id))
    found = []
    for path in sorted(folder.glob("*.ipynb")):
        with contextlib.suppress(Exception):
            for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
                if cell.cell_type != "code":
                    continue
                meta = cell.metadata.get("nbgrader", {})
                name = f"{path.stem}:{meta.get('grade_id') or f'#{index + 1}'}"
                errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
                stderr = [o for o in cell.get("outputs", []) if o.output_type == "stream" and o.name == "stderr"]
                for output in errors:
                    if output.ename == "CellTimeoutError":
                        found.append(f"{name} timed out after {timeout} s and was interrupted")
                    elif output.ename == "MemoryError" or "can't allocate memory" in output.get("evalue", ""):
                        found.append(f"{name} ran out of memory ({output.ename})")
                streams = [o for o in cell.get("outputs", []) if o.output_type == "stream"]
                size = sum(len(o.text) for o in streams)
                if any("... Output truncated ..." in o.text for o in streams):
                    found.append(f"{name} printed too many lines: nbgrader kept the first LimitOutput.max_lines")
                elif size > 1_000_000:
                    found.append(f"{name} printed {size / 1e6:.1f} MB of output")
                if meta.get("grade") and stderr and not errors:
                    first = _short(stderr[0].text.strip().splitlines()[0] if stderr[0].text.strip() else "", 100)
                    found.append(f"{name} wrote to stderr, which nbgrader scores as 0: {first}")
    return found


# ---------------------------------------------------------------- the worker process

def main(argv) -> None:
    """A worker started as its own process (`command`)."""
    run(json.loads(argv[0]))


def run_forked(settings: dict, server, stdin_fd: int, stdout_fd: int, log_fd: int) -> None:
    """A worker forked by the parent, which has imported nbgrader already and started `server` (its preload
    queued): take the protocol's pipes and the log, then grade; never returns."""
    code = 1
    try:
        os.setsid()  # its own process group, as a worker the parent starts with start_new_session
        for fd, target in ((stdin_fd, 0), (stdout_fd, 1), (log_fd, 2)):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)
        if server is not None:
            server.adopt()
        run(settings, server)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stderr.flush()
        os._exit(code)


def run(settings: dict, server=None) -> None:
    """Load nbgrader as `nbgrader autograde` would, then grade each student the parent sends on stdin."""
    replies = io.TextIOWrapper(os.fdopen(os.dup(1), "wb"), line_buffering=True)
    os.dup2(2, 1)  # stray prints (nbgrader, kernels) go to the log, never into the protocol
    sys.stdout = sys.stderr

    lock = threading.Lock()

    def reply(**message):
        with lock:
            replies.write(json.dumps(message) + "\n")

    kernels, sandbox = load_sibling("kernels"), load_sibling("sandbox")
    sandbox.checked = bool(settings.get("checked"))  # the parent ran the start-up checks for this run
    kernels.on_launch = lambda pid: reply(event="kernel", pid=pid)  # so the parent can kill it on a hang
    preloaded = server is not None  # the parent queued what to preload
    if server is None and settings.get("warm"):
        server = kernels.ForkServer()  # in its sandbox, the server imports ipykernel while nbgrader loads here
    kernels.install(server)
    scratch = Path(tempfile.mkdtemp(prefix="grader-worker-"))
    try:
        app = nbgrader_app(settings["nbgrader_args"])
        configure(app, scratch)
    except BaseException as error:
        reply(event="broken", reason=_short(f"{type(error).__name__}: {error}", 400))
        raise
    if server is not None and not preloaded:
        server.preload(preload_modules(app, settings), rerun=reruns_configured(app))
    log_dir = Path(settings["log_dir"]) if settings.get("log_dir") else None
    reply(event="ready", pid=os.getpid())
    try:
        for line in sys.stdin:
            task = json.loads(line)
            student = task["student"]
            app.coursedir.assignment_id = task.get("assignment") or app.coursedir.assignment_id
            before = (server.forked, server.fallbacks) if server else (0, 0)
            try:
                outcome = grade(app, student, kernels, log_dir)
            except Exception as error:  # a fault of ours, not of the submission: report it, go on
                traceback.print_exc()
                outcome = {"assignment": app.coursedir.assignment_id, "student": student, "status": "failed",
                           "reason": _short(f"grader error: {type(error).__name__}: {error}"), "seconds": 0.0,
                           "score": None, "max_score": None}
            if server is not None:
                outcome["kernels"] = {"forked": server.forked - before[0], "normal": server.fallbacks - before[1],
                                      "why_normal": server.problem}
            reply(event="done", **outcome)
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(scratch, ignore_errors=True)


class ForkedWorker:
    """A worker forked from this process, with the parts of subprocess.Popen that Worker uses."""

    def __init__(self, settings: dict, env: dict, log, server, others, siblings):
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(stdin_write)
                os.close(stdout_read)
                for other in others:  # the other workers' servers are theirs alone
                    other.release()
                for sibling in siblings:  # and so are their pipes: a worker ends at its stdin's EOF
                    for stream in (sibling.process.stdin, sibling.process.stdout, sibling.log):
                        stream.close()
                os.environ.clear()
                os.environ.update(env)
                run_forked(settings, server, stdin_read, stdout_write, os.dup(log.fileno()))
            finally:
                os._exit(1)
        os.close(stdin_read)
        os.close(stdout_write)
        self.stdin, self.stdout = os.fdopen(stdin_write, "wb"), os.fdopen(stdout_read, "rb")
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # already reaped by someone else's waitpid: it has exited, status unknown
                self.returncode = 0
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("grading worker", timeout)
            time.sleep(0.05)
        return self.returncode
