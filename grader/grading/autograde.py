"""Class-scale autograding: `python -m grader autograde ASSIGNMENT [ASSIGNMENT...] [--workers N]`.

Grades every submitted student of ASSIGNMENT into the gradebook that `nbgrader autograde` uses,
with nbgrader's own Autograde converter running in N worker processes (see autograde_worker.py),
so scores and gradebook rows are nbgrader's. This module is the parent: it finds the students,
skips those already graded (nbgrader's own rule; `--force` regrades), hands students to workers,
shows progress, isolates failures and hangs (a student past its wall-clock limit has its worker
killed and replaced), and prints one line per student with the reason when something went wrong.
"""

import argparse
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from . import autograde_worker as worker_code

STATUSES = ("graded", "failed", "timed out", "crashed", "skipped")


# ---------------------------------------------------------------- what to grade

def plan(app, assignment: str) -> tuple[list[str], list[str], list[Path]]:
    """(students to grade, students skipped as already graded or excluded, source notebooks)."""
    import re

    from nbgrader.converters import Autograde, NbGraderException

    coursedir = app.coursedir
    coursedir.assignment_id = assignment
    converter = Autograde(coursedir=coursedir, parent=app)
    try:
        converter.init_notebooks()
    except NbGraderException:
        return [], [], []
    converter.exporter = converter.exporter_class(parent=converter, config=converter.config)
    pattern = converter._format_source("(?P<assignment_id>.*)", "(?P<student_id>.*)", escape=True)
    excluded = set(filter(None, coursedir.student_id_exclude.split(",")))
    todo, skipped = [], []
    for folder in sorted(converter.assignments):
        student = re.match(pattern, folder).group("student_id")
        converter.notebooks = sorted(converter.assignments[folder])
        if student in excluded:
            skipped.append(student)
        elif converter.force or converter.init_destination(assignment, student):
            todo.append(student)  # init_destination applies nbgrader's rule: new, newer, or --force
        else:
            skipped.append(student)
    return todo, skipped, worker_code.source_notebooks(app)


def remove_output(app, assignment: str, student: str) -> None:
    """What nbgrader does to a submission whose grading failed: remove its autograded output."""
    from nbgrader.utils import remove, rmtree

    coursedir = app.coursedir
    dest = Path(coursedir.format_path(coursedir.autograded_directory, student, assignment))
    if coursedir.notebook_id == "*":
        if dest.exists():
            rmtree(str(dest))
    else:
        for path in dest.glob(f"{coursedir.notebook_id}.ipynb"):
            remove(str(path))


def default_student_timeout(app, notebooks: list[Path]) -> float:
    """The longest nbgrader itself could take: every code cell running into Execute.timeout."""
    import nbformat

    from nbgrader.preprocessors import Execute

    execute = Execute(parent=app)  # the values nbgrader will use: defaults, config files, command line
    cells = sum(sum(c.cell_type == "code" for c in nbformat.read(p, as_version=4).cells) for p in notebooks)
    return (execute.timeout or 0) * max(cells, 1) + execute.startup_timeout + 60


# ---------------------------------------------------------------- workers

class Worker:
    """A worker process and the task (assignment, student) it is grading.

    Started as its own process, or (`fork_from`) forked from this one once it has imported nbgrader,
    with a warm server this process started: the worker then skips nbgrader's imports (about 3 s of
    CPU each) and finds its server already importing torch.
    """

    def __init__(self, index: int, settings: dict, env: dict, log_path: Path, events: queue.Queue, *,
                 fork_from=None):
        self.index, self.log_path = index, log_path
        self.log = open(log_path, "ab")
        if fork_from is not None:
            self.process = worker_code.ForkedWorker(settings, env, self.log, *fork_from)  # (server, others, siblings)
        else:
            self.process = subprocess.Popen(worker_code.command(settings), stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=self.log, env=env, start_new_session=True)
        self.ready = False
        self.task: tuple[str, str] | None = None
        self.kernels: list[int] = []  # kernels started for the current task
        self.started = 0.0
        self.events = events

    def begin(self) -> None:
        threading.Thread(target=self._read, args=(self.events,), daemon=True).start()

    def _read(self, events: queue.Queue) -> None:
        for line in self.process.stdout:
            try:
                events.put((self, json.loads(line)))
            except ValueError:
                continue
        events.put((self, {"event": "exit", "code": self.process.wait()}))

    def give(self, task: tuple[str, str]) -> None:
        self.task, self.started, self.kernels = task, time.monotonic(), []
        self.process.stdin.write((json.dumps({"assignment": task[0], "student": task[1]}) + "\n").encode())
        self.process.stdin.flush()

    def kill(self) -> None:
        """Kill the worker, its fork server and its current student's kernels (each leads its own
        process group; forked ones would also die with their server)."""
        for pid in [self.process.pid, *self.kernels]:
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        self.process.wait()

    def stop(self) -> None:
        try:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()
        self.log.close()

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""


