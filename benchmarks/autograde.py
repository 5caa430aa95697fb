"""Benchmark: stock `nbgrader autograde` (sequential) against `python -m grader autograde --workers N`.

    .venv/bin/python benchmarks/autograde.py [--students 6,30] [--workers N] [--assignments 01_registration,...]
                                             [--one-call] [--also-unsandboxed] [--also-cold]

As instructors grade: one call per assignment, after its deadline, of each command (stock
`nbgrader autograde ASSIGNMENT`, `python -m grader autograde ASSIGNMENT`), each call paying its own
start-up; both with the sandbox on. For each class size K (students per assignment), builds a
scratch course from this repository's nbgrader_config.py and solutions/ (every assignment unless
--assignments says otherwise), generates each assignment, and files K synthetic students per
assignment: the reference solution, the blank release, and partly solved notebooks (each answer
cell taken from the solution or left blank, at random with a fixed seed). The same submissions are
graded both ways, in this one run on this machine; the gradebooks must be identical (every grade
and comment of every cell of every student), and the script prints the wall time of each call, the
speed-up and the cost per notebook. --also-unsandboxed grades a third copy with
--unsafe-no-sandbox, which gives the sandbox's cost per notebook. Exit status 1 when the
gradebooks differ.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)


def env() -> dict:
    variables = dict(os.environ)
    variables["PATH"] = f"{PYTHON.parent}{os.pathsep}{variables.get('PATH', '')}"  # nbgrader runs `alembic`
    return variables


def run(command: list, cwd: Path, quiet: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE if quiet else None)
    return done


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------- the scratch course

def make_course(root: Path, assignments: list[str]) -> None:
    shutil.copy(ROOT / "nbgrader_config.py", root)
    shutil.copytree(ROOT / "solutions", root / "solutions", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for assignment in assignments:
        done = run([PYTHON.parent / "nbgrader", "generate_assignment", assignment, "--force"], root)
        if done.returncode != 0:
            raise SystemExit(f"nbgrader generate_assignment {assignment} failed:\n{done.stderr}")


def partly_solved(release: nbformat.NotebookNode, solution: nbformat.NotebookNode, rng: random.Random):
    """The release, with each answer cell replaced by the solution's at random."""
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in solution.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    notebook = nbformat.from_dict(release)
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers and rng.random() < 0.5:
            cell.source = answers[grade_id]
    return notebook


def file_students(root: Path, assignments: list[str], count: int, seed: int) -> int:
    """K students per assignment; returns the number of notebooks filed."""
    rng = random.Random(seed)
    filed = 0
    for assignment in assignments:
        for path in sorted((root / "solutions" / assignment).glob("*.ipynb")):
            solution = nbformat.read(path, as_version=4)
            release = nbformat.read(root / "exercises" / assignment / path.name, as_version=4)
            for index in range(count):
                if index == 0:
                    notebook, student = solution, "s00-reference"
                elif index == 1:
                    notebook, student = release, "s01-blank"
                else:
                    notebook, student = partly_solved(release, solution, rng), f"s{index:02d}-partial"
                folder = root / "submitted" / student / assignment
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "timestamp.txt").write_text("2030-01-15 12:00:00.000000 UTC")
                nbformat.write(notebook, folder / path.name)
                filed += 1
    return filed


# ---------------------------------------------------------------- the two ways

def timed(grade, *args) -> tuple[float, dict]:
    """(wall seconds, {call: wall seconds}) of one way of grading.

    No CPU time: the kernel that bubblewrap's init runs in a sandbox is never reaped into its parents'
    resource usage (measured: a 1 s busy loop counts 1.04 s directly, 0.00 s through bwrap), so getrusage
    would leave out most of stock nbgrader's work."""
    started = time.monotonic()
    calls = grade(*args)
    return time.monotonic() - started, calls


def grade_stock(root: Path, assignments: list[str]) -> dict:
    """`nbgrader autograde` takes one assignment: one call per assignment."""
    started, calls = time.monotonic(), {}
    for assignment in assignments:
        begun = time.monotonic()
        done = run([PYTHON.parent / "nbgrader", "autograde", assignment], root)
        calls[assignment] = time.monotonic() - begun
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
        say(f"  stock nbgrader autograde {assignment}: {calls[assignment]:.1f} s ({status}); "
            f"{time.monotonic() - started:.0f} s so far")
    return calls


def grade_ours(root: Path, assignments: list[str], workers: int, extra=(), one_call: bool = False) -> dict:
    """One call per assignment (as instructors grade), or one call for all of them (the workers start once)."""
    started, calls = time.monotonic(), {}
    for batch in ([assignments] if one_call else [[a] for a in assignments]):
        begun = time.monotonic()
        done = run([PYTHON, "-m", "grader", "autograde", *batch, "--workers", str(workers), *extra], root,
                   quiet=False)
        calls[" ".join(batch)] = time.monotonic() - begun
        summary = next((line for line in done.stdout.splitlines() if " submissions: " in line), "")
        say(f"  python -m grader autograde {' '.join(batch)} --workers {workers} {' '.join(extra)}: "
            f"{calls[' '.join(batch)]:.1f} s; {summary}; {time.monotonic() - started:.0f} s so far")
    return calls


