"""Grading defences inside nbgrader's autograde pipeline: a guarded kernel, and a re-run out of it.

nbgrader runs a notebook top to bottom in one kernel, so code in an answer cell (or in a cell the
student added) runs before the tests, in the same process, and can change how they run and what
they print. Two preprocessors, configured in nbgrader_config.py, take scoring out of its hands:

* `GuardedExecute` (in place of nbgrader's Execute): before the first cell, the kernel installs
  the audit hook of `guard`, a second layer under the OS sandbox (no reading the course folder,
  no writing outside the notebook's folder, no databases, no sockets, no ctypes...).
* `RerunTests` (after Execute): runs the notebook's cells again in a fresh process forked from a
  pristine server (`rerun_child`): the locked cells as nbgrader's OverwriteCells restored them
  from the gradebook (set-up, demos, tests with their hidden part) and the student's answer cells,
  nothing else. Each test cell's verdict (passed, failed, tampered, missing, grader error; the
  lines its checks printed) goes into its metadata (`scoring.record`), and `scoring.SaveRerunGrades`
  scores it from that alone: the kernel's outputs are what the student sees, never what is scored.

`Rerunner` is the re-run without nbgrader (the mutation test uses it). This module imports only
the standard library and nbgrader: nbgrader_config.py loads it by path, so that nbgrader's own
process never imports torch.
"""

import contextlib
import hmac
import importlib.util
import json
import os
import re
import secrets
import shutil
import site
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent  # the grader package: trusted code, readable by graded code


def _sibling(name: str):
    """grader/grading/<name>.py as module grader_<name>, by path: the warm server a grading worker installed in
    grader_kernels is the one this module must find, however this module itself was imported."""
    key = f"grader_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


try:
    from . import scoring
except ImportError:  # loaded by path, as nbgrader_config.py does: scoring by path too (once, shared with feedback)
    scoring = _sibling("scoring")


# ---------------------------------------------------------------- what graded code may touch

def python_roots() -> list[str]:
    """Folders of the Python installation and its packages: readable, and the home of trusted code."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages()}
    paths |= {p for k, p in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")}
    # Both spellings: a module's code names the path it was imported by (a symlinked venv keeps its link).
    return sorted({os.path.realpath(p) for p in paths if p} | {os.path.abspath(p) for p in paths if p})


def policy(notebook_dir: str, tmp_dir: str, course_root: str, secrets_paths=(), processes: bool = False) -> dict:
    """Roots for guard.install: what graded code may read and write, and what it may never see; whether it may
    start processes (only inside the OS sandbox, which then holds them)."""
    home = Path.home()
    config = [home / ".ipython", home / ".jupyter", home / ".local/share/jupyter", home / ".config/matplotlib",
              home / ".cache/matplotlib"]
    system = ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/proc", "/sys", "/dev"]
    return {
        "read": python_roots() + [str(PACKAGE)] + system + [str(p) for p in config],
        "write": [notebook_dir, tmp_dir, "/dev/null", str(home / ".cache/matplotlib")],
        "deny": [course_root, *secrets_paths],
        "trusted_code": python_roots() + [str(PACKAGE)],
        "processes": bool(processes),
    }


def processes_allowed(setting=None) -> bool:
    """May graded code start processes? As set, or (None) when the OS sandbox holds it: grader/grading/sandbox.py
    is there and the instructor did not switch it off. Without the sandbox, a process would outlive the guard."""
    if setting is not None:
        return bool(setting)
    if not (HERE / "sandbox.py").exists():
        return False
    if "grader_sandbox" not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location("grader_sandbox", HERE / "sandbox.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["grader_sandbox"] = module
        spec.loader.exec_module(module)
    return not sys.modules["grader_sandbox"].disabled()


def sqlite_path(db_url: str) -> str | None:
    if db_url.startswith("sqlite:///"):
        return os.path.realpath(db_url[len("sqlite:///"):].split("?", 1)[0])
    return None


# ---------------------------------------------------------------- the re-run, without nbgrader

@dataclass
class Outcome:
    """What the re-run saw in one cell."""
    index: int
    kind: str          # "locked", "answer" or "test"
    grade_id: str
    status: str        # "ok", "error", "tampered", or "missing" (the re-run never reported this cell)
    error: str = ""    # the exception's type name
    message: str = ""  # its message, or what changed (tampered), or why it is missing
    notes: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # what the checks printed in the checks' format (test cells)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "ok"

    def record(self, fields: list[bytes]) -> None:
        """The fields of the child's signed ``end`` message: status, error, message, notes, lines, seconds."""
        def decoded(value: bytes) -> str:
            return value.decode(errors="replace")

        self.status = decoded(fields[2])
        self.error, self.message = decoded(fields[3]), decoded(fields[4])
        self.notes = [n for n in decoded(fields[5]).split("\n") if n]
        self.lines = [line for line in decoded(fields[6]).split("\n") if line] if len(fields) > 6 else []
        try:
            self.seconds = float(fields[7]) if len(fields) > 7 else 0.0
        except ValueError:
            self.seconds = 0.0


