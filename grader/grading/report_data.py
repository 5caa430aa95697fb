"""The class report's data: scores from nbgrader's gradebook, verdicts from the autograded notebooks.

Scores, names, due dates and late penalties are nbgrader's (`nbgrader.api.Gradebook`). What each
test cell's checks said is the re-run's verdict, which `RerunTests` stores in every autograded
notebook (see scoring.py): ``cell.metadata["grader"]`` = {status, points, max_points, lines, error,
seconds} on each test cell, and ``nb.metadata["grader"]`` = {flagged, reasons, rerun_seconds,
kernel_seconds} on the notebook. The kernel's outputs are never read: they are what the student's
code printed, not what was scored.

Diagnoses are grouped by template: in a diagnosis line, numbers (sizes, counts, shapes), names in
backticks and quoted text become placeholders, and singular and plural forms count as one, so that
"2 nn.Linear layers sit in a plain list at `self.layers`" and "3 nn.Linear layers sit in a plain
list at `self.blocks`" are the same misconception.
"""

import glob
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

FAILED = ("failed", "tampered", "missing")  # a student's zero; "grader-error" is the grader's, for a manual grade
NO_CHECK = "(no check ran)"  # the test raised before any check gave its verdict


class ReportError(Exception):
    """Input the report cannot use; the message says what is wrong and what to do."""


# ---------------------------------------------------------------- what was graded

@dataclass
class TestCell:
    grade_id: str
    status: str
    points: float
    max_points: float
    lines: list[str]
    seconds: float


@dataclass
class GradedNotebook:
    assignment: str
    student: str
    name: str
    path: Path
    score: float
    max_score: float
    flagged: bool
    reasons: list[str]
    rerun_seconds: float | None
    kernel_seconds: float | None
    tests: list[TestCell]
    answers: dict[str, str]  # answer cell -> the student's source

    @property
    def seconds(self) -> float | None:
        """Grading time: the kernel's run (when recorded) plus the re-run."""
        if self.rerun_seconds is None:
            return None
        return self.rerun_seconds + (self.kernel_seconds or 0.0)


@dataclass
class Submission:
    assignment: str
    student: str
    score: float       # nbgrader's score, before the late penalty
    penalty: float     # nbgrader's late penalty (AssignLatePenalties)
    max_score: float
    seconds_late: float
    needs_manual_grade: bool
    notebooks: list[GradedNotebook] = field(default_factory=list)

    @property
    def final(self) -> float:
        """The score after the late penalty, as nbgrader's export computes it."""
        return max(0.0, self.score - self.penalty)


@dataclass
class ClassData:
    assignments: list[str]
    max_scores: dict[str, float]
    students: dict[str, str]                  # id -> "First Last" (or the id)
    submissions: list[Submission]
    stubs: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (assignment, notebook) -> cell -> stub
    given: dict[tuple[str, str], frozenset] = field(default_factory=dict)        # names the release's code uses

    def notebooks(self):
        for submission in self.submissions:
            yield from submission.notebooks


