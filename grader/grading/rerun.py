"""Grading defences inside nbgrader's autograde pipeline: a guarded kernel, and a re-run out of it.

nbgrader runs a notebook top to bottom in one kernel, so code in an answer cell (or in a cell the
student added) runs before the tests, in the same process, and can change how they run. Two
preprocessors, configured in nbgrader_config.py, close that door without knowing the attack:

* `GuardedExecute` (in place of nbgrader's Execute): before the first cell, the kernel installs
  the audit hook of `guard` (no reading the course folder, no writing outside the notebook's
  folder, no processes, no ctypes...), so code in the notebook cannot read the solutions or the
  gradebook, write grades, or leave a process behind.
* `RerunTests` (after Execute, before SaveAutoGrades): runs the notebook's cells again in a fresh
  process forked from a pristine server (`rerun_child`): the locked cells as nbgrader's
  OverwriteCells restored them from the gradebook (set-up, demos, tests with their hidden part)
  and the student's answer cells, nothing else. A test cell keeps its points only if it passed in
  the kernel *and* in the re-run, and if nothing changed what the checks rely on (`integrity`).
  Otherwise its outputs get an error that says why, so SaveAutoGrades scores it 0, formgrader and
  the feedback show the reason, and the instructor's log lists it. A test cell that passed in
  both keeps its points even when torch warned on stderr (nbgrader would score that 0).

`Rerunner` is the re-run without nbgrader (the mutation test uses it). This module imports only
the standard library and nbgrader: nbgrader_config.py loads it by path, so that nbgrader's own
process never imports torch.
"""

import contextlib
import hmac
import importlib.util
import json
import os
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
ERROR_NAME = "GradingCheckFailed"


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


# ---------------------------------------------------------------- what graded code may touch

def python_roots() -> list[str]:
    """Folders of the Python installation and its packages: readable, and the home of trusted code."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages()}
    paths |= {p for k, p in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")}
    # Both spellings: a module's code names the path it was imported by (a symlinked venv keeps its link).
    return sorted({os.path.realpath(p) for p in paths if p} | {os.path.abspath(p) for p in paths if p})


def policy(notebook_dir: str, tmp_dir: str, course_root: str, secrets_paths=()) -> dict:
    """Roots for guard.install: what graded code may read and write, and what it may never see."""
    home = Path.home()
    config = [home / ".ipython", home / ".jupyter", home / ".local/share/jupyter", home / ".config/matplotlib",
              home / ".cache/matplotlib"]
    system = ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/proc", "/sys", "/dev"]
    return {
        "read": python_roots() + [str(PACKAGE)] + system + [str(p) for p in config],
        "write": [notebook_dir, tmp_dir, "/dev/null", str(home / ".cache/matplotlib")],
        "deny": [course_root, *secrets_paths],
        "trusted_code": python_roots() + [str(PACKAGE)],
    }


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

    @property
    def passed(self) -> bool:
        return self.status == "ok"


class Rerunner:
    """Runs a notebook's cells again, each notebook in a fresh fork of the sandboxed warm server (`forkserver`),
    which imported torch and the grader once: the grading worker's, or this process's own."""

    def __init__(self, cell_timeout: float = 60, startup_timeout: float = 120):
        self.cell_timeout, self.startup_timeout = cell_timeout, startup_timeout

    def run(self, cells, notebook_dir, *, course_root=None, secrets_paths=(), integrity=True, guard=True) -> list[Outcome]:
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
               "policy": policy(workspace.work, workspace.tmp, course_root or notebook_dir, secrets_paths),
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
                self._lose(outcomes, current, "the re-run received a message that the grader did not sign: code "
                                              "in the notebook wrote to the grader's channel", tampered=True)
                return
            kind = fields[0]
            if kind == b"ready":
                timeout = self.cell_timeout
            elif kind == b"start":
                current = int(fields[1])
                timeout = self.cell_timeout
            elif kind == b"end":
                index = int(fields[1])
                outcome = outcomes[index]
                outcome.status = fields[2].decode()
                outcome.error, outcome.message = fields[3].decode(errors="replace"), fields[4].decode(errors="replace")
                outcome.notes = [n for n in fields[5].decode(errors="replace").split("\n") if n]
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

def python_source(source: str) -> str:
    """A cell's source as plain Python: IPython's magics become get_ipython() calls (no-ops in the re-run)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return source
    try:
        return TransformerManager().transform_cell(source)
    except Exception:
        return source


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


def kernel_guard_code(notebook_dir: str, tmp_dir: str, course_root: str, secrets_paths, preload, log_path) -> str:
    """The code the kernel runs, silently, before the first cell: preload, then install the guard."""
    roots = policy(notebook_dir, tmp_dir, course_root, secrets_paths)
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
                   log_fd=log_fd, what="your notebook's code")
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
        try:
            nb, resources = super().preprocess(nb, resources, km)
            refused = Path(self._workspace.log).read_text(errors="replace").splitlines()
            resources.setdefault("grader", {})["kernel_refusals"] = list(dict.fromkeys(refused))
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
                                 _secrets(self.config, db_url), self.preload, workspace.log)
        msg_id = self.kc.execute(code, silent=True, store_history=False)
        reply = self.wait_for_reply(msg_id)
        if reply is None or reply["content"]["status"] != "ok":
            content = reply["content"] if reply else {}
            raise RuntimeError(f"could not install the grading guard in the kernel: "
                               f"{content.get('ename', 'no reply')}: {content.get('evalue', '')}")


