"""Scores from the re-run alone, verdict lines, sanitised outputs, and locked code's own bindings, piece by piece.

The attack corpus (tests/test_attacks.py) proves these end to end through nbgrader; here each piece is
checked on its own, quickly: `SaveRerunGrades` against a real gradebook, `scoring.record` on kernel
outputs that claim a pass, `SanitizeOutputs` and `HideTestCode` on a notebook, `python_source` on
magics, and the re-run's two namespaces (`rerun_child`) on small programs.
"""

import sqlite3

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from conftest import tool_env
from grader.grading import feedback, scoring
from grader.grading.rerun import Outcome, Rerunner, python_source


def graded_cell(grade_id, points=1, **grader):
    cell = new_code_cell('"""Check that it works."""\ncheck_it()',
                         metadata={"nbgrader": {"grade": True, "grade_id": grade_id, "locked": True, "points": points,
                                                "schema_version": 3, "solution": False, "task": False}})
    if grader:
        cell.metadata["grader"] = grader
    return cell


# ---------------------------------------------------------------- the score: the re-run's verdict, nothing else

@pytest.fixture
def gradebook(tmp_path, monkeypatch):
    """A gradebook with one notebook of four 2-point test cells and one submission."""
    from nbgrader.api import Gradebook

    monkeypatch.setenv("PATH", tool_env()["PATH"])  # nbgrader runs alembic by name

    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with Gradebook(url) as book:
        book.add_assignment("a")
        book.add_notebook("n", "a")
        for name in ("passed", "failed", "grader_error", "no_verdict"):
            book.add_grade_cell(name, "n", "a", max_score=2, cell_type="code")
        book.add_student("s")
        book.add_submission("a", "s")
    return url


nbgrader_warnings = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # from nbgrader's add_submission


def save_grades(url, nb):
    scoring.SaveRerunGrades().preprocess(nb, {"nbgrader": {"notebook": "n", "assignment": "a", "student": "s",
                                                           "db_url": url}})
    from nbgrader.api import Gradebook

    with Gradebook(url) as book:
        return {g.name: (g.auto_score, g.manual_score, g.score, g.needs_manual_grade)
                for g in book.find_submission_notebook("n", "a", "s").grades}


@nbgrader_warnings
def test_a_test_scores_its_rerun_verdict_not_its_outputs(gradebook):
    cells = [graded_cell("passed", 2, status="passed"), graded_cell("failed", 2, status="failed"),
             graded_cell("grader_error", 2, status="grader-error"), graded_cell("no_verdict", 2)]
    for cell in cells:  # every kernel output claims full marks to stock nbgrader (a result that is not a number)
        cell.outputs = [new_output("execute_result", data={"text/plain": "'checked'"}, execution_count=1)]
    assert save_grades(gradebook, new_notebook(cells=cells)) == {
        "passed": (2.0, None, 2.0, False),
        "failed": (0.0, None, 0.0, False),
        "grader_error": (None, None, 0.0, True),  # no auto score: nbgrader asks for a manual grade
        "no_verdict": (0.0, None, 0.0, False),
    }


@nbgrader_warnings
def test_a_manual_grade_still_wins(gradebook):
    con = sqlite3.connect(gradebook[len("sqlite:///"):])
    con.execute("UPDATE grade SET manual_score = 1.5")
    con.commit()
    found = save_grades(gradebook, new_notebook(cells=[graded_cell("passed", 2, status="passed")]))
    assert found["passed"] == (2.0, 1.5, 1.5, True)


def outcome(index, status, **fields):
    return Outcome(index, "test", f"t{index}", status, **fields)