class Rerunner:
    """Runs a notebook's cells again, each notebook in a fresh fork of the sandboxed warm server (`forkserver`),
    which imported torch and the grader once: the grading worker's, or this process's own."""

    def __init__(self, cell_timeout: float = 60, startup_timeout: float = 120):
        self.cell_timeout, self.startup_timeout = cell_timeout, startup_timeout

    def run(self, cells, notebook_dir, *, course_root=None, secrets_paths=(), integrity=True, guard=True,
            processes=False) -> list[Outcome]:
        """Run `cells` ((kind, grade_id, source) in order) with a copy of `notebook_dir` as the folder; one
        Outcome per cell."""
        from multiprocessing.connection import Connection

        kernels = _sibling("kernels")
        notebook_dir = os.path.realpath(notebook_dir)
        outcomes = {i: Outcome(i, kind, grade_id, "missing", message="the re-run did not reach this cell")
                    for i, (kind, grade_id, _) in enumerate(cells)}
        server = kernels.rerun_server(self.startup_timeout)
        workspace = kernels.new_workspace(notebook_dir, server)
        key = secrets.token_bytes(32)
        job = {"cells": [list(c) for c in cells], "notebook_dir": workspace.work, "tmp_dir": workspace.tmp,
               "integrity": integrity, "guard": guard,
               "policy": policy(workspace.work, workspace.tmp, course_root or notebook_dir, secrets_paths, processes),
               "env": {"HOME": workspace.home, "TMPDIR": workspace.tmp}}
        job_read, job_write = os.pipe()
        report_read, report_write = os.pipe()
        reader, child = Connection(report_read, writable=False), None
        try:
            try:
                child = kernels.ForkedProcess(server, server.rerun(job_read, report_write))
            finally:
                os.close(job_read)
                os.close(report_write)
            with open(job_write, "wb") as job_pipe, contextlib.suppress(BrokenPipeError):
                job_write = None  # the key goes to the child alone, never through the server
                job_pipe.write(key + json.dumps(job).encode())
            self._collect(reader, child, key, outcomes)
        except (OSError, RuntimeError) as error:
            self._lose(outcomes, None, f"the re-run could not run ({error})")
        finally:
            if job_write is not None:
                os.close(job_write)
            if child is not None:
                child.kill()  # its process group; the server kills whatever else is left before its next fork
            reader.close()
            kernels.release_workspace(workspace)
        return [outcomes[i] for i in range(len(cells))]

    def _collect(self, reader, process, key: bytes, outcomes: dict) -> None:
        timeout, current = self.startup_timeout, None
        while True:
            started = time.monotonic()
            if not reader.poll(timeout):
                where = f" in cell {outcomes[current].grade_id}" if current is not None else " while starting"
                alive = process.poll() is None
                self._lose(outcomes, current, f"the re-run {'stopped after' if alive else 'ended'} "
                           f"{time.monotonic() - started:.0f} s{where}"
                           + (" (time limit)" if alive else f" ({_exit_text(process)})"))
                return
            try:
                frame = reader.recv_bytes(1 << 20)
            except (EOFError, OSError):
                with contextlib.suppress(Exception):
                    process.wait(2)
                where = f" in cell {outcomes[current].grade_id}" if current is not None else " before its first cell"
                self._lose(outcomes, current, f"the re-run process ended{where} ({_exit_text(process)})")
                return
            fields = _verify(key, frame)
            if fields is None:
                self._lose(outcomes, current, unsigned_reason(frame), tampered=True)
                return
            kind = fields[0]
            if kind == b"ready":
                timeout = self.cell_timeout
            elif kind == b"start":
                current = int(fields[1])
                timeout = self.cell_timeout
            elif kind == b"end":
                outcomes[int(fields[1])].record(fields)
            elif kind == b"done":
                return

    @staticmethod
    def _lose(outcomes: dict, current, reason: str, tampered: bool = False) -> None:
        """Cells from `current` on never got a verdict: they count as failed, with this reason."""
        for index, outcome in outcomes.items():
            if outcome.status == "missing" or (tampered and outcome.kind == "test"):
                outcome.status = "tampered" if tampered else "missing"
                outcome.message = reason


