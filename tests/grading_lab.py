"""A small real assignment for the grading-defence tests, cut from unit 01's source notebook.

`make_lab_course` writes a course folder whose source notebook holds unit 01's set-up, its first
answer (the counting functions, 1 point) and its SuperNet part (demo, answer and test, 2 points),
plus one test of ours (1 point) that calls the student's model outside a check, as unit 02's tests
do (so that a warning the model raises there reaches the cell's stderr); then it runs the real
`nbgrader generate_assignment`. The configuration is the repo's own
nbgrader_config.py ("ours") or the same file with nbgrader's default preprocessors put back
("stock"). Students are the generated release, edited cell by cell.
"""

import atexit
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

from conftest import ROOT, nbgrader, tool_env

ASSIGNMENT = "lab"
NOTEBOOK = "lab"
SOURCE = ROOT / "solutions" / "01_registration" / "registration.ipynb"
CELLS = ("intro", "setup", "counting_goal", "counting_functions", "test_linear_params", "super_goal",
         "super_broken", "super_demo", "super_task", "super_answer", "test_super_net")
MAX_SCORE = 4.0
DIRECT_CALL = new_code_cell(
    '''"""Check that SuperNet runs on a batch of another size, called directly."""
### BEGIN HIDDEN TESTS
output = SuperNet(3, 5, 2)(torch.randn(4, 3))  # outside any check: a warning here goes to stderr
check_gradient_flow(lambda: SuperNet(3, 5, 2), example=(4, 3))
### END HIDDEN TESTS''',
    metadata={"nbgrader": {"grade": True, "grade_id": "test_super_net_direct", "locked": True, "points": 1,
                           "schema_version": 3, "solution": False, "task": False}})
TIMEOUT = 10  # Execute.timeout for the lab: every cell of the reference takes well under a second

# nbgrader's own defaults, appended to the repo's configuration: stock nbgrader 0.9.6 on the same course.
STOCK = """
# --- stock nbgrader: the default preprocessors, as shipped ---
from nbgrader.converters import Autograde as _StockAutograde, GenerateFeedback as _StockFeedback
c.Autograde.autograde_preprocessors = _StockAutograde.class_traits()["autograde_preprocessors"].default()
c.GenerateFeedback.preprocessors = _StockFeedback.class_traits()["preprocessors"].default()
c.OverwriteCells.add_missing_cells = False
"""


def lab_source() -> nbformat.NotebookNode:
    notebook = nbformat.read(SOURCE, as_version=4)
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in notebook.cells}
    notebook.cells = [by_id[name] for name in CELLS] + [DIRECT_CALL]
    return notebook


def make_lab_course(root: Path, config: str = "ours") -> Path:
    """A course folder with the lab assignment generated into its gradebook."""
    root.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "nbgrader_config.py").read_text() + f"\nc.Execute.timeout = {TIMEOUT}\n"
    if config == "stock":
        text += STOCK
    (root / "nbgrader_config.py").write_text(text)
    (root / "solutions" / ASSIGNMENT).mkdir(parents=True, exist_ok=True)
    nbformat.write(lab_source(), root / "solutions" / ASSIGNMENT / f"{NOTEBOOK}.ipynb")
    nbgrader("generate_assignment", ASSIGNMENT, "--force", cwd=root)
    return root


def release(root: Path) -> nbformat.NotebookNode:
    return nbformat.read(root / "exercises" / ASSIGNMENT / f"{NOTEBOOK}.ipynb", as_version=4)


def answer_cell(notebook, grade_id: str):
    return next(c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def reference_answers() -> dict[str, str]:
    """The lab's answer cells as the reference solution writes them."""
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in lab_source().cells}
    return {name: cells[name].source for name in ("counting_functions", "super_answer")}


def submit(root: Path, student: str, notebook) -> None:
    folder = root / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, folder / f"{NOTEBOOK}.ipynb")


