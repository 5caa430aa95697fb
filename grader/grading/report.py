"""The instructor's view of a class: `python -m grader report [ASSIGNMENT ...] [--out reports/]`.

Reads nbgrader's gradebook (scores, names, late penalties) and the re-run's verdicts stored in every
autograded notebook (report_data.py), and writes to the folder named by --out (default `reports/`):

  report.html    one self-contained page (figures embedded as PNG, no script, no network): a score
                 histogram per assignment, each test cell's pass rate, every check with how often it
                 failed and its most common diagnoses by template, flagged submissions and why,
                 grading time per notebook, students who fail the same check in several assignments,
                 and groups of similar answers to review (similarity.py; never a penalty)
  *.csv          the same data: scores, cells, checks, flagged, notebooks, repeats, similar
  figures/*.png  the figures

Run it from the course root, as nbgrader; nbgrader's --db, --course-dir and --Name.trait=value
options pass through. Without ASSIGNMENT it covers every assignment with graded submissions.
"""

import argparse
import csv
import html
import sys
import time
from base64 import b64encode
from datetime import datetime, timezone
from pathlib import Path

from . import report_data as rd
from . import report_figures as figures
from . import similarity

CSV_FILES = ("scores", "cells", "checks", "flagged", "notebooks", "repeats", "similar")


class Progress:
    """One updating line on a terminal; elsewhere (logs, CI) a line at every tenth of the work."""

    def __init__(self, quiet: bool, stream=sys.stderr):
        self.quiet, self.stream, self.shown, self.last = quiet, stream, -1, 0.0
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def __call__(self, done: int, total: int, what: str) -> None:
        if self.quiet or not total:
            return
        if self.tty:
            if done == total or time.monotonic() - self.last > 0.2:
                self.last = time.monotonic()
                self.stream.write(f"\rreport: reading autograded notebooks {done}/{total} · {what}\x1b[K")
                if done == total:
                    self.stream.write("\n")
                self.stream.flush()
        elif done * 10 // total > self.shown:
            self.shown = done * 10 // total
            print(f"report: reading autograded notebooks {done}/{total}", file=self.stream, flush=True)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"report: {text}", file=self.stream, flush=True)


# ---------------------------------------------------------------- the analyses, as rows

def build(data: rd.ClassData, top: int = 5, threshold: float = 0.8) -> dict:
    """Every table of the report, as lists of dicts (the CSV rows), plus what the HTML needs besides."""
    several = len(data.assignments) > 1
    cells = rd.cell_rates(data)
    checks = rd.check_summaries(data, top)
    pairs, groups = [], []
    for assignment, notebook in dict.fromkeys((nb.assignment, nb.name) for nb in data.notebooks()):
        answers = {nb.student: nb.answers for nb in data.notebooks()
                   if (nb.assignment, nb.name) == (assignment, notebook)}
        found = similarity.similar_pairs(answers, data.stubs.get((assignment, notebook), {}),
                                         data.given.get((assignment, notebook), frozenset()), threshold=threshold)
        pairs += [{"assignment": assignment, "notebook": notebook, "student_a": p.first, "student_b": p.second,
                   "similarity": round(p.score, 3), "shared_shingles": p.shared} for p in found]
        groups += [(assignment, notebook, members, [p for p in found if p.first in members])
                   for members in similarity.groups(found)]
    return {
        "several": several,
        "scores": [{"assignment": s.assignment, "student": s.student, "name": data.students.get(s.student, s.student),
                    "score": s.score, "late_penalty": s.penalty, "final_score": s.final, "max_score": s.max_score,
                    "seconds_late": round(s.seconds_late), "needs_manual_grade": s.needs_manual_grade}
                   for s in data.submissions],
        "cells": [dict(r, pass_rate=round(r["pass_rate"], 4)) for r in cells],
        "check_summaries": checks,
        "checks": [{"assignment": c.assignment, "notebook": c.notebook, "cell": c.cell, "check": c.check,
                    "runs": c.runs, "failures": c.failures, "rank": rank, "diagnosis_count": d.count,
                    "share_of_failures": round(d.count / c.failures, 4), "template": d.template,
                    "example": d.example}
                   for c in checks for rank, d in enumerate(c.diagnoses, 1)]
                  + [{"assignment": c.assignment, "notebook": c.notebook, "cell": c.cell, "check": c.check,
                      "runs": c.runs, "failures": 0} for c in checks if not c.failures],
        "flagged": [{"assignment": nb.assignment, "student": nb.student, "notebook": nb.name, "reason": reason}
                    for nb in rd.flagged(data) for reason in (nb.reasons or ["flagged in the gradebook (formgrader)"])],
        "notebooks": [{"assignment": nb.assignment, "student": nb.student, "notebook": nb.name, "score": nb.score,
                       "max_score": nb.max_score, "kernel_seconds": nb.kernel_seconds,
                       "rerun_seconds": nb.rerun_seconds, "seconds": nb.seconds, "flagged": nb.flagged}
                      for nb in data.notebooks()],
        "repeats": [dict(r, assignments=";".join(r["assignments"]), count=len(r["assignments"]))
                    for r in rd.repeated_failures(data)],
        "similar": pairs,
        "groups": groups,
    }