def _verify(key: bytes, frame: bytes):
    """The message's fields if its HMAC is the grader's, else None."""
    mac, message = frame[:32], frame[32:]
    if len(frame) < 32 or not hmac.compare_digest(mac, hmac.digest(key, message, "sha256")):
        return None
    return message.split(b"\x1f")


def unsigned_reason(frame: bytes) -> str:
    """Why an unsigned message scores the tests as tampered with: the re-run's own alarm, or a forgery."""
    if frame.startswith(b"alarm\x1f"):
        name = frame[len(b"alarm\x1f"):][:100].decode(errors="replace")
        return (f"your function `{name}` changed torch's, Python's or the grader's state while a check ran it, "
                "and that change was still in place when it returned to the check")
    return "the re-run received a message that the grader did not sign: code in the notebook wrote to the grader's channel"


def _exit_text(process) -> str:
    code = process.poll()
    if code is None:
        return "still running"
    if code < 0:
        import signal

        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


# ---------------------------------------------------------------- nbgrader: the cells to re-run

# Magics that run their body in the notebook's namespace, so that the names it defines exist after it:
# in the re-run the body runs as plain code (their timing or captured output does not matter there).
BODY_CELL_MAGICS = ("time", "capture")
BODY_LINE_MAGIC = re.compile(r"^(\s*)%time\s+(?=\S)", re.M)


def python_source(source: str) -> str:
    """A cell's source as plain Python for the re-run.

    ``%%time`` and ``%%capture [name]`` become their body (``name`` is bound to an empty capture), and
    a line ``%time statement`` its statement, since in a kernel they run that code in the notebook's
    namespace. Other magics become get_ipython() calls, which do nothing in the re-run.
    """
    lines = source.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    captured_as = None
    if first is not None and lines[first].lstrip().startswith("%%"):
        name, _, rest = lines[first].strip()[2:].partition(" ")
        if name in BODY_CELL_MAGICS:
            lines[first] = "\n"  # keeps the body's line numbers
            arguments = [a for a in rest.split() if not a.startswith("-")]
            if name == "capture" and arguments and arguments[-1].isidentifier():
                captured_as = arguments[-1]
    code = BODY_LINE_MAGIC.sub(r"\1", "".join(lines))
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        code = TransformerManager().transform_cell(code)
    except Exception:
        pass
    if captured_as:
        code = f"{code.rstrip()}\n{captured_as} = get_ipython().captured_io()\n"
    return code