def _meta(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def is_test(cell: dict) -> bool:
    meta = _meta(cell)
    return cell.get("cell_type") == "code" and bool(meta.get("grade")) and not meta.get("solution")


def is_answer(cell: dict) -> bool:
    meta = _meta(cell)
    return cell.get("cell_type") == "code" and bool(meta.get("solution")) and not meta.get("grade")


def read_notebook(path: Path, assignment: str, student: str, name: str, row) -> GradedNotebook:
    """One autograded notebook's verdicts, with the gradebook's score and flag (`row`: a SubmittedNotebook)."""
    nb = json.loads(path.read_text())
    found = nb.get("metadata", {}).get("grader")
    if not isinstance(found, dict):
        raise ReportError(f"{path} holds no verdicts of the grader's re-run: it was autograded without this course's "
                          f"nbgrader_config.py (RerunTests). Grade it again: python -m grader autograde {assignment} "
                          f"--student {student} --force")
    tests, answers = [], {}
    for cell in nb.get("cells", []):
        if is_test(cell):
            verdict = cell.get("metadata", {}).get("grader") or {}
            tests.append(TestCell(_meta(cell).get("grade_id", "?"), verdict.get("status", "missing"),
                                  float(verdict.get("points", 0.0)),
                                  float(verdict.get("max_points", _meta(cell).get("points", 0) or 0)),
                                  list(verdict.get("lines", [])), float(verdict.get("seconds", 0.0))))
        elif is_answer(cell):
            answers[_meta(cell).get("grade_id", "?")] = _source(cell)
    return GradedNotebook(assignment, student, name, path, float(row.score or 0.0), float(row.max_score or 0.0),
                          bool(row.flagged) or bool(found.get("flagged")), list(found.get("reasons", [])),
                          found.get("rerun_seconds"), found.get("kernel_seconds"), tests, answers)


def sqlite_file(db_url: str) -> Path | None:
    if db_url.startswith("sqlite:///"):
        return Path(db_url[len("sqlite:///"):].split("?", 1)[0])
    return None


def load(coursedir, assignments: list[str], progress=lambda done, total, what: None) -> ClassData:
    """Everything the report shows for these assignments (all graded ones when empty), or a ReportError."""
    from nbgrader.api import Gradebook, MissingEntry

    database = sqlite_file(coursedir.db_url)
    if database is not None and not database.is_file():
        raise ReportError(f"no gradebook at {database}: run this from the course's root folder (where "
                          "nbgrader_config.py is), or name the gradebook with --db=sqlite:////path/to/gradebook.db")
    with Gradebook(coursedir.db_url, coursedir.course_id) as gradebook:
        known = [a.name for a in gradebook.assignments]
        if not known and not gradebook.students:
            raise ReportError(f"the gradebook {coursedir.db_url} is empty: no assignments and no students. Generate "
                              "the assignments (nbgrader generate_assignment), then autograde the submissions")
        graded = {a.name: gradebook.assignment_submissions(a.name) for a in gradebook.assignments}
        if not assignments:
            assignments = [name for name in known if graded[name]]
            if not assignments:
                raise ReportError("no assignment has been autograded yet: the gradebook holds no submission. Run "
                                  "python -m grader autograde ASSIGNMENT first")
        for name in assignments:
            if name not in graded:
                has = ", ".join(sorted(known)) or "none"
                raise ReportError(f"no assignment {name!r} in the gradebook (it has: {has})")
            if not graded[name]:
                waiting = len(glob.glob(coursedir.format_path(coursedir.submitted_directory, "*", name)))
                raise ReportError(f"{name} is not graded yet: the gradebook holds no submission of it"
                                  + (f" ({waiting} submitted under {coursedir.submitted_directory}/)"
                                     if waiting else "")
                                  + f". Run python -m grader autograde {name} first")
        students = {s.id: " ".join(filter(None, (s.first_name, s.last_name))) or s.id for s in gradebook.students}
        data = ClassData(list(assignments), {}, students, [])
        todo = [(name, submission) for name in assignments for submission in graded[name]]
        total = sum(len(s.notebooks) for _, s in todo)
        missing, done = [], 0
        for name, row in todo:
            data.max_scores[name] = float(row.max_score or 0.0)
            student = row.student.id
            submission = Submission(name, student, float(row.score or 0.0), float(row.late_submission_penalty or 0.0),
                                    float(row.max_score or 0.0), row.total_seconds_late, bool(row.needs_manual_grade))
            folder = Path(coursedir.format_path(coursedir.autograded_directory, student, name))
            for notebook in row.notebooks:
                path = folder / f"{notebook.name}.ipynb"
                done += 1
                progress(done, total, f"{name}/{student}")
                if not path.is_file():
                    missing.append(path)
                    continue
                submission.notebooks.append(read_notebook(path, name, student, notebook.name, notebook))
            data.submissions.append(submission)
        if missing:
            shown = "\n  ".join(str(p) for p in missing[:10]) + (f"\n  ... and {len(missing) - 10} more"
                                                                  if len(missing) > 10 else "")
            raise ReportError(f"{len(missing)} graded notebook(s) missing from {coursedir.autograded_directory}/ "
                              f"though the gradebook holds their scores:\n  {shown}\nGrade them again "
                              "(python -m grader autograde ASSIGNMENT --student ID --force), or restore the folder")
        for name in assignments:
            try:
                notebooks = gradebook.find_assignment(name).notebooks
            except MissingEntry:
                notebooks = []
            for notebook in notebooks:
                _read_release(coursedir, data, name, notebook.name)
    return data


def _read_release(coursedir, data: ClassData, assignment: str, notebook: str) -> None:
    """The release's stubs of the answer cells and the names its code uses (for the similarity of answers)."""
    from .similarity import given_names

    path = Path(coursedir.format_path(coursedir.release_directory, ".", assignment)) / f"{notebook}.ipynb"
    if not path.is_file():
        return
    cells = json.loads(path.read_text()).get("cells", [])
    stubs = {_meta(c)["grade_id"]: _source(c) for c in cells if is_answer(c) and _meta(c).get("grade_id")}
    locked = [_source(c) for c in cells if c.get("cell_type") == "code" and _meta(c).get("locked")]
    data.stubs[(assignment, notebook)] = stubs
    data.given[(assignment, notebook)] = given_names(locked + list(stubs.values()))


# ---------------------------------------------------------------- diagnoses and their templates

HEADLINE = re.compile(r"^[✗⚠]\s*(?P<check>[^:\[]+?)(?:\s*\[(?P<where>[^\]]*)\])?:\s*(?P<problem>.*)$")
PASSED = re.compile(r"^✓\s*(?P<check>[^:\[]+?)(?:\s*\[[^\]]*\])?:")
BACKTICKED = re.compile(r"`[^`]*`")
QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+x)*(?:\d{1,3}(?:,\d{3})+|\d[\d_]*)(?:\.\d+)?(?:e[-+]?\d+)?(?![\w])")
ELEMENT = r"(?:N|\(N…\)|\[N…\])"
NUMBER_LIST = re.compile(rf"[(\[]\s*{ELEMENT}(?:\s*,\s*{ELEMENT})*\s*,?\s*[)\]]")
WORD = re.compile(r"[A-Za-z]+")
AGREEMENT = {"are": "is", "were": "was", "have": "has", "do": "does"}


