"""A small real assignment for the grading-defence tests, cut from unit 01's source notebook.

`make_lab_course` writes a course folder whose source notebook holds unit 01's set-up, its first
answer (the counting functions) and test (1 point), a locked helper (`linear_stack`, as unit 03 keeps
its EMA helper in a locked cell of its own) and a test that uses it (1 point), its SuperNet part
(demo, answer and test, 2 points), plus one test of ours (1 point) that calls the student's model
outside a check, as unit 02's tests do (so that a warning the model raises there reaches the cell's
stderr); then it runs the real `nbgrader generate_assignment`. The configuration is the repo's own
nbgrader_config.py ("ours") or the same file with nbgrader's default preprocessors put back
("stock"). Students are the generated release, edited cell by cell.

`graded_lab()` grades every student the defence tests read (the attack corpus of tests/attacks/ and
its honest cases, the blank, the reference, a reference that warns, a partly wrong answer) once per
test run, under both configurations, and renders everyone's feedback: tests/test_attacks.py and
tests/test_feedback.py share it (a lock lets one pytest-xdist worker build it for all).

An attack file's docstring says what it does, then its fields: ``where`` (see `with_attack`),
``stock`` (what stock nbgrader gives it), and optionally ``answers: reference`` (it starts from the
reference answers rather than the blank release), ``first_line`` (a cell magic, put before the
code), ``effect`` (``leak``: it aims at hidden test code in the feedback; ``script``: at running its
script in formgrader or the feedback; by default at the score) and ``needs: processes`` (an honest
case that needs the OS sandbox, which lets graded code start processes; ``contained``: why an attack
that the sandbox lets run, and so leaves unflagged, still reaches nothing). Files named ``honest_*``
are honest, correct answers: full marks, never flagged.
"""

import fcntl
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

from conftest import ROOT, nbgrader, tool_env

ASSIGNMENT = "lab"
NOTEBOOK = "lab"
SOURCE = ROOT / "solutions" / "01_registration" / "registration.ipynb"
def _locked(source: str, grade_id: str, points: int = 0):
    meta = {"grade": bool(points), "grade_id": grade_id, "locked": True, "schema_version": 3, "solution": False,
            "task": False}
    return new_code_cell(source, metadata={"nbgrader": {**meta, **({"points": points} if points else {})}})


# A helper in a locked cell of its own, used by a later test: it must keep the `nn` it was written against.
MLP_HELPER = _locked('''def linear_stack(sizes):
    """The stack of nn.Linear layers between consecutive sizes, which mlp_params(sizes) counts."""
    return nn.Sequential(*(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])))''', "mlp_helper")
MLP_TEST = _locked('''"""Check that mlp_params matches a stack of nn.Linear layers (built by the helper above)."""
check_counting(mlp_params, linear_stack, [((20, 64, 10),)])
### BEGIN HIDDEN TESTS
check_counting(mlp_params, linear_stack, [((784, 256, 10),), ((5, 4, 3, 2),), ((9, 1),)])
### END HIDDEN TESTS''', "test_mlp_params", points=1)
CELLS = ("intro", "setup", "counting_goal", "counting_functions", "test_linear_params", MLP_HELPER, MLP_TEST,
         "super_goal", "super_broken", "super_demo", "super_task", "super_answer", "test_super_net")
MAX_SCORE = 5.0
DIRECT_CALL = new_code_cell(
    '''"""Check that SuperNet runs on a batch of another size, called directly."""
### BEGIN HIDDEN TESTS
output = SuperNet(3, 5, 2)(torch.randn(4, 3))  # outside any check: a warning here goes to stderr
check_gradient_flow(lambda: SuperNet(3, 5, 2), example=(4, 3))
### END HIDDEN TESTS''',
    metadata={"nbgrader": {"grade": True, "grade_id": "test_super_net_direct", "locked": True, "points": 1,
                           "schema_version": 3, "solution": False, "task": False}})
# Execute.timeout for the lab. The reference's slowest cell, test_super_net, takes about 7 s on a loaded 2-core
# machine (check_learning's first optimizer step imports torch._dynamo in the kernel); 10 s timed it out.
TIMEOUT = 30
# ... except a first torch.compile (the honest cases): nbclient's per-cell limit, which the re-run follows too
COMPILE_TIMEOUT = """
def _lab_timeout(cell):
    return 600 if "torch.compile" in cell.get("source", "") else c.Execute.timeout
c.Execute.timeout_func = _lab_timeout
"""

# nbgrader's own defaults, appended to the repo's configuration: stock nbgrader 0.9.6 on the same course.
STOCK = """
# --- stock nbgrader: the default preprocessors, as shipped ---
from nbgrader.converters import Autograde as _StockAutograde, GenerateFeedback as _StockFeedback
c.Autograde.autograde_preprocessors = _StockAutograde.class_traits()["autograde_preprocessors"].default()
c.GenerateFeedback.preprocessors = _StockFeedback.class_traits()["preprocessors"].default()
c.OverwriteCells.add_missing_cells = False
"""