def program(nb, gradebook, notebook_id: str, assignment_id: str) -> list[tuple[int, tuple]]:
    """(cell index, (kind, grade_id, source)) for every code cell the re-run runs, in notebook order.

    Locked cells run with the source the gradebook holds (the tests with their hidden part, as
    nbgrader's OverwriteCells restored them); answer cells with the student's source; other cells
    (the ones a student added, or whose id the gradebook does not know) are not run.
    """
    record = gradebook.find_notebook(notebook_id, assignment_id)
    sources = {c.name: c for c in record.source_cells}
    graded = {c.name for c in record.grade_cells}
    answers = {c.name for c in record.solution_cells}
    found, seen = [], set()
    for index, cell in enumerate(nb.cells):
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if cell.cell_type != "code" or not grade_id or grade_id not in sources or grade_id in seen:
            continue
        seen.add(grade_id)
        source = sources[grade_id]
        if source.locked:
            kind = "test" if grade_id in graded and grade_id not in answers else "locked"
            found.append((index, (kind, grade_id, python_source(source.source))))
        elif grade_id in answers and grade_id not in graded:
            found.append((index, ("answer", grade_id, python_source(cell.source))))
    return found


def source_program(nb) -> list[tuple[str, str, str]]:
    """(kind, grade_id, source) for the code cells of an nbgrader *source* notebook (reference answers)."""
    found = []
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade_id"):
            continue
        if meta.get("solution") and not meta.get("grade"):
            kind = "answer"
        elif meta.get("locked"):
            kind = "test" if meta.get("grade") else "locked"
        else:
            continue
        found.append((kind, meta["grade_id"], python_source(cell.source)))
    return found


# ---------------------------------------------------------------- nbgrader preprocessors

def _preprocessor_bases():
    from nbgrader.preprocessors import Execute, NbGraderPreprocessor

    return Execute, NbGraderPreprocessor


_Execute, _NbGraderPreprocessor = _preprocessor_bases()


def _course_root(config) -> str:
    from nbgrader.coursedir import CourseDirectory

    return os.path.realpath(CourseDirectory(config=config).root)


def _secrets(config, db_url: str) -> list[str]:
    """Paths graded code must never read, beyond the course folder: the gradebook, the source folder."""
    from nbgrader.coursedir import CourseDirectory

    coursedir = CourseDirectory(config=config)
    found = [p for p in (sqlite_path(db_url),) if p]
    source = os.path.join(coursedir.root, coursedir.source_directory)
    found.append(os.path.realpath(source))
    return found


def kernel_guard_code(notebook_dir: str, tmp_dir: str, course_root: str, secrets_paths, preload, log_path,
                      processes: bool = False) -> str:
    """The code the kernel runs, silently, before the first cell: preload, then install the guard."""
    roots = policy(notebook_dir, tmp_dir, course_root, secrets_paths, processes)
    return f"""
def _grader_guard():
    import importlib.util, os, tempfile
    log_fd = os.open({log_path!r}, os.O_WRONLY | os.O_APPEND)
    for name in {list(preload)!r}:
        try:
            __import__(name)
        except Exception:
            pass
    spec = importlib.util.spec_from_file_location("_grader_guard", {str(HERE / 'guard.py')!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.environ["TMPDIR"] = tempfile.tempdir = {tmp_dir!r}
    for variable, folder in module.TORCH_CACHE_VARIABLES.items():
        os.environ[variable] = os.path.join({tmp_dir!r}, folder)
    module.install(read_roots={roots['read']!r}, write_roots={roots['write']!r}, deny_roots={roots['deny']!r},
                   processes={roots['processes']!r}, log_fd=log_fd, what="your notebook's code")
_grader_guard()
del _grader_guard
"""


def _traits():
    from traitlets import Bool, Float, List, Unicode

    return Bool, Float, List, Unicode


_Bool, _Float, _List, _Unicode = _traits()