def template(line: str) -> str:
    """The line with its particulars as placeholders: numbers N, lists of numbers (N…), `…` and '…'."""
    text = " ".join(line.split())
    text = BACKTICKED.sub("`…`", text)
    text = QUOTED.sub("'…'", text)
    text = NUMBER.sub("N", text)
    previous = None
    while previous != text:
        previous, text = text, NUMBER_LIST.sub(lambda m: "[N…]" if m.group().startswith("[") else "(N…)", text)
    return text


def _fold(word: str) -> str:
    word = AGREEMENT.get(word.lower(), word.lower())
    if len(word) > 3 and word.endswith("es") and word[:-2].endswith(("s", "x", "sh", "ch")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def template_key(line: str) -> str:
    """What two diagnoses share when they are the same misconception: the template, singular and plural as one."""
    return WORD.sub(lambda m: _fold(m.group()), template(line))


def failure(lines: list[str]) -> tuple[str, list[str]]:
    """(the check that failed, its diagnosis lines: what is wrong and the details) from a verdict's lines."""
    for index, line in enumerate(lines):
        if not line.startswith(("✗", "⚠")):
            continue
        match = HEADLINE.match(line)
        if match:
            check, problem, where = match["check"].strip(), match["problem"].strip(), (match["where"] or "").strip()
            if where and where != "cpu":
                problem = f"[{where}] {problem}"
        else:
            check, problem = NO_CHECK, line[1:].strip()
        details = [d.strip()[2:].strip() for d in lines[index + 1:] if d.startswith("  - ")]
        return check, [problem, *details]
    return NO_CHECK, ["no verdict line"]


def passed_checks(lines: list[str]) -> list[str]:
    """The checks that printed a ✓ verdict, in order."""
    return list(dict.fromkeys(m["check"].strip() for m in map(PASSED.match, lines) if m))


# ---------------------------------------------------------------- what the report shows

@dataclass
class Diagnosis:
    template: str
    example: str   # the most common wording
    count: int     # failures whose diagnosis holds this template
    wordings: int  # distinct wordings grouped under the template


@dataclass
class CheckSummary:
    assignment: str
    notebook: str
    cell: str
    check: str
    failures: int
    runs: int      # submissions in which the check gave a verdict (passed or failed)
    diagnoses: list[Diagnosis]


def cell_rates(data: ClassData) -> list[dict]:
    """Per test cell: how many submissions passed it, failed it, and how."""
    rows: dict[tuple, dict] = {}
    for nb in data.notebooks():
        for cell in nb.tests:
            row = rows.setdefault((nb.assignment, nb.name, cell.grade_id),
                                  {"assignment": nb.assignment, "notebook": nb.name, "cell": cell.grade_id,
                                   "points": cell.max_points, "submissions": 0, "passed": 0, "failed": 0,
                                   "tampered": 0, "missing": 0, "grader-error": 0})
            row["submissions"] += 1
            row[cell.status if cell.status in row else "missing"] += 1
    for row in rows.values():
        row["pass_rate"] = row["passed"] / row["submissions"] if row["submissions"] else 0.0
    return list(rows.values())


def check_summaries(data: ClassData, top: int = 5) -> list[CheckSummary]:
    """Per (test cell, check): failures, runs, and the most common diagnoses by template."""
    failures: dict[tuple, int] = Counter()
    runs: dict[tuple, int] = Counter()
    keys: dict[tuple, Counter] = defaultdict(Counter)
    wordings: dict[tuple, Counter] = defaultdict(Counter)
    details: set[str] = set()  # templates seen as a detail line (where to look), not only as the headline
    order: dict[tuple, int] = {}
    for nb in data.notebooks():
        for cell in nb.tests:
            where = (nb.assignment, nb.name, cell.grade_id)
            seen = passed_checks(cell.lines)
            if cell.status in FAILED:
                check, diagnoses = failure(cell.lines)
                failures[where + (check,)] += 1
                seen.append(check)
                for key in dict.fromkeys(template_key(line) for line in diagnoses):
                    keys[where + (check,)][key] += 1
                for line in diagnoses:
                    wordings[where + (check, template_key(line))][" ".join(line.split())] += 1
                details.update(template_key(line) for line in diagnoses[1:])
            for check in dict.fromkeys(seen):
                runs[where + (check,)] += 1
                order.setdefault(where + (check,), len(order))
    found = []
    for key in sorted(runs, key=order.get):
        diagnoses = []
        # most common first; in a tie, a detail (the cause, where to look) before a headline (the symptom)
        ranked = sorted(keys[key].items(), key=lambda item: (-item[1], item[0] not in details, item[0]))
        for template_id, count in ranked[:top]:
            said = wordings[key + (template_id,)]
            example = said.most_common(1)[0][0]
            diagnoses.append(Diagnosis(template(example), example, count, len(said)))
        found.append(CheckSummary(*key, failures=failures[key], runs=runs[key], diagnoses=diagnoses))
    return found


def flagged(data: ClassData) -> list[GradedNotebook]:
    return [nb for nb in data.notebooks() if nb.flagged]


def repeated_failures(data: ClassData) -> list[dict]:
    """Students who failed the same check in several assignments: {student, name, check, assignments}."""
    failed: dict[tuple[str, str], set] = defaultdict(set)
    for nb in data.notebooks():
        for cell in nb.tests:
            if cell.status in FAILED:
                failed[(nb.student, failure(cell.lines)[0])].add(nb.assignment)
    rows = [{"student": student, "name": data.students.get(student, student), "check": check,
             "assignments": sorted(assignments, key=data.assignments.index)}
            for (student, check), assignments in failed.items() if len(assignments) > 1]
    return sorted(rows, key=lambda r: (-len(r["assignments"]), r["student"], r["check"]))