ATTACKS_DIR = Path(__file__).parent / "attacks"
WARNS = '''
        nn.init.kaiming_uniform(self.fc1.weight)  # deprecated spelling: torch raises a UserWarning
'''


@dataclass
class Attack:
    name: str
    title: str
    where: str
    stock: float
    code: str
    answers: str = "blank"  # or "reference"
    first_line: str = ""    # a cell magic (not Python, so it lives in the header): the cell's first line
    effect: str = "score"   # or "leak" (hidden tests in feedback), "script" (runs in formgrader or feedback)
    needs: str = ""         # "processes": an honest case that needs the OS sandbox
    contained: str = ""     # why, inside the OS sandbox, the attempt runs unrefused (so unflagged) yet reaches nothing

    @property
    def honest(self) -> bool:
        return self.name.startswith("honest_")


def load_attack(path: Path) -> Attack:
    text = path.read_text()
    header = re.match(r'"""(.*?)"""', text, re.S).group(1)
    fields = dict(re.findall(r"^(\w+): (.+)$", header, re.M))
    title = " ".join(header.split("\n\n")[0].split())
    code = text[len(header) + 6:].lstrip("\n")
    if fields.get("first_line"):
        code = fields["first_line"] + "\n" + code
    return Attack(path.stem, title, fields["where"], float(fields["stock"]), code, fields.get("answers", "blank"),
                  fields.get("first_line", ""), fields.get("effect", "score"), fields.get("needs", ""),
                  fields.get("contained", ""))


CORPUS = [load_attack(p) for p in sorted(ATTACKS_DIR.glob("*.py"))]
ATTACKS = [a for a in CORPUS if not a.honest]
HONEST = [a for a in CORPUS if a.honest]
# Attacks on what the kernel's or the re-run's process can reach (files, the gradebook, processes, fork servers).
# The two commands start those processes differently (python -m grader autograde forks kernels from a warm server
# in a sandbox; nbgrader autograde has bwrap start each kernel), so these also run under `nbgrader autograde` with
# the course's configuration, with the honest cases. The in-process attacks meet the same preprocessors either way.
LAUNCH_PATH = ("14_gradebook_write", "16_read_solution", "17_daemon", "30_fork_server", "31_sqlite_attach",
               "32_dir_fd_chdir")


def lab_source() -> nbformat.NotebookNode:
    notebook = nbformat.read(SOURCE, as_version=4)
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in notebook.cells}
    notebook.cells = [by_id[name] if isinstance(name, str) else name for name in CELLS] + [DIRECT_CALL]
    return notebook


def make_lab_course(root: Path, config: str = "ours") -> Path:
    """A course folder with the lab assignment generated into its gradebook."""
    root.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "nbgrader_config.py").read_text() + f"\nc.Execute.timeout = {TIMEOUT}\n" + COMPILE_TIMEOUT
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
    "prepend ID" (put before that answer cell's source: a cell magic), "replace ID" (the answer cell's
    whole source), or "nowhere" (just the answers).
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
    elif place == "prepend":
        cell = answer_cell(notebook, target)
        cell.source = code.rstrip("\n") + "\n" + cell.source
    elif place == "replace":
        answer_cell(notebook, target).source = code
    else:
        raise ValueError(f"unknown placement {where!r}")
    return notebook