def gradebook(root: Path) -> dict:
    """Every autograded value, per (assignment, student, notebook, cell)."""
    from nbgrader.api import Gradebook

    rows = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", "inside-nn-module") as book:
        for assignment in book.assignments:
            for submission in book.assignment_submissions(assignment.name):
                for notebook in submission.notebooks:
                    for grade in notebook.grades:
                        rows[(assignment.name, submission.student.id, notebook.name, "grade", grade.name)] = \
                            (grade.auto_score, grade.manual_score, grade.needs_manual_grade)
                    for comment in notebook.comments:
                        rows[(assignment.name, submission.student.id, notebook.name, "comment", comment.name)] = \
                            (comment.auto_comment, comment.manual_comment)
    return rows


def compare(stock: dict, ours: dict) -> list[str]:
    problems = []
    for key in sorted(set(stock) | set(ours)):
        if stock.get(key) != ours.get(key):
            problems.append(f"{'/'.join(key)}: stock {stock.get(key)} != ours {ours.get(key)}")
    return problems


NAMES = {"stock": "stock nbgrader autograde", "ours": "grader autograde", "bare": "  same, --unsafe-no-sandbox",
         "cold": "  same, --no-warm"}


def measure(students: int, assignments: list[str], args) -> tuple[list[str], bool]:
    """Grade `students` per assignment every way; the report's lines, and whether the gradebooks agree."""
    scratch = Path(tempfile.mkdtemp(prefix=f"autograde-benchmark-{students}-"))
    try:
        say(f"Building a course with {len(assignments)} assignments and {students} students each in {scratch}")
        base = scratch / "base"
        base.mkdir()
        make_course(base, assignments)
        notebooks = file_students(base, assignments, students, args.seed)
        ways = {"stock": None, "ours": None} | ({"bare": None} if args.also_unsandboxed else {}) \
            | ({"cold": None} if args.also_cold else {})
        for way in ways:
            shutil.copytree(base, scratch / way)
        cores = len(os.sched_getaffinity(0))
        say(f"{notebooks} notebooks; {cores} cores; {load()}")
        extra = {"ours": [], "bare": ["--unsafe-no-sandbox"], "cold": ["--no-warm"]}
        for way in ways:
            say(f"{NAMES[way].strip()}:")
            if way == "stock":
                ways[way] = timed(grade_stock, scratch / way, assignments)
            else:
                ways[way] = timed(grade_ours, scratch / way, assignments, args.workers, extra[way], args.one_call)
        after = load()
        stock_rows = gradebook(scratch / "stock")
        problems = {way: compare(stock_rows, gradebook(scratch / way)) for way in ways if way != "stock"}
        graded = len({key[:3] for key in stock_rows})
    finally:
        if args.keep:
            say(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    calls = "one call for all assignments" if args.one_call else "one call per assignment"
    lines = [f"\n{students} students per assignment: {notebooks} notebooks ({len(assignments)} assignments), "
             f"{cores} cores, {args.workers} workers, {calls}, sandbox on; {after} at the end"]
    if not args.one_call:
        lines.append(f"{'call (wall)':<26}" + "".join(f"{NAMES[w].strip()[:22]:>24}" for w in ways)
                     + f"{'speed-up':>10}")
        for assignment in assignments:
            stock = ways["stock"][1][assignment]
            lines.append(f"{assignment:<26}" + "".join(f"{ways[w][1][assignment]:>23.1f}s" for w in ways)
                         + f"{stock / ways['ours'][1][assignment]:>9.2f}x")
    lines.append(f"{'':<34}{'wall':>9}{'per notebook':>14}{'speed-up':>10}")
    for way, (wall, _) in ways.items():
        name = NAMES[way] + (f" --workers {args.workers}" if way == "ours" else "")
        lines.append(f"{name:<34}{wall:>8.1f}s{wall / notebooks:>13.2f}s{ways['stock'][0] / wall:>9.2f}x")
    if "bare" in ways:
        lines.append(f"The sandbox's cost: {(ways['ours'][0] - ways['bare'][0]) / notebooks:+.2f} s wall per notebook "
                     "(grader autograde with the sandbox, less without).")
    for way, found in problems.items():
        if found:
            lines.append(f"Gradebooks DIFFER ({NAMES[way].strip()} vs stock), {len(found)} values:")
            lines += found[:40]
        else:
            lines.append(f"Gradebooks identical ({NAMES[way].strip()} vs stock): {len(stock_rows)} grades and "
                         f"comments of {graded} submitted notebooks.")
    return lines, not any(problems.values()) and graded == notebooks


def sandbox_cost(repeats: int) -> list[str]:
    """What the sandbox adds to one notebook, process by process: a kernel's life (start, one cell, shutdown)
    launched as stock nbgrader launches it, plain or through bwrap; forked by a warm server outside or inside
    a sandbox; and the re-run of unit 01's reference, from a server outside or inside a sandbox. Medians."""
    import asyncio
    import statistics

    from jupyter_client.manager import AsyncKernelManager

    from grader.grading import autograde_worker
    from grader.grading.rerun import Rerunner, source_program

    kernels = autograde_worker.load_sibling("kernels")
    folder = Path(tempfile.mkdtemp(prefix="sandbox-cost-"))

    async def kernel_life(manager_class) -> float:
        started = time.monotonic()
        manager = manager_class(kernel_name="python3")
        await manager.start_kernel(cwd=str(folder), extra_arguments=["--HistoryManager.hist_file=:memory:"])
        client = manager.client()
        client.start_channels()
        await client.wait_for_ready(timeout=120)
        await client._async_execute_interactive("x = 1")
        client.stop_channels()
        await manager.shutdown_kernel()
        await manager.cleanup_resources()
        return time.monotonic() - started

    def kernels_of(setting) -> list[float]:
        server = None
        if setting in ("forked, no sandbox", "forked, sandbox"):
            server = kernels.ForkServer(sandboxed=setting == "forked, sandbox")
            server.preload(["json"])
            server.wait_ready()
        manager_class = AsyncKernelManager if setting == "launched, no sandbox" else kernels.kernel_manager_class()
        if setting != "launched, no sandbox":
            kernels.install(server)
        try:
            return [asyncio.run(kernel_life(manager_class)) for _ in range(repeats)]
        finally:
            kernels.uninstall()
            if server is not None:
                server.close()

    def reruns_of(sandboxed: bool) -> list[float]:
        server = kernels.ForkServer(kernels=False, rerun=True, sandboxed=sandboxed)
        server.preload([], rerun=True)
        server.wait_ready()
        kernels.install(server)
        cells = source_program(nbformat.read(ROOT / "solutions" / "01_registration" / "registration.ipynb",
                                             as_version=4))
        times = []
        try:
            for _ in range(repeats):
                started = time.monotonic()
                Rerunner(cell_timeout=120).run(cells, folder, course_root=str(ROOT))
                times.append(time.monotonic() - started)
        finally:
            kernels.uninstall()
            server.close()
        return times

    found = {setting: kernels_of(setting) for setting in ("launched, no sandbox", "launched, sandbox",
                                                          "forked, no sandbox", "forked, sandbox")}
    found |= {"re-run, no sandbox": reruns_of(False), "re-run, sandbox": reruns_of(True)}
    shutil.rmtree(folder, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in found.items()}
    lines = [f"\nThe sandbox's cost per process (median of {repeats}; {load()}):"]
    lines += [f"  {k:<22}{v:>7.2f}s" for k, v in median.items()]
    lines.append(f"  a kernel launched through bwrap (stock nbgrader with GuardedExecute): "
                 f"{median['launched, sandbox'] - median['launched, no sandbox']:+.2f} s; forked in the sandbox "
                 f"(grader autograde): {median['forked, sandbox'] - median['forked, no sandbox']:+.2f} s; a re-run: "
                 f"{median['re-run, sandbox'] - median['re-run, no sandbox']:+.2f} s")
    return lines


def main(argv=None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--students", default="6,30", help="students per assignment, one run per value "
                                                         "(default %(default)s)")
    cli.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                     help="workers for python -m grader autograde (default: cores, %(default)s)")
    cli.add_argument("--assignments", help="comma-separated (default: every solutions/NN_* folder)")
    cli.add_argument("--one-call", action="store_true",
                     help="grade every assignment in one python -m grader autograde call (stock still takes one "
                          "call per assignment)")
    cli.add_argument("--also-unsandboxed", action="store_true",
                     help="also grade with --unsafe-no-sandbox, to measure what the sandbox costs")
    cli.add_argument("--also-cold", action="store_true",
                     help="also grade in parallel without warm kernels (--no-warm), to show what they buy")
    cli.add_argument("--sandbox-cost", type=int, metavar="N",
                     help="only measure what the sandbox adds to a kernel and a re-run, N times each")
    cli.add_argument("--seed", type=int, default=7)
    cli.add_argument("--keep", action="store_true", help="keep the scratch courses")
    args = cli.parse_args(argv)
    assignments = (args.assignments.split(",") if args.assignments else
                   sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit()))
    if args.sandbox_cost:
        print("\n".join(sandbox_cost(args.sandbox_cost)))
        return 0
    agree = True
    for students in [int(k) for k in args.students.split(",")]:
        lines, same = measure(students, assignments, args)
        print("\n".join(lines), flush=True)
        agree = agree and same
    print("\nWall: elapsed time, start-up of every process included (one call: one command, as an instructor "
          "runs it).")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