def figure_files(data: rd.ClassData, tables: dict) -> dict[str, bytes]:
    finals = {a: [s.final for s in data.submissions if s.assignment == a] for a in data.assignments}
    seconds = {a: [nb.seconds for nb in data.notebooks() if nb.assignment == a and nb.seconds is not None]
               for a in data.assignments}
    return {
        "scores": figures.score_histograms(data.assignments, finals, data.max_scores),
        "pass-rates": figures.pass_rates(tables["cells"], tables["several"]),
        "failing-checks": figures.failing_checks(tables["check_summaries"], tables["several"]),
        "grading-time": figures.grading_times(data.assignments, seconds),
    }


# ---------------------------------------------------------------- HTML

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #cfe2f3; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; width: 100%; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
th { background: #f3f7fb; } td.n { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
code { background: #f5f5f5; padding: 0 .2em; } .muted { color: #666; } .warn { color: #a4551a; }
img { max-width: 100%; display: block; margin: .5em 0 1.2em; }
ul.diag { margin: 0; padding-left: 1.1em; } ul.diag li { margin: .15em 0; }
nav a { margin-right: 1em; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _span(low: float, high: float) -> str:
    return f"{low:.0%}" if f"{low:.0%}" == f"{high:.0%}" else f"{low:.0%}–{high:.0%}"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64encode(png).decode()}">'


def render(data: rd.ClassData, tables: dict, pictures: dict[str, bytes], course: str, top: int,
           threshold: float) -> str:
    parts = [f"<h1>Class report: {_e(', '.join(data.assignments))}</h1>",
             f'<p class="muted">Course <code>{_e(course)}</code> · {len(data.students)} students in the gradebook · '
             f"{len(data.submissions)} graded submissions · generated "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Scores, names and late penalties come "
             "from nbgrader's gradebook; what each check said comes from the grader's re-run, stored in the "
             "autograded notebooks.</p>",
             '<nav><a href="#scores">Scores</a><a href="#cells">Pass rates</a><a href="#checks">Checks</a>'
             '<a href="#flagged">Flagged</a><a href="#time">Grading time</a><a href="#repeats">Repeated failures</a>'
             '<a href="#similar">Similar answers</a></nav>']

    parts.append('<h2 id="scores">Scores</h2>')
    parts.append(_img(pictures["scores"], "score histogram per assignment"))
    rows = []
    for assignment in data.assignments:
        mine = [s for s in data.submissions if s.assignment == assignment]
        finals = sorted(s.final for s in mine)
        rows.append([_e(assignment), len(mine), f"{sum(finals) / len(finals):.2f}" if finals else "-",
                     f"{finals[len(finals) // 2]:g}" if finals else "-", f"{data.max_scores[assignment]:g}",
                     sum(1 for s in mine if s.penalty > 0), sum(1 for s in mine if s.needs_manual_grade),
                     len(data.students) - len({s.student for s in mine})])
    parts.append(_table(["assignment", "graded", "mean", "median", "max", "late penalty", "needs manual grade",
                         "no submission"], rows, numeric={1, 2, 3, 4, 5, 6, 7}))

    parts.append('<h2 id="cells">Pass rate of each test cell</h2>')
    parts.append(_img(pictures["pass-rates"], "pass rate per test cell"))
    parts.append(_table(["assignment", "cell", "points", "passed", "failed", "tampered", "no verdict", "grader error",
                         "pass rate"],
                        [[_e(r["assignment"]), f"<code>{_e(r['cell'])}</code>", f"{r['points']:g}", r["passed"],
                          r["failed"], r["tampered"], r["missing"], r["grader-error"], f"{r['pass_rate']:.0%}"]
                         for r in tables["cells"]], numeric={2, 3, 4, 5, 6, 7, 8}))

    parts.append('<h2 id="checks">Checks: how often each failed, and the most common diagnoses</h2>')
    parts.append(f'<p class="muted">Diagnoses are grouped by template: numbers, sizes, names in backticks and quoted '
                 f"text do not split a group. Shares are of the check's failures; the top {top} per check.</p>")
    parts.append(_img(pictures["failing-checks"], "most failed checks"))
    for assignment in data.assignments:
        rows = []
        mine = [c for c in tables["check_summaries"] if c.assignment == assignment]
        for c in sorted(mine, key=lambda c: -c.failures):
            diagnoses = "".join(
                f"<li><b>{d.count / c.failures:.0%}</b> ({d.count}) {_e(d.example)}"
                + (f' <span class="muted">· {d.wordings} wordings of: {_e(d.template)}</span>'
                   if d.wordings > 1 else "")
                + "</li>" for d in c.diagnoses)
            rows.append([f"<code>{_e(c.cell)}</code>", _e(c.check), c.failures, c.runs,
                         f'<ul class="diag">{diagnoses}</ul>' if diagnoses
                         else '<span class="muted">never failed</span>'])
        parts.append(f"<h3>{_e(assignment)}</h3>" + _table(["cell", "check", "failed", "ran", "most common diagnoses"],
                                                           rows, numeric={2, 3}))

    parts.append('<h2 id="flagged">Flagged submissions</h2>')
    flagged = rd.flagged(data)
    parts.append('<p class="muted">Flagged by the grading defences (or by hand in formgrader): read the reasons, '
                 "then the autograded notebook in formgrader.</p>")
    parts.append(_table(["assignment", "student", "notebook", "reasons"],
                        [[_e(nb.assignment), _e(nb.student), _e(nb.name),
                          "<br>".join(_e(r) for r in nb.reasons) or "flagged in the gradebook (formgrader)"]
                         for nb in flagged]) if flagged else "<p>None.</p>")

    parts.append('<h2 id="time">Grading time per notebook</h2>')
    parts.append(_img(pictures["grading-time"], "grading time per notebook"))
    slowest = sorted((nb for nb in data.notebooks() if nb.seconds is not None), key=lambda nb: -nb.seconds)[:10]
    parts.append(_table(["assignment", "student", "notebook", "kernel run (s)", "re-run (s)", "total (s)"],
                        [[_e(nb.assignment), _e(nb.student), _e(nb.name),
                          "-" if nb.kernel_seconds is None else f"{nb.kernel_seconds:.1f}", f"{nb.rerun_seconds:.1f}",
                          f"{nb.seconds:.1f}"] for nb in slowest], numeric={3, 4, 5}))

    parts.append('<h2 id="repeats">Students who fail the same check in several assignments</h2>')
    if len(data.assignments) < 2:
        parts.append("<p>One assignment in this report: name several to compare them.</p>")
    else:
        by_student: dict[str, list[dict]] = {}
        for r in tables["repeats"]:
            by_student.setdefault(r["student"], []).append(r)
        parts.append(_table(["student", "name", "checks failed in several assignments"],
                            [[_e(student), _e(rows[0]["name"]),
                              "; ".join(f"{_e(r['check'])} ({_e(r['assignments'].replace(';', ', '))})"
                                        for r in rows)]
                             for student, rows in by_student.items()]) if by_student else "<p>None.</p>")

    parts.append('<h2 id="similar">Similar answers, to review</h2>')
    parts.append(f'<p class="muted">Students whose answer cells are at least {threshold:.0%} alike once names, '
                 "literals, comments and layout are set aside (Jaccard index of token runs; the release's stub and "
                 "what most of the class wrote are left out). Short exercises with one natural solution make honest "
                 "answers alike: this list is for review, never a penalty, and nothing here changes a grade.</p>")
    rows = [[_e(a), _e(nb), len(members), _e(", ".join(members)),
             _span(min(p.score for p in pairs), max(p.score for p in pairs))]
            for a, nb, members, pairs in tables["groups"]]
    parts.append(_table(["assignment", "notebook", "students", "who", "similarity"], rows, numeric={2})
                 if rows else "<p>None above the threshold.</p>")
    parts.append('<p class="muted">The data: ' + ", ".join(f"<code>{n}.csv</code>" for n in CSV_FILES)
                 + " beside this page.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Class report</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


# ---------------------------------------------------------------- files and the command line

def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row)) if rows else ["(empty)"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_report(data: rd.ClassData, out: Path, course: str = "", top: int = 5, threshold: float = 0.8) -> Path:
    tables = build(data, top, threshold)
    pictures = figure_files(data, tables)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, png in pictures.items():
        (out / "figures" / f"{name}.png").write_bytes(png)
    for name in CSV_FILES:
        write_csv(out / f"{name}.csv", tables[name])
    page = out / "report.html"
    page.write_text(render(data, tables, pictures, course, top, threshold))
    return page


def nbgrader_coursedir(nbgrader_args: list[str]):
    """The course folder as nbgrader sees it (nbgrader_config.py, --db, --course-dir, --Name.trait=value)."""
    from nbgrader.apps.baseapp import NbGrader

    app = NbGrader()
    app.initialize(list(nbgrader_args))
    return app.coursedir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader report", description=__doc__.split("\n\n")[0])
    parser.add_argument("assignments", nargs="*", metavar="ASSIGNMENT",
                        help="assignments to report on (default: every one with graded submissions)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for report.html and the CSV files "
                                                                          "(default: %(default)s)")
    parser.add_argument("--top", type=int, default=5, help="diagnoses shown per check (default: %(default)s)")
    parser.add_argument("--similarity", type=float, default=0.8, metavar="T",
                        help="list answers at least this alike, 0..1 (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args, nbgrader_args = parser.parse_known_args(argv)
    unknown = [a for a in nbgrader_args if not a.startswith("--") or "=" not in a]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)} (nbgrader options take the form --name=value)")
    if not 0 < args.similarity <= 1:
        parser.error("--similarity takes a number in (0, 1]")
    progress = Progress(args.quiet)
    started = time.monotonic()
    try:
        coursedir = nbgrader_coursedir(nbgrader_args)
        data = rd.load(coursedir, args.assignments, progress)
        progress.say("analysing verdicts, drawing figures, comparing answers")
        args.out.mkdir(parents=True, exist_ok=True)
        page = write_report(data, args.out, coursedir.course_id, args.top, args.similarity)
    except rd.ReportError as problem:
        print(f"grader report: {problem}", file=sys.stderr)
        return 2
    students = len({s.student for s in data.submissions})
    print(f"Report on {', '.join(data.assignments)}: {students} students, {len(data.submissions)} submissions, "
          f"{sum(1 for _ in data.notebooks())} notebooks, in {time.monotonic() - started:.1f} s.")
    print(f"  {page}  (open it in a browser)\n  {args.out}/*.csv, {args.out}/figures/*.png")
    return 0