def test_record_writes_verdicts_and_flags_outputs_that_claim_more():
    claims = graded_cell("claims")
    claims.outputs = [new_output("execute_result", data={"text/plain": "'checked'"}, execution_count=1),
                      new_output("error", ename="CheckFailed", evalue="✗ counting: wrong", traceback=[])]
    passes = graded_cell("passes")
    nb = new_notebook(cells=[claims, passes, graded_cell("unreached")])
    cells = [(0, ("test", "claims", "")), (1, ("test", "passes", "")), (2, ("test", "unreached", ""))]
    outcomes = [outcome(0, "error", error="CheckFailed", message="✗ counting: wrong\nHint: count biases"),
                outcome(1, "ok", lines=["✓ counting: right"], seconds=0.25), outcome(2, "missing", message="time limit")]
    reasons = scoring.record(nb, cells, outcomes)
    verdicts = [cell.metadata["grader"] for cell in nb.cells]
    assert [v["status"] for v in verdicts] == ["failed", "passed", "missing"]
    assert verdicts[0] == {"status": "failed", "points": 0.0, "max_points": 1.0, "error": "CheckFailed", "seconds": 0.0,
                           "lines": ["✗ counting: wrong", "Hint: count biases"]}
    assert verdicts[1]["lines"] == ["✓ counting: right"] and verdicts[1]["points"] == 1.0
    assert verdicts[2]["lines"][0].startswith("✗ re-run:") and "time limit" in verdicts[2]["lines"][0]
    # the kernel's outputs would have scored 1 / 1 with stock nbgrader (a result first; no error at all): reasons to flag
    assert [r.split(" scored")[0] for r in reasons] == ["cell claims", "cell unreached"]
    assert all("would have scored 1 / 1" in r for r in reasons)


def test_a_verdict_planted_in_the_submission_is_not_read():
    """RerunTests drops every `grader` metadata before it records; a cell it has no outcome for is missing: 0."""
    nb = new_notebook(cells=[graded_cell("planted", status="passed")])
    for cell in nb.cells:
        cell.metadata.pop("grader")
    scoring.record(nb, [], [])
    assert nb.cells[0].metadata["grader"]["status"] == "missing"


# ---------------------------------------------------------------- what people see

def test_feedback_shows_the_rerun_lines_and_nothing_the_kernel_printed():
    cell = graded_cell("t", status="failed", lines=["✓ first check", "✗ second check: wrong", "Hint: look"])
    cell.source = '"""Check that it works."""\ncheck_it()\n### BEGIN HIDDEN TESTS\ncheck_it(secret=42)\n### END HIDDEN TESTS'
    cell.outputs = [new_output("stream", name="stdout", text="check_it(secret=42)\n")]  # a post_run_cell hook's print
    shown, _ = feedback.HideTestCode().preprocess_cell(cell, {}, 0)
    assert shown.source == f'"""Check that it works."""\n{feedback.HIDDEN_NOTE}'
    assert [o.text for o in shown.outputs] == ["✓ first check\n✗ second check: wrong\nHint: look\n"]
    shown, _ = feedback.HideTestCode().preprocess_cell(graded_cell("no_verdict"), {}, 0)
    assert shown.outputs[0].text.startswith("✗ the grader has no verdict")


def test_outputs_and_student_markdown_are_made_harmless():
    script = "<script>fetch('/formgrader/api/grade/1', {method: 'PUT'})</script>"
    code = new_code_cell("display(...)", outputs=[
        new_output("display_data", data={"text/html": f"<b>bold</b>{script}<img src=x onerror=alert(1)>",
                                         "text/plain": "<HTML>"}),
        new_output("display_data", data={"application/javascript": "alert(1)"}),
        new_output("display_data", data={"text/markdown": "[notes](javascript:alert(1))"}),
        new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"},
                   metadata={"image/png": {"width": 100}}),
    ])
    note = new_markdown_cell("My notes <img src=x onerror=alert(1)> and [a link](javascript:alert(1))")
    nb = new_notebook(cells=[code, note], metadata={"widgets": {"application/vnd.jupyter.widget-state+json": {}}})
    nb, _ = feedback.SanitizeOutputs().preprocess(nb, {})
    html, javascript, markdown, image = (o.data for o in nb.cells[0].outputs)
    assert html["text/html"] == "<b>bold</b><img src=\"x\">" and html["text/plain"] == "<HTML>"
    assert javascript == {"text/plain": "[application/javascript output removed by the grader]"}
    assert "javascript:" not in markdown["text/html"] and "text/markdown" not in markdown
    assert image == {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}
    assert nb.cells[0].outputs[3].metadata == {"image/png": {"width": 100}}
    assert "onerror" not in nb.cells[1].source and "javascript:" not in nb.cells[1].source
    assert "My notes" in nb.cells[1].source and "widgets" not in nb.metadata


# ---------------------------------------------------------------- the re-run's program and namespaces

