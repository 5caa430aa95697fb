"""Benchmark: how long `python -m grader report` takes for a class of 30 and of 300 students.

    .venv/bin/python benchmarks/report.py [--sizes 30,300] [--keep]

Grades the eight archetypal submissions of tests/synthetic_course.py once, for real (about a minute),
then, for each size, clones them into a class of that many students with two assignments (the
archetypes' graded notebooks and gradebook rows, through nbgrader's Gradebook API) and times the
whole command as an instructor runs it (wall and CPU, start-up included), and each phase of the
build in this process: reading the gradebook and the notebooks, the analyses and the similarity of
answers, the figures, the HTML page.
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def phases(course: Path) -> dict[str, float]:
    """Seconds of each phase of the report's build, in this process."""
    from grader.grading import report, report_data

    found, started = {}, time.perf_counter()
    previous = os.getcwd()
    os.chdir(course)
    try:
        coursedir = report.nbgrader_coursedir([])
        found["nbgrader configuration"] = time.perf_counter() - started
        data = report_data.load(coursedir, [])
        found["read gradebook and notebooks"] = time.perf_counter() - started - sum(found.values())
        tables = report.build(data)
        found["analyses and similarity"] = time.perf_counter() - started - sum(found.values())
        pictures = report.figure_files(data, tables)
        found["figures"] = time.perf_counter() - started - sum(found.values())
        report.render(data, tables, pictures, coursedir.course_id, 5, 0.8)
        found["HTML"] = time.perf_counter() - started - sum(found.values())
    finally:
        os.chdir(previous)
    return found


def main(argv=None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--sizes", default="30,300", help="class sizes (default %(default)s)")
    cli.add_argument("--keep", action="store_true", help="keep the scratch courses")
    args = cli.parse_args(argv)
    import synthetic_course

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    scratch = Path(tempfile.mkdtemp(prefix="report-benchmark-"))
    try:
        began = time.monotonic()
        archetypes = synthetic_course.grade_archetypes(scratch / "archetypes")
        print(f"graded the 8 archetypes in {time.monotonic() - began:.0f} s", file=sys.stderr)
        for size in (int(s) for s in args.sizes.split(",")):
            course = shutil.copytree(archetypes, scratch / f"class-{size}")
            began = time.monotonic()
            synthetic_course.clone_class(course, synthetic_course.class_plan(size), import_roster=False)
            print(f"cloned a class of {size} in {time.monotonic() - began:.0f} s", file=sys.stderr)
            cpu, began = cpu_children(), time.monotonic()
            done = subprocess.run([sys.executable, "-m", "grader", "report", "--quiet", "--out",
                                   str(course / "reports")], cwd=course, capture_output=True, text=True)
            wall, cpu = time.monotonic() - began, cpu_children() - cpu
            if done.returncode:
                print(done.stdout + done.stderr, file=sys.stderr)
                return 1
            notebooks = sum(1 for _ in (course / "autograded").glob("*/*/*.ipynb"))
            print(f"\n{size} students, {notebooks} notebooks: python -m grader report {wall:.1f} s wall, "
                  f"{cpu:.1f} s CPU (load average {os.getloadavg()[0]:.1f})")
            for phase, seconds in phases(course).items():
                print(f"  {phase:<30}{seconds:>7.2f} s")
        return 0
    finally:
        if args.keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
