"""`python -m grader report` on a graded class with known answer patterns (synthetic_course.shared_class: 31
students, two assignments, eight archetypes graded for real by the course's configuration): its pass rates,
diagnoses by template, flags, late penalties, repeated failures and similar answers equal the pattern; the page
is self-contained and escapes what students wrote; bad input gets a clear message."""

import csv
import json
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from conftest import tool_env
from synthetic_course import CLASS_ASSIGNMENTS, RENAMED, class_plan, shared_class

from grader.grading import report, report_data, similarity

graded = pytest.mark.notebooks  # tests of the graded class (built with nbgrader and kernels); the others are fast

# ---------------------------------------------------------------- the known pattern, written by hand

CELLS = ("test_linear_params", "test_mlp_params", "test_super_net", "test_super_net_direct")
PLAIN = "N nn.Linear layers sit in a plain list at `…` and are not registered: use nn.ModuleList"
HIDDEN = "model.parameters() sees N trainable parameters; N more are hidden from it"
UNREGISTERED = "some trainable tensors are not registered, so no optimizer will ever update them"
STUB = "raised NotImplementedError: replace this line with your code (in `…`, line N)"
# archetype -> failed cell -> (the check that fails, the templates of its diagnosis); every other cell passes
FAILS = {
    "no_bias_plain": {
        "test_linear_params": ("counting trainable parameters", {
            "N cases of N wrong",
            "linear_params(N…) returned N, but nn.Linear built with (N…) has N trainable parameters"}),
        "test_mlp_params": ("counting trainable parameters", {
            "N case of N wrong",
            "mlp_params(N…) returned N, but nn.Sequential built with (N…) has N trainable parameters"}),
        "test_super_net": ("trainable parameters", {HIDDEN, PLAIN}),
        "test_super_net_direct": ("gradient flow", {UNREGISTERED, PLAIN}),
    },
    "plain_blocks": {
        "test_super_net": ("trainable parameters", {HIDDEN, PLAIN}),
        "test_super_net_direct": ("gradient flow", {UNREGISTERED, PLAIN}),
    },
    "no_super": {
        "test_super_net": ("trainable parameters", {"building the model raised AttributeError: cannot assign module "
                                                    "before Module.__init__() call (in `…`, line N)"}),
        "test_super_net_direct": (report_data.NO_CHECK, {"your model could not be built"}),
    },
    "blank": {
        "test_linear_params": ("counting trainable parameters", {f"linear_params(N…) {STUB}"}),
        "test_mlp_params": ("counting trainable parameters", {f"mlp_params(N…) {STUB}"}),
        "test_super_net": ("trainable parameters", {f"building the model {STUB}"}),
        "test_super_net_direct": (report_data.NO_CHECK, {"your answer is still the stub"}),
    },
}
FAILS["flagged"] = FAILS["blank"]  # the attack's answers are the stub; its kernel passes were not counted
RAW_SCORE = {"reference": 5, "late": 5, "extended": 5, "no_bias_plain": 0, "plain_blocks": 2, "no_super": 2,
             "blank": 0, "flagged": 0}
PENALTY = {"late": 2}  # two days late, one point a day; "extended" is as late, within its extension
PLAN = class_plan()


def expected_failures() -> dict:
    """(assignment, cell, check) -> {template: failures with it}, counted from the plan."""
    found = defaultdict(Counter)
    for per in PLAN.values():
        for assignment, archetype in per.items():
            for cell, (check, templates) in FAILS.get(archetype, {}).items():
                found[(assignment, cell, check)]["(failures)"] += 1
                found[(assignment, cell, check)].update(templates)
    return found


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(autouse=True)
def nbgrader_tools(monkeypatch):
    """nbgrader runs `alembic` by name when it creates a gradebook: this interpreter's bin/ first on PATH."""
    monkeypatch.setenv("PATH", tool_env()["PATH"])


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    return shared_class(tmp_path_factory)