def test_time_and_capture_run_their_body():
    assert python_source("%%time\ndef f():\n    return 1\n").strip() == "def f():\n    return 1"
    captured = python_source("%%capture --no-stderr out\nx = 1\n")
    assert "x = 1" in captured and captured.rstrip().endswith("out = get_ipython().captured_io()")
    assert python_source("    %time y = f()\n").strip() == "y = f()"
    assert "run_cell_magic" in python_source("%%timeit\nz = 2\n")  # timeit keeps no names: not run here


@pytest.fixture(scope="module")
def rerun():
    runner = Rerunner(cell_timeout=120)

    def run(*cells, tmp_path):
        return {o.grade_id: o for o in runner.run(list(cells), tmp_path, course_root=str(tmp_path / "course"))}

    return run


LOCKED_SETUP = ("locked", "setup", "import torch\nfrom torch.optim.swa_utils import AveragedModel\n\n"
                "def reference_name():\n    return AveragedModel.__name__\n")


@pytest.mark.notebooks
def test_locked_helpers_keep_their_bindings(rerun, tmp_path):
    """An answer that rebinds a name a locked helper uses changes its own namespace only; one that reaches the
    helper's globals is undone before the next locked cell, with a note."""
    found = rerun(LOCKED_SETUP,
                  ("answer", "rebinds", "AveragedModel = type('Fake', (), {})\ndef answer_fn():\n    return 1\n"
                                        "def len(x):\n    return 0\n"),
                  ("test", "t1", "assert reference_name() == 'AveragedModel' and answer_fn() == 1 and len([1]) == 1\n"
                                 "class Uses:\n    value = answer_fn()  # a class body reads its globals directly"),
                  ("answer", "reaches", "reference_name.__globals__['AveragedModel'] = type('Fake', (), {})"),
                  ("test", "t2", "assert reference_name() == 'AveragedModel'"),
                  tmp_path=tmp_path)
    assert found["t1"].status == "ok", found["t1"].message
    assert found["t2"].status == "ok", found["t2"].message
    assert any("`AveragedModel` was bound again" in note for note in found["t2"].notes)


@pytest.mark.notebooks
def test_changing_a_locked_helper_or_patching_during_a_check_is_tampering(rerun, tmp_path):
    changed = rerun(LOCKED_SETUP, ("answer", "a", "reference_name.__defaults__ = (1,)"), ("test", "t", "pass"),
                    tmp_path=tmp_path)
    assert changed["t"].status == "tampered" and "`reference_name` was changed" in changed["t"].message
    # a function of the student's that patches torch while a check runs it, and leaves the patch for the check
    mid_call = rerun(LOCKED_SETUP, ("locked", "keep", "ORIGINAL = torch.nn.Module.parameters"),
                     ("answer", "a", "def count(model):\n    torch.nn.Module.parameters = lambda self, recurse=True: "
                                     "iter(())\n    return 0\n"),
                     # the patch is gone by the end of the cell: only the check on return sees it
                     ("test", "t", "count(torch.nn.Linear(2, 2))\ntorch.nn.Module.parameters = ORIGINAL"),
                     tmp_path=tmp_path)
    assert mid_call["t"].status == "tampered" and "`count` changed" in mid_call["t"].message


@pytest.mark.notebooks
def test_a_grader_error_is_the_graders_only_when_the_grader_raised_it(rerun, tmp_path):
    report = pytest.importorskip("grader.checks.report")
    if not hasattr(report, "GraderError"):
        pytest.skip("grader.checks.report has no GraderError yet")
    found = rerun(("locked", "setup", "from grader.checks.report import GraderError"),
                  ("answer", "a", "def student():\n    raise GraderError('check_x', ValueError('mine'))\n"),
                  ("test", "graders", "raise GraderError('check_x', ValueError('boom'))"),
                  ("test", "students", "student()"), tmp_path=tmp_path)
    assert found["graders"].status == "grader-error" and found["graders"].error == "GraderError"
    assert found["students"].status == "error"


@pytest.mark.notebooks
def test_verdict_lines_are_the_checks_output_in_their_format(rerun, tmp_path):
    found = rerun(("locked", "setup", "import sys"),
                  ("test", "t", "print('✓ first check: fine [cpu]')\nprint('debugging noise')\n"
                                "print('✗ second: wrong\\n  - detail\\nHint: look')"), tmp_path=tmp_path)
    assert found["t"].lines == ["✓ first check: fine [cpu]", "✗ second: wrong", "  - detail", "Hint: look"]
    assert found["t"].seconds >= 0