class Progress:
    """One updating line on a terminal (students done, failures, time left); one line per student otherwise."""

    def __init__(self, title: str, total: int, quiet: bool = False):
        self.title, self.total, self.quiet = title, total, quiet
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.done = self.failed = self.running = 0

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        left = ""
        if self.done:
            left = f" · ~{_duration(elapsed / self.done * (self.total - self.done))} left"
        return (f"autograde {self.title}: {self.done}/{self.total} done · {self.failed} failed · "
                f"{self.running} running · {_duration(elapsed)}{left}")

    def update(self, outcome: dict | None = None) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[K" + self.line())
        elif outcome is not None:
            sys.stderr.write(f"{self.line()} · {outcome['student']} ({outcome['assignment']}): {outcome['status']}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class Pool:
    """Worker processes, forked once the parent has loaded nbgrader and planned (each with a warm server the
    parent started first), then fed one student at a time; a worker that dies is replaced by a new process."""

    def __init__(self, settings: dict, log_dir: Path, progress: Progress):
        self.settings, self.log_dir, self.progress = settings, log_dir, progress
        self.env = dict(os.environ)
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"  # for `alembic`
        for name, value in settings.get("thread_env", {}).items():
            self.env.setdefault(name, value)
        self.events: queue.Queue = queue.Queue()
        self.members: list[Worker] = []
        self.started = 0

    def start(self, count: int = 1) -> None:
        """Start workers as processes of their own (each loads nbgrader and starts its warm server)."""
        for _ in range(count):
            self.started += 1
            member = Worker(self.started, self.settings, self.env, self.log_dir / f"worker-{self.started}.log",
                            self.events)
            self.members.append(member)
            member.begin()

    def fork(self, servers: list) -> None:
        """Fork one worker per server (or per None: cold kernels) from this process, which must have no thread."""
        forked = []
        for index, server in enumerate(servers):
            self.started += 1
            others = [s for i, s in enumerate(servers) if i != index and s is not None]
            forked.append(Worker(self.started, self.settings, self.env, self.log_dir / f"worker-{self.started}.log",
                                 self.events, fork_from=(server, others, self.members + forked)))
        for server in servers:
            if server is not None:
                server.release()
        for member in forked:
            self.members.append(member)
            member.begin()

    def close(self, app) -> None:
        for member in self.members:
            if member.task is not None:  # interrupted: leave no half-graded output, as nbgrader does
                member.kill()
                member.log.close()
                remove_output(app, *member.task)
            else:
                member.stop()
        self.members = []

    def run(self, app, tasks: list[tuple[str, str]], student_timeout: float) -> list[dict]:
        """Grade each (assignment, student); one outcome each, whatever happens to it or to its worker."""
        pending, outcomes, progress = deque(tasks), {}, self.progress
        startup_failures = 0

        def finish(outcome: dict) -> None:
            outcomes[outcome["assignment"], outcome["student"]] = outcome
            progress.done += 1
            progress.failed += outcome["status"] != "graded"
            progress.update(outcome)

        def lose(member: Worker, status: str, reason: str) -> None:
            """The worker is gone or must go: report its student, clean up after it, start another."""
            self.members.remove(member)
            member.kill()
            member.log.close()
            if member.task is not None:
                remove_output(app, *member.task)
                progress.running -= 1
                finish({"assignment": member.task[0], "student": member.task[1], "status": status,
                        "reason": reason, "seconds": round(time.monotonic() - member.started, 2),
                        "score": None, "max_score": None})
            if pending or not self.members:
                self.start()

        while len(outcomes) < len(tasks):
            for member in self.members:
                if member.ready and member.task is None and pending:
                    member.give(pending.popleft())
                    progress.running += 1
            progress.update()
            try:
                member, message = self.events.get(timeout=0.5)
            except queue.Empty:
                member, message = None, {}
            if member is not None and member in self.members:
                event = message.get("event")
                if event == "kernel":
                    member.kernels.append(message["pid"])
                elif event == "ready":
                    member.ready, startup_failures = True, 0
                elif event == "done":
                    member.task = None
                    progress.running -= 1
                    message.pop("event")
                    finish(message)
                elif event == "broken":
                    raise SystemExit(f"grader autograde: nbgrader could not start: {message['reason']}")
                elif event == "exit":
                    if not member.ready:
                        startup_failures += 1
                        if startup_failures > 3:
                            raise SystemExit("grader autograde: grading workers keep dying at start:\n"
                                             + member.log_tail())
                    lose(member, "crashed", f"the grading worker died ({_exit_text(message['code'])}); "
                                            f"see {member.log_path}")
            now = time.monotonic()
            for member in [m for m in self.members if m.task is not None and now - m.started > student_timeout]:
                lose(member, "timed out", f"still running after {student_timeout:.0f} s (--student-timeout): "
                                          "stopped, with its kernel")
        return [outcomes[task] for task in tasks]


def _exit_text(code: int) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


# ---------------------------------------------------------------- the report

def table(outcomes: list[dict]) -> str:
    several = len({o["assignment"] for o in outcomes}) > 1
    width = max([len("student")] + [len(o["student"]) for o in outcomes])
    first = max([len("assignment")] + [len(o["assignment"]) for o in outcomes]) if several else 0
    head = f"{'assignment':<{first}}  " if several else ""
    rows = [f"{head}{'student':<{width}}  {'result':<9}  {'score':>11}  {'time':>6}  reason"]
    for o in outcomes:
        score = "-" if o.get("score") is None else f"{o['score']:g}"
        total = "" if o.get("max_score") is None else f"/{o['max_score']:g}"
        why = o.get("reason") or "; ".join(o.get("notes") or [])
        where = f"{o['assignment']:<{first}}  " if several else ""
        rows.append(f"{where}{o['student']:<{width}}  {o['status']:<9}  {score + total:>11}  "
                    f"{o.get('seconds', 0):>5.1f}s  {why}")
    return "\n".join(rows)


def summary(outcomes: list[dict], notebooks: int, workers: int, wall: float, log_dir: Path) -> str:
    """`notebooks`: how many notebooks the graded (not skipped) submissions hold."""
    counts = {status: sum(o["status"] == status for o in outcomes) for status in STATUSES}
    parts = [f"{n} {status}" for status, n in counts.items() if n]
    per_notebook = f", {wall / notebooks:.2f} s per notebook" if notebooks else ""
    lines = [f"{len(outcomes)} submissions: {', '.join(parts) or 'nothing to do'}. "
             f"{workers} worker{'s' * (workers != 1)}, {_duration(wall)} wall{per_notebook}."]
    if counts["skipped"]:
        lines.append("Skipped students were graded before (nbgrader's rule); --force grades them again.")
    if notebooks:
        lines.append(f"Logs: {log_dir}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the command

def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m grader autograde",
        description="Autograde every submission of ASSIGNMENT in parallel, into nbgrader's gradebook, with "
                    "nbgrader's own converter and the course's nbgrader_config.py. Other nbgrader autograde "
                    "options pass through, written --Name=value (e.g. --Execute.timeout=60, --db=URL).")
    cli.add_argument("assignments", nargs="+", metavar="ASSIGNMENT",
                     help="one or more assignments; several share the workers (and their start-up)")
    cli.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                     help="grading processes (default: this machine's cores, %(default)s)")
    cli.add_argument("--student", help="grade only this student id (nbgrader's --student; glob patterns work)")
    cli.add_argument("--force", "-f", action="store_true", help="grade again students that were already graded")
    cli.add_argument("--student-timeout", type=float,
                     help="wall-clock seconds one submission may take before its worker is killed (default: "
                          "Execute.timeout x code cells + Execute.startup_timeout + 60)")
    cli.add_argument("--no-warm", dest="warm", action="store_false",
                     help="start every kernel the normal way instead of forking it from a warm server")
    cli.add_argument("--preload", help="modules the warm kernel server imports once, comma-separated "
                                       "(default: the top-level imports of the assignment's notebooks)")
    cli.add_argument("--kernel-threads", type=int,
                     help="OMP/MKL threads per kernel (default: cores / workers, so workers do not oversubscribe)")
    cli.add_argument("--report", type=Path, help="also write the outcomes as JSON to this file")
    cli.add_argument("--log-dir", type=Path, help="where per-student and per-worker logs go (default: a temp folder)")
    cli.add_argument("--quiet", action="store_true", help="no progress line")
    cli.add_argument("--unsafe-no-sandbox", action="store_true",
                     help="run student code WITHOUT the bubblewrap sandbox (it can then read the solutions and the "
                          "gradebook); for a machine without bubblewrap, where grading otherwise refuses to start")
    return cli


def main(argv=None) -> int:
    args, passthrough = parser().parse_known_args(argv)
    stray = [a for a in passthrough if not a.startswith("--")]
    if stray:
        raise SystemExit(f"grader autograde: unexpected {' '.join(stray)} (pass nbgrader options as --Name=value)")
    assignments = list(dict.fromkeys(args.assignments))
    nbgrader_args = [assignments[0], *passthrough]
    if args.student:
        nbgrader_args.append(f"--student={args.student}")
    if args.force:
        nbgrader_args.append("--force")
    if args.workers < 1:
        raise SystemExit("grader autograde: --workers must be at least 1")
    sandbox = worker_code.load_sibling("sandbox")
    if args.unsafe_no_sandbox:
        os.environ[sandbox.UNSAFE_ENV] = "1"  # for the workers too
        print("grader autograde: WARNING: no sandbox (--unsafe-no-sandbox): student code can read the solutions, "
              "the gradebook and other students' work", file=sys.stderr)
    try:
        sandbox.require()
    except sandbox.SandboxUnavailable as error:
        raise SystemExit(f"grader autograde: grading refused: {error}") from None
    # One named student of one assignment needs one worker.
    single = args.student and not set("*?[") & set(args.student) and len(assignments) == 1
    workers = 1 if single else args.workers
    threads = args.kernel_threads or max(1, len(os.sched_getaffinity(0)) // workers)
    title = assignments[0] if len(assignments) == 1 else f"{len(assignments)} assignments"
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix=f"autograde-{assignments[0]}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    settings = {"nbgrader_args": nbgrader_args, "assignments": assignments, "warm": args.warm,
                "log_dir": str(log_dir), "checked": True,  # no student is handed out before the check passes
                "preload": None if args.preload is None else [m for m in args.preload.split(",") if m],
                "thread_env": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}}
    progress = Progress(title, 0, quiet=args.quiet)
    pool = Pool(settings, log_dir, progress)
    started = time.monotonic()
    app, servers = None, []
    try:
        if args.warm:  # the warm servers start now, in their sandboxes, while this process loads nbgrader
            kernels = worker_code.load_sibling("kernels")
            servers = [kernels.ForkServer(adopt=False) for _ in range(workers)]
            if worker_code.reruns_hinted():
                for server in servers:
                    server.preload([], rerun=True)
        app = worker_code.nbgrader_app(nbgrader_args)
        if not any(a.startswith("--log-level") for a in passthrough):
            app.log.setLevel(logging.WARNING)  # nbgrader's per-student INFO lines go to the logs, not here
        app.coursedir.db_url = worker_code.with_busy_timeout(app.coursedir.db_url)
        _preflight(app, sandbox, quiet=args.quiet)
        tasks, skipped, notebooks, timeout = [], [], {}, 0.0
        for assignment in assignments:
            _check_gradebook(app, assignment)
            todo, passed, notebooks[assignment] = plan(app, assignment)
            if not todo and not passed:
                print(f"grader autograde: no submissions of {assignment} under {app.coursedir.root} "
                      f"({app.coursedir.submitted_directory}/*/{assignment})", file=sys.stderr)
            tasks += [(assignment, student) for student in todo]
            skipped += [(assignment, student) for student in passed]
            timeout = max(timeout, default_student_timeout(app, notebooks[assignment]))
        if not tasks and not skipped:
            return 1
        progress.total = len(tasks)
        outcomes = []
        if tasks:
            used = min(workers, len(tasks))
            for server in servers[used:]:
                server.release()
            if servers:
                modules = worker_code.preload_modules(app, settings)
                for server in servers[:used]:
                    server.preload(modules, rerun=worker_code.reruns_configured(app))
            if threading.active_count() == 1:  # fork the workers: they skip nbgrader's imports
                pool.fork(servers[:used] or [None] * used)
            else:
                pool.start(used)
            outcomes = pool.run(app, tasks, args.student_timeout or timeout)
    except KeyboardInterrupt:
        progress.close()
        print("grader autograde: interrupted; students in progress were left ungraded (run again to resume)",
              file=sys.stderr)
        return 130
    finally:
        pool.close(app)
        for server in servers:
            server.release()
            server.close()  # its worker closed the channel: the server has ended, or ends now
    progress.close()
    wall = time.monotonic() - started
    outcomes += [{"assignment": a, "student": s, "status": "skipped", "score": None, "max_score": None,
                  "seconds": 0.0, "reason": "already graded"} for a, s in skipped]
    outcomes.sort(key=lambda o: (o["assignment"], o["student"]))
    print(table(outcomes))
    used = min(workers, len(tasks))
    graded_notebooks = sum(len(notebooks[a]) for a, _ in tasks)
    print(summary(outcomes, graded_notebooks, used, wall, log_dir))
    if args.report:
        args.report.write_text(json.dumps({"assignments": assignments, "workers": used, "wall_seconds": round(wall, 2),
                                           "notebooks": graded_notebooks, "warm": args.warm,
                                           "students": outcomes}, indent=1))
    return 0 if all(o["status"] in ("graded", "skipped") for o in outcomes) else 1