class GuardedExecute(_Execute):
    """nbgrader's Execute, with the kernel in the sandbox (in a copy of the notebook's folder) and under
    `guard`'s audit hook from before the first cell."""

    guard = _Bool(True, help="Install the grading guard in the kernel before the first cell.").tag(config=True)
    preload = _List(_Unicode(), ["torch"], help="Modules the kernel imports before the guard is installed "
                                                "(torch loads libraries with ctypes, which the guard refuses).").tag(config=True)
    allow_processes = _Bool(None, allow_none=True, help="Let the notebook's code start processes (DataLoader workers, "
                            "torch.compile's compiler); None: when the OS sandbox holds the kernel.").tag(config=True)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("kernel_manager_class", _sibling("kernels").kernel_manager_class())
        super().__init__(*args, **kwargs)

    def preprocess(self, nb, resources=None, km=None):
        kernels = _sibling("kernels")
        resources = {} if resources is None else resources
        self._preflight(resources)
        metadata = resources.setdefault("metadata", {})
        folder = metadata.get("path")
        self._workspace = kernels.new_workspace(folder or os.getcwd())
        metadata["path"] = self._workspace.work  # the kernel's cwd: the copy, in the sandbox
        self._guard_pending = self.guard
        started = time.monotonic()
        try:
            nb, resources = super().preprocess(nb, resources, km)
            refused = Path(self._workspace.log).read_text(errors="replace").splitlines()
            resources.setdefault("grader", {})["kernel_refusals"] = list(dict.fromkeys(refused))
            resources["grader"]["kernel_seconds"] = time.monotonic() - started  # for the class report
            return nb, resources
        finally:
            metadata["path"] = folder
            kernels.release_workspace(self._workspace)

    def _preflight(self, resources) -> None:
        """Once per process, before the first kernel: the sandbox works and kernels import this grader package.
        Otherwise stop the whole run, leaving no output for this student (the next run grades them)."""
        sandbox = _sibling("sandbox")
        if sandbox.checked:
            return
        from nbgrader.coursedir import CourseDirectory

        coursedir = CourseDirectory(config=self.config)
        info = resources.get("nbgrader", {})
        hidden = _secrets(self.config, info.get("db_url", "")) + [
            os.path.join(coursedir.root, coursedir.submitted_directory),
            os.path.join(coursedir.root, coursedir.autograded_directory)]
        try:
            self.log.info("Grading defences: %s", sandbox.preflight(coursedir.root, secrets=hidden))
        except (sandbox.StartupError, sandbox.SandboxUnavailable) as error:
            output = resources.get("metadata", {}).get("path")
            if output and info.get("student") and os.path.realpath(output) == os.path.realpath(coursedir.format_path(
                    coursedir.autograded_directory, info["student"], info.get("assignment", ""))):
                shutil.rmtree(output, ignore_errors=True)
            raise SystemExit(f"nbgrader autograde: grading refused: {error}") from None

    def preprocess_cell(self, cell, resources, index):
        if getattr(self, "_guard_pending", False):
            self._guard_pending = False
            self._install_guard(resources)
        return super().preprocess_cell(cell, resources, index)

    def _install_guard(self, resources) -> None:
        workspace = self._workspace
        db_url = resources.get("nbgrader", {}).get("db_url", "")
        code = kernel_guard_code(workspace.work, workspace.tmp, _course_root(self.config),
                                 _secrets(self.config, db_url), self.preload, workspace.log,
                                 processes_allowed(self.allow_processes))
        msg_id = self.kc.execute(code, silent=True, store_history=False)
        reply = self.wait_for_reply(msg_id)
        if reply is None or reply["content"]["status"] != "ok":
            content = reply["content"] if reply else {}
            raise RuntimeError(f"could not install the grading guard in the kernel: "
                               f"{content.get('ename', 'no reply')}: {content.get('evalue', '')}")


