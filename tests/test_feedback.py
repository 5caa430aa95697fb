"""Feedback a student can act on: `nbgrader generate_feedback` on a partly wrong submission, read back.

The lab (tests/grading_lab.py) is graded with the repo's configuration for a student whose
linear_params forgets the bias and whose SuperNet forgets super().__init__(). In the rendered HTML,
every failed test shows what it checks (its docstring), what failed and why (the check's diagnosis,
or the error in words), and a hint; no test shows its code, and no line of a hidden test appears.
Stock nbgrader's feedback for the same submission is the control: it shows the hidden tests
(nbgrader issue #917).
"""

import re

import nbformat
import pytest

import grading_lab as lab
from grader.grading.feedback import HIDDEN_NOTE
from grading_lab import hidden_lines, text_of

pytestmark = pytest.mark.notebooks

FAILED = {  # test cell -> fragments its feedback must show (what failed, why, the hint)
    "test_linear_params": ["✗ counting trainable parameters", "linear_params(20, 64) returned 1280",
                           "has 1,344 trainable parameters", "Hint: count each tensor's elements"],
    "test_mlp_params": ["✗ counting trainable parameters", "mlp_params((20, 64, 10)) returned 1920",
                        "has 1,994 trainable parameters"],
    "test_super_net": ["✗ trainable parameters", "cannot assign module before Module.__init__() call", "Hint:",
                       "super().__init__()"],
    "test_super_net_direct": ["✗ your model could not be built",
                              "AttributeError: cannot assign module before Module.__init__() call",
                              "Hint: your __init__ must call super().__init__() before it assigns layers"],
}


def docstrings() -> dict[str, str]:
    """test cell id -> the first line of its docstring, from the lab's source."""
    found = {}
    for cell in lab.lab_source().cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        if grade_id.startswith("test_"):
            found[grade_id] = re.match(r'"""(.*?)(?:"""|\n)', cell.source).group(1).strip()
    return found


@pytest.fixture(scope="module")
def courses(tmp_path_factory):
    """config -> the graded lab course, with feedback rendered (shared with tests/test_attacks.py)."""
    return lab.graded_lab(tmp_path_factory)["courses"]


@pytest.fixture(scope="module")
def pages(courses):
    """config -> the partly wrong student's feedback page (HTML)."""
    return {config: lab.feedback_html(courses[config], "partly_wrong") for config in ("stock", "ours")}


@pytest.fixture(scope="module")
def feedback(pages):
    return {config: text_of(page) for config, page in pages.items()}


def rendered_tests(page: str) -> dict[str, str]:
    """test cell id -> the text of that cell as rendered (nbgrader's template anchors grade cells by id)."""
    found = {}
    for chunk in page.split('<div class="cell border-box-sizing')[1:]:
        anchor = re.search(r'<a name="(test_[^"]+)"></a>', chunk)
        if anchor:
            found[anchor.group(1)] = text_of(chunk)
    return found


def test_every_failed_check_says_what_why_and_a_hint(pages):
    found = rendered_tests(pages["ours"])
    assert set(found) == set(docstrings())
    for grade_id, doc in docstrings().items():
        assert doc in found[grade_id], f"{grade_id} shows what it checks"
    for grade_id, fragments in FAILED.items():
        missing = [f for f in fragments if f not in found[grade_id]]
        assert not missing, f"{grade_id}: feedback lacks {missing}:\n{found[grade_id]}"


def test_tests_show_their_verdicts_not_their_code(pages):
    for grade_id, text in rendered_tests(pages["ours"]).items():
        assert HIDDEN_NOTE.lstrip("# ") in text, grade_id
        assert "check_" not in text.split(HIDDEN_NOTE.lstrip("# "))[0], f"{grade_id} shows test code:\n{text}"
        assert "Traceback" not in text and "---->" not in text, f"{grade_id} shows a traceback:\n{text}"


def test_no_hidden_test_line_reaches_the_feedback(feedback, courses):
    """The secrecy requirement for feedback (tests/test_secrecy.py covers exercises/ and the grader package)."""
    hidden = hidden_lines(lab.lab_source())
    assert hidden, "the lab has hidden tests"
    course = courses["ours"]
    for student in ("partly_wrong", "reference"):
        raw = lab.feedback_html(course, student)
        page = text_of(raw)
        leaked = [line for line in hidden if line in page or line in raw]
        assert not leaked, f"hidden test code in {student}'s feedback: {leaked}"
    # the control: stock nbgrader renders the hidden tests into the feedback (nbgrader issue #917)
    assert any(line in feedback["stock"] for line in hidden)


def test_reference_feedback_shows_only_passing_verdicts(courses):
    found = rendered_tests(lab.feedback_html(courses["ours"], "reference"))
    for grade_id, text in found.items():
        assert "✗" not in text and "✓" in text, f"{grade_id}:\n{text}"


def test_feedback_scores_match_the_gradebook(courses):
    scores = lab.scores(courses["ours"])
    assert scores["reference"] == (lab.MAX_SCORE, False)
    assert scores["partly_wrong"] == (0.0, False)
    graded = nbformat.read(courses["ours"] / "autograded" / "partly_wrong" / lab.ASSIGNMENT / f"{lab.NOTEBOOK}.ipynb",
                           as_version=4)
    assert graded.cells, "the autograded notebook exists"