def autograde_all(courses: list[Path], parallel: tuple[Path, ...] = ()) -> dict[Path, float]:
    """Autograde every course at once (one process each); seconds each took.

    A course in `parallel` is graded by `python -m grader autograde` (one worker, warm forked kernels), the
    others by `nbgrader autograde`; both run nbgrader's converter with the course's configuration.
    """
    nbgrader_bin = Path(sys.executable).parent / "nbgrader"
    commands = {course: [sys.executable, "-m", "grader", "autograde", ASSIGNMENT, "--force", "--quiet",
                         "--workers", "1", "--log-dir", str(course / "logs")] if course in parallel
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
def warning_answers(answers: dict[str, str]) -> dict[str, str]:
    """The reference, with a line in SuperNet.__init__ that makes torch raise a UserWarning."""
    super_answer = answers["super_answer"]
    warns = super_answer.replace("        ### END SOLUTION", WARNS.rstrip("\n") + "\n        ### END SOLUTION", 1)
    assert warns != super_answer
    return {**answers, "super_answer": warns}


def graded_lab(tmp_path_factory) -> dict:
    """{"courses": {config: folder}, "seconds": {config: s}, "logs": {config: text}}, built once per test run.

    "stock" is graded by `nbgrader autograde` with nbgrader's default preprocessors, "ours" by `python -m grader
    autograde`, "nbgrader" by `nbgrader autograde` with the course's configuration (see `lab_students`); feedback
    is generated for stock and ours. Under pytest-xdist the lab lives beside
    the workers' temp folders, and a lock lets the first worker that asks build it for all.
    """
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "grading-lab"
    with open(f"{root}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done.json").exists():
            (root / "done.json").write_text(json.dumps(_grade_lab(root)))
    done = json.loads((root / "done.json").read_text())
    return {"courses": {config: Path(path) for config, path in done["courses"].items()},
            "seconds": done["seconds"], "logs": done["logs"]}


def lab_students(config: str) -> list:
    """The attacks and honest cases each configuration grades: stock (nbgrader's defaults, the baseline) every
    attack; ours every case; nbgrader (the stock command with the course's configuration) the honest cases and
    the attacks on the launch path. Honest cases are not graded by stock: it has no defence to mistake them."""
    if config == "stock":
        return ATTACKS
    if config == "nbgrader":
        return [a for a in CORPUS if a.honest or a.name in LAUNCH_PATH]
    return CORPUS


def _grade_lab(root: Path) -> dict:
    shutil.rmtree(root, ignore_errors=True)
    courses = {config: make_lab_course(root / config, config) for config in ("stock", "ours", "nbgrader")}
    answers = reference_answers()
    for config, course in courses.items():
        submit(course, "blank", release(course))
        submit(course, "reference", with_attack(course, "nowhere", "", answers))
        if config != "nbgrader":
            submit(course, "reference_warns", with_attack(course, "nowhere", "", warning_answers(answers)))
            submit(course, "partly_wrong", with_attack(course, "nowhere", "", PARTLY_WRONG))
        for attack in lab_students(config):
            start = answers if attack.answers == "reference" else None
            submit(course, attack.name, with_attack(course, attack.where, attack.code, start))
    seconds = autograde_all(list(courses.values()), parallel=(courses["ours"],))
    time.sleep(5)  # the detached processes of 17_daemon and 31_fork_server write 3 s after their kernel is gone
    for config in ("stock", "ours"):
        nbgrader("generate_feedback", ASSIGNMENT, "--force", cwd=courses[config])
    return {"courses": {config: str(course) for config, course in courses.items()},
            "seconds": {config: seconds[course] for config, course in courses.items()},
            "logs": {config: (course / "autograde.log").read_text() for config, course in courses.items()}}


def feedback_html(course: Path, student: str) -> str:
    return (course / "feedback" / student / ASSIGNMENT / f"{NOTEBOOK}.html").read_text()


def autograded(course: Path, student: str) -> nbformat.NotebookNode:
    return nbformat.read(course / "autograded" / student / ASSIGNMENT / f"{NOTEBOOK}.ipynb", as_version=4)


def formgrader_html(course: Path, student: str) -> str:
    """The autograded notebook as formgrader renders it for the instructor (nbgrader's formgrade template)."""
    from nbconvert.exporters import HTMLExporter
    from nbgrader.server_extensions.formgrader import handlers

    exporter = HTMLExporter(template_name="formgrade", extra_template_basedirs=[handlers.template_path])
    resources = {"assignment_id": ASSIGNMENT, "notebook_id": NOTEBOOK, "submission_id": "s", "index": 0, "total": 1,
                 "base_url": "", "student": student, "last_name": None, "first_name": None, "notebook_path": ""}
    html, _ = exporter.from_filename(str(course / "autograded" / student / ASSIGNMENT / f"{NOTEBOOK}.ipynb"),
                                     resources=resources)
    return html


def runs_script(page: str, marker: str) -> bool:
    """Does the page hold `marker` where a browser would run it: in a script element or an on* attribute,
    or in a javascript: URL?"""
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", page, re.S | re.I)
    handlers = re.findall(r"\son[a-z]+\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s>]+)", page, re.I)
    urls = re.findall(r"(?:href|src)\s*=\s*[\"']?\s*javascript:([^\"'>]*)", page, re.I)
    return any(marker in text for text in scripts + handlers + urls)


def allows_processes(course: Path) -> bool:
    """Does the course's configuration let graded code start processes, in the kernel and in the re-run? By default,
    when the OS sandbox holds them (as `rerun.processes_allowed` decides, in the environment the tests grade with)."""
    from traitlets.config.loader import PyFileConfigLoader

    from grader.grading.rerun import processes_allowed

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    return all(processes_allowed(config[name].get("allow_processes")) for name in ("RerunTests", "GuardedExecute"))


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data):
        self.parts.append(data)


def text_of(page: str) -> str:
    """The text a reader sees on an HTML page."""
    parser = _Text()
    parser.feed(page)
    return html.unescape("".join(parser.parts))


def hidden_lines(notebook) -> list[str]:
    """Non-blank lines between BEGIN and END HIDDEN TESTS, stripped."""
    found = []
    for cell in notebook.cells:
        inside = False
        for line in cell.source.splitlines():
            if "BEGIN HIDDEN TESTS" in line:
                inside = True
            elif "END HIDDEN TESTS" in line:
                inside = False
            elif inside and line.strip():
                found.append(line.strip())
    return found