class RerunTests(_NbGraderPreprocessor):
    """Run every test cell again out of the kernel and record its verdict, the only thing that scores it.

    Each test cell gets ``cell.metadata["grader"]`` and the notebook ``nb.metadata["grader"]`` (see
    `scoring`); `scoring.SaveRerunGrades` turns them into scores. The notebook is flagged, with the
    reasons logged, when the kernel's outputs claim more than the re-run gives (stock nbgrader would
    have scored them), when trusted state was changed, when the guard refused something, and when the
    grader itself failed in a check (that cell waits for a manual grade). For the instructor, a test
    whose kernel run and re-run disagree gets an output that says so (formgrader shows it).
    """

    cell_timeout = _Float(0, help="Seconds a cell may take in the re-run (0: Execute.timeout, or the longest that "
                                  "Execute.timeout_func gives a cell of the notebook).").tag(config=True)
    check_integrity = _Bool(True, help="Compare torch's, the grader's and Python's state with the pristine one "
                                       "at every cell boundary.").tag(config=True)
    guard = _Bool(True, help="Run the re-run under the grading guard.").tag(config=True)
    allow_processes = _Bool(None, allow_none=True, help="Let the re-run's code start processes (DataLoader workers, "
                            "torch.compile's compiler); None: when the OS sandbox holds the re-run.").tag(config=True)

    def preprocess(self, nb, resources):
        from nbgrader.api import Gradebook

        info = resources["nbgrader"]
        for cell in nb.cells:  # a verdict comes only from this run, never from the submitted file
            cell.get("metadata", {}).pop("grader", None)
        with Gradebook(info["db_url"]) as gradebook:
            cells = program(nb, gradebook, info["notebook"], info["assignment"])
        logged = resources.get("grader", {}).get("kernel_refusals", [])
        reasons = [f"the kernel refused: {line}" for line in dict.fromkeys(logged + scoring.kernel_refusals(nb))]
        started = time.monotonic()
        outcomes = self._rerun(nb, resources, cells) if any(kind == "test" for _, (kind, _, _) in cells) else []
        seconds = time.monotonic() - started
        reasons += scoring.record(nb, cells, outcomes)
        nb.metadata["grader"] = scoring.notebook_verdict(bool(reasons), reasons, seconds,
                                                         resources.get("grader", {}).get("kernel_seconds"))
        if reasons:
            self._flag(info, reasons)
        return nb, resources

    def _rerun(self, nb, resources, cells) -> list[Outcome]:
        info = resources["nbgrader"]
        notebook_dir = resources.get("metadata", {}).get("path") or os.getcwd()
        execute = self.config.get("Execute", {})
        timeout = self.cell_timeout or execute.get("timeout", 30) or 30
        if not self.cell_timeout and callable(execute.get("timeout_func")):  # nbclient's per-cell limit: the longest
            timeout = max([timeout] + [execute["timeout_func"](nb.cells[i]) or 0 for i, _ in cells])
        rerunner = Rerunner(cell_timeout=timeout, startup_timeout=max(120, execute.get("startup_timeout", 60)))
        return rerunner.run([c for _, c in cells], notebook_dir, course_root=_course_root(self.config),
                            secrets_paths=_secrets(self.config, info["db_url"]), integrity=self.check_integrity,
                            guard=self.guard, processes=processes_allowed(self.allow_processes))

    def _flag(self, info, reasons) -> None:
        """Log the reasons for the instructor and flag the notebook in the gradebook (formgrader shows the flag)."""
        from nbgrader.api import Gradebook, MissingEntry

        for reason in reasons:
            self.log.warning("Grading defences: %s/%s: %s", info["student"], info["notebook"], reason)
        with Gradebook(info["db_url"]) as gradebook:
            try:
                notebook = gradebook.find_submission_notebook(info["notebook"], info["assignment"], info["student"])
            except MissingEntry:
                return
            notebook.flagged = True
            gradebook.db.commit()