def _preflight(app, sandbox, quiet: bool) -> None:
    """Before grading anyone: the sandbox works, and shows kernels this course's grader, nothing of the course."""
    coursedir = app.coursedir
    url = coursedir.db_url
    hidden = [url[len("sqlite:///"):].split("?", 1)[0] if url.startswith("sqlite:///") else ""]
    hidden += [os.path.join(coursedir.root, folder) for folder in (coursedir.source_directory,
               coursedir.submitted_directory, coursedir.autograded_directory)]
    try:
        line = sandbox.preflight(coursedir.root, secrets=hidden, config_files=app.loaded_config_files)
    except (sandbox.StartupError, sandbox.SandboxUnavailable) as error:
        raise SystemExit(f"grader autograde: grading refused: {error}") from None
    if not quiet:
        print(f"grader autograde: {line}", file=sys.stderr)


def _check_gradebook(app, assignment: str) -> None:
    """Create the gradebook's tables once, here, rather than in N workers at once; the assignment must exist."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(app.coursedir.db_url, app.coursedir.course_id) as gradebook:
        try:
            gradebook.find_assignment(assignment)
        except MissingEntry:
            raise SystemExit(f"grader autograde: the gradebook has no assignment {assignment!r}: "
                             f"run `nbgrader generate_assignment {assignment}` first") from None
