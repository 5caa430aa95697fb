"""Grades an LMS can take: `python -m grader export --format canvas|moodle|csv [--out FILE]`.

This runs nbgrader's own `nbgrader export` (its ExportApp, so nbgrader_config.py, --db and
--course-dir count as there) with one of the export plugins below; `nbgrader export
--exporter=grader.grading.export.CanvasExportPlugin --to=canvas.csv` does the same. Every value is
the gradebook's, computed as nbgrader's own CsvExportPlugin computes it: a student's score on an
assignment is ``max(0, score - late_submission_penalty)`` (the penalty nbgrader's
AssignLatePenalties set at autograde, due date and extension included), 0 without a submission;
the course total is the sum over the exported assignments. Assignments nobody has been graded on
yet are left out (with a warning), so they do not enter an LMS as zeros.

Formats (one row per student of the gradebook, sorted by last name):

canvas  Canvas's gradebook import (Instructure's guide "How do I import grades in the Gradebook?",
        and the parser, canvas-lms app/models/gradebook_importer.rb): the columns Student ("Last,
        First"), ID (Canvas's user id: nbgrader's lms_user_id, when set), SIS User ID, SIS Login ID
        (nbgrader's student id), Section, one column per assignment, and a "Points Possible" row.
        "Final Points" carries the course total: Canvas treats it as a read-only column and ignores
        it on import (it computes its own total).
moodle  Moodle's CSV grade import (docs.moodle.org, "Grade import"): First name, Last name, Username
        (nbgrader's student id), ID number (lms_user_id), Email address, one column per assignment
        and Course total. In Moodle's import form, map a user column (Username → username, Email
        address → useremail or ID number → useridnumber), each assignment to a grade item, and
        Course total to "ignore" (Moodle computes it).
csv     student_id, last_name, first_name, email, lms_user_id, then per assignment its score and its
        late penalty, then late_penalty, total, max_total and percent.
"""

import argparse
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nbgrader.plugins import ExportPlugin


@dataclass
class StudentGrades:
    id: str
    first_name: str
    last_name: str
    email: str
    lms_user_id: str
    scores: dict[str, float] = field(default_factory=dict)     # after the late penalty, as nbgrader exports it
    penalties: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.scores.values())

    @property
    def sortable_name(self) -> str:
        return ", ".join(filter(None, (self.last_name, self.first_name))) or self.id


@dataclass
class GradeTable:
    assignments: dict[str, float]            # name -> max score
    students: list[StudentGrades]
    skipped: list[str]                       # assignments without a graded submission
    unsubmitted: int = 0                     # (student, assignment) pairs without a submission: 0
    late: int = 0                            # submissions with a late penalty
    manual: list[str] = field(default_factory=list)  # "assignment/student" still waiting for a manual grade

    @property
    def max_total(self) -> float:
        return sum(self.assignments.values())


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def grade_table(gradebook, assignments=(), students=()) -> GradeTable:
    """The gradebook's scores, per student and assignment, as nbgrader's CsvExportPlugin computes them."""
    from nbgrader.api import MissingEntry

    chosen = [a for a in gradebook.assignments if not assignments or a.name in assignments]
    graded = {a.name: a for a in chosen if gradebook.assignment_submissions(a.name)}
    table = GradeTable({name: float(a.max_score or 0.0) for name, a in graded.items()}, [],
                       [a.name for a in chosen if a.name not in graded])
    for student in gradebook.students:
        if students and student.id not in students:
            continue
        row = StudentGrades(student.id, student.first_name or "", student.last_name or "", student.email or "",
                            student.lms_user_id or "")
        for name in graded:
            try:
                submission = gradebook.find_submission(name, student.id)
            except MissingEntry:
                row.scores[name], row.penalties[name] = 0.0, 0.0
                table.unsubmitted += 1
                continue
            penalty = float(submission.late_submission_penalty or 0.0)
            row.scores[name] = max(0.0, float(submission.score or 0.0) - penalty)
            row.penalties[name] = penalty
            table.late += penalty > 0
            if submission.needs_manual_grade:
                table.manual.append(f"{name}/{student.id}")
        table.students.append(row)
    table.students.sort(key=lambda s: (s.last_name.lower(), s.first_name.lower(), s.id))
    return table


class ExportError(Exception):
    """Nothing to export; the message says why and what to do."""