class RerunTests(_NbGraderPreprocessor):
    """Score a test cell only if it also passes when re-run out of the kernel, with trusted state intact."""

    cell_timeout = _Float(0, help="Seconds a cell may take in the re-run (0: Execute.timeout).").tag(config=True)
    check_integrity = _Bool(True, help="Compare torch's, the grader's and Python's state with the pristine one "
                                       "at every cell boundary.").tag(config=True)
    guard = _Bool(True, help="Run the re-run under the grading guard.").tag(config=True)

    def preprocess(self, nb, resources):
        from nbgrader.api import Gradebook

        info = resources["nbgrader"]
        with Gradebook(info["db_url"]) as gradebook:
            cells = program(nb, gradebook, info["notebook"], info["assignment"])
        logged = resources.get("grader", {}).get("kernel_refusals", [])
        reasons = [f"the kernel refused: {line}" for line in dict.fromkeys(logged + kernel_refusals(nb))]
        if any(kind == "test" for _, (kind, _, _) in cells):
            reasons += self._rerun(nb, resources, cells)
        if reasons:
            self._flag(info, reasons)
        return nb, resources

    def _rerun(self, nb, resources, cells) -> list[str]:
        """Re-run the cells; give a test cell that fails there an error output. The reasons, for the log."""
        info = resources["nbgrader"]
        notebook_dir = resources.get("metadata", {}).get("path") or os.getcwd()
        execute = self.config.get("Execute", {})
        timeout = self.cell_timeout or execute.get("timeout", 30) or 30
        rerunner = Rerunner(cell_timeout=timeout, startup_timeout=max(120, execute.get("startup_timeout", 60)))
        outcomes = rerunner.run([c for _, c in cells], notebook_dir, course_root=_course_root(self.config),
                                secrets_paths=_secrets(self.config, info["db_url"]),
                                integrity=self.check_integrity, guard=self.guard)
        answers = [o for o in outcomes if o.kind == "answer"]
        reasons = []
        for (index, _), outcome in zip(cells, outcomes):
            if outcome.kind != "test":
                continue
            cell = nb.cells[index]
            in_kernel = not any(o.output_type == "error" for o in cell.outputs)
            if in_kernel and outcome.passed:
                _stderr_as_stdout(cell)
                continue
            if not in_kernel and outcome.status != "tampered":
                continue  # failed in the kernel: nbgrader scores it 0 with the kernel's own error
            reason = explain(outcome, answers, in_kernel)
            cell.outputs.append(_error_output(reason))
            reasons.append(f"cell {outcome.grade_id} scored 0: {reason.splitlines()[0]}")
        return reasons

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


def kernel_refusals(nb) -> list[str]:
    """The guard's refusals that the kernel's cells printed (a PermissionError with the guard's words)."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.output_type == "error" and "the grader does not let" in output.get("evalue", ""):
                found.append(output.evalue.splitlines()[0])
    return found


def _stderr_as_stdout(cell) -> None:
    """A test that passed in the kernel and in the re-run keeps its points even if torch warned on stderr."""
    for output in cell.outputs:
        if output.output_type == "stream" and output.name == "stderr":
            output.name = "stdout"


def explain(outcome: Outcome, answers: list[Outcome], in_kernel: bool) -> str:
    """Why a test cell scores 0: what happened, why, and what to do."""
    if outcome.status == "tampered":
        lines = ["✗ grading integrity: this test is scored 0. Code outside the locked cells changed what the "
                 "grader's checks rely on:"]
        lines += [f"  - {line}" for line in outcome.message.splitlines()]
        lines.append("Hint: answer cells must not patch torch, Python's builtins, the grader or Jupyter; write "
                     "only the code the exercise asks for.")
        return "\n".join(lines)
    if outcome.status == "missing":
        return ("✗ re-run: this test passed in your notebook's kernel, but the grader's re-run of your answer "
                f"cells gave no verdict: {outcome.message}.\nHint: make sure your answer cells finish quickly "
                "and do not end the Python process (exit(), os._exit, killing the kernel).")
    lines = ["✗ re-run: this test passed in your notebook's kernel but failed when the grader ran your answer "
             "cells again, on their own, in a fresh Python process:",
             f"  {outcome.error}: {outcome.message}" if outcome.error else f"  {outcome.message}"]
    broken = [a for a in answers if a.status == "error"]
    lines += [f"  - your answer cell `{a.grade_id}` raised {a.error}: {a.message.splitlines()[0] if a.message else ''}"
              for a in broken[:3]]
    notes = [n for a in answers for n in a.notes] + outcome.notes
    lines += [f"  - {n}" for n in dict.fromkeys(notes)][:5]
    lines.append("Hint: the re-run runs only the locked cells and your answer cells, in order; code in cells you "
                 "added does not run there, and nothing may change how Jupyter runs cells. Put everything your "
                 "answer needs in its answer cell, then Restart & Run All.")
    return "\n".join(lines)


def _error_output(reason: str):
    from nbformat.v4 import new_output

    return new_output("error", ename=ERROR_NAME, evalue=reason, traceback=reason.splitlines())