def with_attack(root: Path, where: str, code: str, answers: dict[str, str] | None = None):
    """The release (or these answers) with attack code where a student can put it.

    `where`: "added first" / "added last" (a new cell), "answer ID" (appended to that answer cell),
    "replace ID" (the answer cell's whole source), or "nowhere" (just the answers).
    """
    notebook = release(root)
    for grade_id, source in (answers or {}).items():
        answer_cell(notebook, grade_id).source = source
    place, _, target = where.partition(" ")
    if place == "nowhere":
        pass
    elif place == "added":
        cell = new_code_cell(code)
        notebook.cells.insert(0 if target == "first" else len(notebook.cells), cell)
    elif place == "answer":
        cell = answer_cell(notebook, target)
        cell.source = cell.source + "\n\n" + code
    elif place == "replace":
        answer_cell(notebook, target).source = code
    else:
        raise ValueError(f"unknown placement {where!r}")
    return notebook


def autograde_all(courses: list[Path], parallel: tuple[Path, ...] = ()) -> dict[Path, float]:
    """Autograde every course at once (one process each); seconds each took.

    A course in `parallel` is graded by `python -m grader autograde` (2 workers, warm forked kernels), the
    others by `nbgrader autograde`; both run nbgrader's converter with the course's configuration.
    """
    nbgrader_bin = Path(sys.executable).parent / "nbgrader"
    commands = {course: [sys.executable, "-m", "grader", "autograde", ASSIGNMENT, "--force", "--quiet",
                         "--workers", "2", "--log-dir", str(course / "logs")] if course in parallel
                else [nbgrader_bin, "autograde", ASSIGNMENT, "--force"] for course in courses}
    started = time.monotonic()
    running = {course: subprocess.Popen(command, cwd=course, env=tool_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
               for course, command in commands.items()}
    times = {}
    for course, process in running.items():
        output, _ = process.communicate(timeout=1800)
        (course / "autograde.log").write_text(output)
        times[course] = time.monotonic() - started
        assert process.returncode in (0, 1), f"autograde crashed in {course}:\n{output[-3000:]}"
    return times


def scores(root: Path) -> dict[str, tuple[float, bool]]:
    """student -> (score, flagged) from the course's gradebook; a submission nbgrader could not grade scores 0."""
    from nbgrader.api import Gradebook, MissingEntry

    found = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        for student in sorted(p.name for p in (root / "submitted").iterdir()):
            try:
                submission = gradebook.find_submission(ASSIGNMENT, student)
                notebook = gradebook.find_submission_notebook(NOTEBOOK, ASSIGNMENT, student)
                found[student] = (submission.score, bool(notebook.flagged))
            except MissingEntry:
                found[student] = (0.0, False)
    return found


def copy_course(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# ---------------------------------------------------------------- feedback, shared by test_feedback and test_secrecy

PARTLY_WRONG = {
    # linear_params forgets the bias; the other counts are right
    "counting_functions": '''def linear_params(in_features, out_features):
    return out_features * in_features


def batchnorm_params(c):
    return 2 * c


def batchnorm_buffer_elements(c):
    return 2 * c + 1


def mlp_params(sizes):
    return sum(linear_params(a, b) for a, b in zip(sizes, sizes[1:]))
''',
    # SuperNet forgets super().__init__()
    "super_answer": '''class SuperNet(nn.Module):
    def __init__(self, in_features, hidden, out_features):
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))
''',
}
_FEEDBACK: dict = {}


def feedback_courses() -> dict[str, Path]:
    """Both configurations, with a partly wrong student and the reference autograded and their feedback
    generated; built once per test session (test_feedback and test_secrecy read the same files)."""
    if not _FEEDBACK:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="grader-feedback-"))
        atexit.register(shutil.rmtree, root, True)
        courses = {config: make_lab_course(root / config, config) for config in ("stock", "ours")}
        for course in courses.values():
            submit(course, "partly_wrong", with_attack(course, "nowhere", "", PARTLY_WRONG))
            submit(course, "reference", with_attack(course, "nowhere", "", reference_answers()))
        autograde_all(list(courses.values()))
        for course in courses.values():
            nbgrader("generate_feedback", ASSIGNMENT, "--force", cwd=course)
        _FEEDBACK.update(courses)
    return dict(_FEEDBACK)


def feedback_html(course: Path, student: str) -> str:
    return (course / "feedback" / student / ASSIGNMENT / f"{NOTEBOOK}.html").read_text()