class GradeTableExportPlugin(ExportPlugin):
    """Base of the LMS formats: builds the grade table, writes `rows(table)` to --to, and says what it did."""

    default_to = "grades.csv"
    summary = ""

    def rows(self, table: GradeTable) -> list[list]:
        raise NotImplementedError

    def export(self, gradebook) -> None:
        table = grade_table(gradebook, [str(a) for a in self.assignment], [str(s) for s in self.student])
        if not table.students:
            named = " of those named" if self.student else ""
            raise ExportError(f"no student to export: the gradebook has none{named}. Import the roster first: "
                              "nbgrader db student import students.csv")
        if not table.assignments:
            raise ExportError("no assignment to export: none " + ("of those named " if self.assignment else "")
                              + "has a graded submission yet. Run python -m grader autograde ASSIGNMENT first")
        for name in table.skipped:
            self.log.warning("Leaving out %s: no graded submission yet (it would enter the LMS as zeros)", name)
        if table.manual:
            shown = ", ".join(table.manual[:10]) + (" ..." if len(table.manual) > 10 else "")
            self.log.warning("%d submission(s) still need a manual grade; their cells count as 0 until graded: %s",
                             len(table.manual), shown)
        destination = self.to or self.default_to
        with open(destination, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(self.rows(table))
        self.summary = (f"{destination}: {len(table.students)} students, {len(table.assignments)} assignment(s) "
                        f"({', '.join(f'{a} /{_number(m)}' for a, m in table.assignments.items()) or 'none'}), "
                        f"course total out of {_number(table.max_total)}; {table.late} late penalt"
                        f"{'y' if table.late == 1 else 'ies'} applied; {table.unsubmitted} missing submission(s) "
                        "count 0")
        self.log.info("Wrote %s", self.summary)


class CanvasExportPlugin(GradeTableExportPlugin):
    """Canvas's gradebook import format."""

    default_to = "canvas-grades.csv"

    def rows(self, table: GradeTable) -> list[list]:
        names = list(table.assignments)
        rows = [["Student", "ID", "SIS User ID", "SIS Login ID", "Section", *names, "Final Points"],
                ["Points Possible", "", "", "", "", *(_number(table.assignments[a]) for a in names),
                 _number(table.max_total)]]
        rows += [[s.sortable_name, s.lms_user_id, "", s.id, "", *(_number(s.scores[a]) for a in names),
                  _number(s.total)] for s in table.students]
        return rows


class MoodleExportPlugin(GradeTableExportPlugin):
    """Moodle's CSV grade import format."""

    default_to = "moodle-grades.csv"

    def rows(self, table: GradeTable) -> list[list]:
        names = list(table.assignments)
        rows = [["First name", "Last name", "Username", "ID number", "Email address", *names, "Course total"]]
        rows += [[s.first_name, s.last_name, s.id, s.lms_user_id, s.email, *(_number(s.scores[a]) for a in names),
                  _number(s.total)] for s in table.students]
        return rows


class TotalsCsvExportPlugin(GradeTableExportPlugin):
    """One row per student: every assignment's score and late penalty, and the course total."""

    def rows(self, table: GradeTable) -> list[list]:
        names = list(table.assignments)
        header = ["student_id", "last_name", "first_name", "email", "lms_user_id"]
        header += [column for a in names for column in (a, f"{a} late_penalty")]
        rows = [header + ["late_penalty", "total", "max_total", "percent"]]
        for s in table.students:
            scores = [value for a in names for value in (_number(s.scores[a]), _number(s.penalties[a]))]
            percent = 100 * s.total / table.max_total if table.max_total else 0.0
            rows.append([s.id, s.last_name, s.first_name, s.email, s.lms_user_id, *scores,
                         _number(sum(s.penalties.values())), _number(s.total), _number(table.max_total),
                         _number(percent)])
        return rows


FORMATS = {"canvas": CanvasExportPlugin, "moodle": MoodleExportPlugin, "csv": TotalsCsvExportPlugin}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=sorted(FORMATS), required=True, help="the LMS's import format")
    parser.add_argument("--out", type=Path, help="the file to write (default: canvas-grades.csv, moodle-grades.csv "
                                                 "or grades.csv)")
    parser.add_argument("--assignment", action="append", default=[], metavar="NAME",
                        help="export only this assignment (repeat for several; default: every graded one)")
    parser.add_argument("--student", action="append", default=[], metavar="ID", help="export only this student")
    args, nbgrader_args = parser.parse_known_args(argv)
    unknown = [a for a in nbgrader_args if not a.startswith("--") or "=" not in a]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)} (nbgrader options take the form --name=value)")
    from nbgrader.apps.exportapp import ExportApp
    from traitlets.config import Config

    from .report_data import sqlite_file

    app = ExportApp()
    app.initialize(list(nbgrader_args))
    database = sqlite_file(app.coursedir.db_url)
    if database is not None and not database.is_file():
        print(f"grader export: no gradebook at {database}: run this from the course's root folder, or name it with "
              "--db=sqlite:////path/to/gradebook.db", file=sys.stderr)
        return 2
    plugin = FORMATS[args.format]
    config = Config()
    config.ExportApp.plugin_class = plugin
    config.ExportPlugin.to = str(args.out or plugin.default_to)
    config.ExportPlugin.assignment = args.assignment
    config.ExportPlugin.student = args.student
    app.update_config(config)
    try:
        app.start()
    except ExportError as problem:
        print(f"grader export: {problem}", file=sys.stderr)
        return 2
    print(f"Wrote {app.plugin_inst.summary}.")
    return 0