@pytest.fixture(scope="module")
def built(course, tmp_path_factory):
    """The report of the whole class, built by the CLI as an instructor runs it (progress on stderr)."""
    out = tmp_path_factory.mktemp("report")
    done = subprocess.run([sys.executable, "-m", "grader", "report", "--out", str(out), "--top", "10"], cwd=course,
                          env=tool_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done


# ---------------------------------------------------------------- the report equals the pattern

@graded
def test_the_cli_reports_progress_and_writes_the_page_and_the_data(built):
    out, done = built
    assert "Report on lab, lab2: 31 students, 60 submissions, 60 notebooks" in done.stdout
    progress = [line for line in done.stderr.splitlines() if line.startswith("report: reading autograded notebooks")]
    assert progress and progress[-1].endswith("60/60") and len(progress) <= 11  # a line per tenth, not per notebook
    assert (out / "report.html").is_file()
    for name in report.CSV_FILES:
        assert (out / f"{name}.csv").is_file(), name
    for name in ("scores", "pass-rates", "failing-checks", "grading-time"):
        assert (out / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG"), name


@graded
def test_pass_rates_equal_the_known_pattern(built):
    rows = {(r["assignment"], r["cell"]): r for r in read_csv(built[0] / "cells.csv")}
    assert set(rows) == {(a, c) for a in CLASS_ASSIGNMENTS for c in CELLS}
    for (assignment, cell), row in rows.items():
        archetypes = [per[assignment] for per in PLAN.values() if assignment in per]
        failing = sum(cell in FAILS.get(archetype, {}) for archetype in archetypes)
        assert int(row["submissions"]) == len(archetypes)
        assert (int(row["passed"]), int(row["failed"])) == (len(archetypes) - failing, failing), (assignment, cell)
        assert float(row["pass_rate"]) == pytest.approx((len(archetypes) - failing) / len(archetypes), abs=1e-4)
    assert (rows[("lab", "test_super_net")]["passed"], rows[("lab", "test_super_net")]["failed"]) == ("14", "17")


@graded
def test_diagnoses_grouped_by_template_equal_the_known_pattern(built):
    """Every failed check, its number of failures, and every diagnosis template with its count."""
    found = defaultdict(Counter)
    for row in read_csv(built[0] / "checks.csv"):
        if int(row["failures"]):
            key = (row["assignment"], row["cell"], row["check"])
            found[key]["(failures)"] = int(row["failures"])
            found[key][row["template"]] = int(row["diagnosis_count"])
    assert found == expected_failures()


@graded
def test_the_most_common_misconception_has_its_share(built):
    """The plain list of layers (2 at `self.layers` or 3 at `self.blocks`: one template) in lab's SuperNet."""
    rows = [r for r in read_csv(built[0] / "checks.csv")
            if (r["assignment"], r["cell"], r["template"]) == ("lab", "test_super_net", PLAIN)]
    assert len(rows) == 1
    plain = sum(a in ("no_bias_plain", "plain_blocks") for a in (per["lab"] for per in PLAN.values()))
    assert (int(rows[0]["diagnosis_count"]), int(rows[0]["failures"])) == (plain, 17) == (11, 17)
    assert float(rows[0]["share_of_failures"]) == pytest.approx(11 / 17, abs=1e-4)
    assert rows[0]["example"].startswith("2 nn.Linear layers sit in a plain list at `self.layers`")


@graded
def test_scores_and_late_penalties_are_nbgraders(built):
    for row in read_csv(built[0] / "scores.csv"):
        archetype = PLAN[row["student"]][row["assignment"]]
        penalty = PENALTY.get(archetype, 0)
        assert (float(row["score"]), float(row["late_penalty"]), float(row["final_score"])) == \
               (RAW_SCORE[archetype], penalty, RAW_SCORE[archetype] - penalty), row
        assert float(row["max_score"]) == 5.0
    assert len(read_csv(built[0] / "scores.csv")) == sum(len(per) for per in PLAN.values())


@graded
def test_flagged_submissions_with_their_reasons(built):
    rows = read_csv(built[0] / "flagged.csv")
    expected = {(a, s) for s, per in PLAN.items() for a, arch in per.items() if arch == "flagged"}
    assert {(r["assignment"], r["student"]) for r in rows} == expected and expected
    for row in rows:
        assert "scored 0, though its outputs in the kernel would have scored" in row["reason"]
    assert len(rows) == 4 * len(expected)  # one reason per test cell the kernel claimed


@graded
def test_grading_time_per_notebook_is_recorded(built):
    rows = read_csv(built[0] / "notebooks.csv")
    assert len(rows) == 60
    for row in rows:
        assert float(row["kernel_seconds"]) > 0 and float(row["rerun_seconds"]) > 0
        assert float(row["seconds"]) == pytest.approx(float(row["kernel_seconds"]) + float(row["rerun_seconds"]))


@graded
def test_students_who_fail_the_same_check_in_both_assignments(built):
    expected = set()
    for student, per in PLAN.items():
        checks = [{check for check, _ in FAILS.get(per.get(a), {}).values()} for a in CLASS_ASSIGNMENTS]
        expected |= {(student, check) for check in checks[0] & checks[1]}
    rows = read_csv(built[0] / "repeats.csv")
    assert {(r["student"], r["check"]) for r in rows} == expected and expected
    assert all(r["assignments"] == "lab;lab2" for r in rows)


@graded
def test_similar_answers_group_the_same_code_under_other_names(built, course):
    """In lab, the two archetypes with code of their own form one group each, the renamed copy included; answers
    most of the class wrote (the reference, 17 of 31 with no_super's) are left out as common, the blank stubs as
    too short."""
    pairs = [r for r in read_csv(built[0] / "similar.csv") if r["assignment"] == "lab"]
    groups = similarity.groups([similarity.Pair(r["student_a"], r["student_b"], float(r["similarity"]), 0)
                                for r in pairs])
    by_archetype = {a: sorted(s for s, per in PLAN.items() if per["lab"] == a)
                    for a in ("no_bias_plain", "plain_blocks")}
    assert sorted(groups) == sorted(by_archetype.values())
    (renamed,) = RENAMED
    assert renamed in by_archetype["plain_blocks"]
    source = (course / "autograded" / renamed / "lab" / "lab.ipynb").read_text()
    assert "for layer in self.blocks" in source  # the copy really is renamed
    assert all(float(r["similarity"]) == 1.0 for r in pairs)


@graded
def test_the_page_is_self_contained(built):
    page = (built[0] / "report.html").read_text()
    assert "<script" not in page.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page), "the page loads something from a network"
    images = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    for text in ("Pass rate of each test cell", "Flagged submissions", "Similar answers, to review",
                 "never a penalty", "2 nn.Linear layers sit in a plain list at `self.layers`"):
        assert text in page, text


@graded
def test_what_students_wrote_is_escaped(course, tmp_path, monkeypatch, capsys):
    """A diagnosis quotes the student's names; one that holds HTML must reach the page as text."""
    copy = shutil.copytree(course, tmp_path / "course")
    path = copy / "autograded" / "s021" / "lab" / "lab.ipynb"
    notebook = json.loads(path.read_text())
    evil = '<img src=x onerror="alert(1)">'
    for cell in notebook["cells"]:
        verdict = cell.get("metadata", {}).get("grader")
        if verdict and verdict["status"] == "failed":
            verdict["lines"].insert(1, f"  - the layer {evil} is not registered")
    path.write_text(json.dumps(notebook))
    monkeypatch.chdir(copy)
    assert report.main(["lab", "--out", str(tmp_path / "out"), "--quiet", "--top", "10"]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert evil not in page and "onerror=&quot;alert(1)&quot;" in page


# ---------------------------------------------------------------- bad input

def _report(monkeypatch, capsys, folder: Path, *args) -> tuple[int, str]:
    monkeypatch.chdir(folder)
    code = report.main([*args, "--out", str(folder / "reports"), "--quiet"])
    return code, capsys.readouterr().err


def test_no_gradebook(tmp_path, monkeypatch, capsys):
    code, message = _report(monkeypatch, capsys, tmp_path)
    assert code == 2 and "grader report: no gradebook at" in message and "--db=" in message
    assert not (tmp_path / "gradebook.db").exists()  # the report did not create one


def test_empty_gradebook(tmp_path, monkeypatch, capsys):
    from nbgrader.api import Gradebook

    Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}").close()
    code, message = _report(monkeypatch, capsys, tmp_path)
    assert code == 2 and "is empty: no assignments and no students" in message


@graded
def test_an_assignment_not_graded_yet(course, tmp_path, monkeypatch, capsys):
    from nbgrader.api import Gradebook

    copy = shutil.copytree(course, tmp_path / "course")
    with Gradebook(f"sqlite:///{copy / 'gradebook.db'}") as gradebook:
        gradebook.add_assignment("lab3")
    (copy / "submitted" / "s001" / "lab3").mkdir()
    code, message = _report(monkeypatch, capsys, copy, "lab3")
    assert code == 2 and "lab3 is not graded yet" in message and "1 submitted under submitted/" in message
    assert "python -m grader autograde lab3" in message
    code, message = _report(monkeypatch, capsys, copy, "lab", "nope")
    assert code == 2 and "no assignment 'nope' in the gradebook (it has: lab, lab2, lab3)" in message


@graded
def test_a_notebook_missing_from_autograded(course, tmp_path, monkeypatch, capsys):
    copy = shutil.copytree(course, tmp_path / "course")
    shutil.rmtree(copy / "autograded" / "s005" / "lab2")
    code, message = _report(monkeypatch, capsys, copy)
    assert code == 2 and "1 graded notebook(s) missing from autograded/" in message
    assert str(copy / "autograded" / "s005" / "lab2" / "lab.ipynb") in message and "--force" in message


@graded
def test_a_notebook_graded_without_the_rerun(course, tmp_path, monkeypatch, capsys):
    copy = shutil.copytree(course, tmp_path / "course")
    path = copy / "autograded" / "s002" / "lab" / "lab.ipynb"
    notebook = json.loads(path.read_text())
    del notebook["metadata"]["grader"]
    path.write_text(json.dumps(notebook))
    code, message = _report(monkeypatch, capsys, copy, "lab")
    assert code == 2 and "holds no verdicts of the grader's re-run" in message and "--student s002 --force" in message


# ---------------------------------------------------------------- templates and similarity, on their own

@pytest.mark.parametrize("line, expected", [
    ("3 nn.Linear layers sit in a plain list at `self.layers` and are not registered: use nn.ModuleList",
     "N nn.Linear layers sit in a plain list at `…` and are not registered: use nn.ModuleList"),
    ("mlp_params((20, 64, 10)) returned 1920, but nn.Sequential built with ((20, 64, 10),) has 1,994 trainable "
     "parameters", "mlp_params(N…) returned N, but nn.Sequential built with (N…) has N trainable parameters"),
    ("output shape torch.Size([8, 20]) != 8x10 (rtol 1e-3, float64, fc1)",
     "output shape torch.Size(N…) != N (rtol N, float64, fc1)"),
    ("name 'SuperNet' is not defined", "name '…' is not defined"),
])
def test_templates_set_the_particulars_aside(line, expected):
    assert report_data.template(line) == expected


def test_singular_and_plural_are_one_template():
    one = "1 nn.Linear layer sits in a plain list at `self.head` and is not registered: use nn.ModuleList"
    two = "2 nn.Linear layers sit in a plain list at `self.layers` and are not registered: use nn.ModuleList"
    assert report_data.template_key(one) == report_data.template_key(two)
    assert report_data.template_key(one) != report_data.template_key(two.replace("plain list", "plain dict"))


ORIGINAL = '''class Net(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        return x * self.scale
'''
RENAMED_COPY = '''class Net(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        # my own network
        self.stack = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes, sizes[1:]))
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x):
        for k, lin in enumerate(self.stack):
            x = lin(x)
            if k < len(self.stack) - 1:
                x = torch.relu(x)   # hidden layers only
        return x * self.gain
'''
OTHER_STYLE = '''class Net(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        pairs = list(zip(sizes[:-1], sizes[1:]))
        self.body = nn.Sequential(*[m for a, b in pairs[:-1] for m in (nn.Linear(a, b), nn.ReLU())])
        self.head = nn.Linear(*pairs[-1])
        self.register_parameter("scale", nn.Parameter(torch.ones(1)))

    def forward(self, x):
        return self.head(self.body(x)) * self.scale
'''
STUB = '''class Net(nn.Module):
    def __init__(self, sizes):
        # YOUR CODE HERE
        raise NotImplementedError()
'''


def test_a_renamed_copy_matches_and_another_style_does_not():
    given = similarity.given_names([STUB, "import torch\nfrom torch import nn"])
    answers = {"alice": {"net": ORIGINAL}, "bob": {"net": RENAMED_COPY}, "carol": {"net": OTHER_STYLE},
               "dave": {"net": STUB}}
    pairs = similarity.similar_pairs(answers, {"net": STUB}, given, threshold=0.8)
    assert [(p.first, p.second) for p in pairs] == [("alice", "bob")] and pairs[0].score == 1.0
    everything = similarity.similar_pairs(answers, {"net": STUB}, given, threshold=0.01)
    assert {(p.first, p.second) for p in everything} <= {("alice", "bob"), ("alice", "carol"), ("bob", "carol")}
    assert max(p.score for p in everything if "carol" in (p.first, p.second)) < 0.5
    assert all("dave" not in (p.first, p.second) for p in everything)  # the stub alone: nothing to compare


def test_what_most_of_a_large_class_wrote_is_left_out():
    """From 20 students on, code more than half of them share does not make them similar."""
    answers = {f"s{i:02d}": {"net": ORIGINAL} for i in range(15)}
    answers |= {f"t{i:02d}": {"net": OTHER_STYLE.replace("Sequential", f"Sequential  # {i}")} for i in range(5)}
    pairs = similarity.similar_pairs(answers, {"net": STUB}, frozenset({"nn", "torch"}))
    assert {p.first[0] for p in pairs} == {"t"}  # the 15 identical answers are what the class wrote
    assert len(pairs) == 10
