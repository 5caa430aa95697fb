"""What people see of a graded notebook: verdicts instead of test code, and student outputs made harmless.

* `HideTestCode`, first in GenerateFeedback.preprocessors: nbgrader's generate_feedback renders the
  autograded notebook, test cells included, so the hidden tests' source (and whatever the kernel
  printed into a test cell: a traceback quoting it, or a post_run_cell hook printing the cell) would
  reach the student (nbgrader issue #917). A test cell keeps only its opening docstring ("Check that
  ..."), a note that its code is not shown, and one output: the verdict lines of the grader's re-run
  (``cell.metadata["grader"]["lines"]``, see `scoring`): the ✓ lines of the checks that passed,
  then what failed, why, and a hint.
* `SanitizeOutputs`, last in the autograde pipeline (so the autograded notebook that formgrader
  renders is clean, after the gradebook is written) and in GenerateFeedback: HTML that code in the
  notebook displayed is cleaned with nh3 (no script, no event handler, no javascript: link),
  Markdown outputs and the student's own Markdown cells are rendered and cleaned the same way, and
  JavaScript and widget outputs are dropped. Without it, a cell that displays ``<script>`` runs in
  the instructor's formgrader, where it can ``PUT`` manual scores.

This module imports only the standard library, nbgrader and nh3: nbgrader_config.py loads it by path.
"""

import ast
import importlib.util
import sys
from pathlib import Path

import nh3
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import List

try:
    from . import scoring
except ImportError:  # loaded by path, as nbgrader_config.py does: scoring by path too (once, shared with rerun)
    scoring = sys.modules.get("grader_scoring")
    if scoring is None:
        _spec = importlib.util.spec_from_file_location("grader_scoring", Path(__file__).with_name("scoring.py"))
        scoring = sys.modules["grader_scoring"] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(scoring)

HIDDEN_NOTE = "# The test's code is not shown in feedback. Its verdict is below."
NO_VERDICT = ["✗ the grader has no verdict from its re-run for this test, so it scores 0"]
# MIME types rendered as they are (text, images) or after cleaning (HTML, Markdown); anything else that code in a
# notebook can display (JavaScript, widgets, ...) is dropped.
SAFE_MIME_TYPES = frozenset({"text/plain", "text/latex", "image/png", "image/jpeg", "image/gif", "image/svg+xml"})
CLEANED_MIME_TYPES = frozenset({"text/html", "text/markdown"})
DISPLAY_OUTPUTS = frozenset({"display_data", "execute_result", "update_display_data"})


def docstring_line(source: str) -> str:
    """The test's opening docstring, as a source line, or '' when it has none."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(getattr(tree.body[0], "value", None), ast.Constant) \
            and isinstance(tree.body[0].value.value, str):
        return '"""' + " ".join(tree.body[0].value.value.split()) + '"""'
    return ""


class FeedbackPreprocessor(NbGraderPreprocessor):
    """nbgrader's preprocessor, taking the display_data_priority that generate_feedback's HTML exporter sets.

    NbGraderPreprocessor re-declares nbconvert's display_data_priority without config=True, so the exporter's
    NbConvertBase.display_data_priority is reported as "not recognized" by every subclass; nbgrader's own GetGrades
    makes it configurable again, and so does this.
    """

    display_data_priority = List(NbGraderPreprocessor.display_data_priority.default_value).tag(config=True)


class HideTestCode(FeedbackPreprocessor):
    """Test cells in feedback: the docstring and the re-run's verdict lines, not the code or the kernel's outputs."""

    def preprocess_cell(self, cell, resources, index):
        if not scoring.is_test_cell(cell):
            return cell, resources
        from nbformat.v4 import new_output

        header = docstring_line(cell.source)
        cell.source = f"{header}\n{HIDDEN_NOTE}" if header else HIDDEN_NOTE
        found = cell.metadata.get("grader")
        lines = found.get("lines") if isinstance(found, dict) else None
        lines = [str(line) for line in lines] if isinstance(lines, list) and lines else NO_VERDICT
        cell.outputs = [new_output("stream", name="stdout", text="\n".join(lines) + "\n")]
        return cell, resources


def clean_html(html: str) -> str:
    return nh3.clean(html)


def clean_markdown(markdown: str) -> str:
    """Markdown rendered to HTML and cleaned: what Markdown allows (a javascript: link, raw HTML) is gone."""
    from nbconvert.filters.markdown import markdown2html

    return clean_html(markdown2html(markdown))


def sanitize_output(output) -> None:
    """Make one code-cell output safe to render in a browser, in place."""
    if output.get("output_type") not in DISPLAY_OUTPUTS or not isinstance(output.get("data"), dict):
        return
    data = output["data"]
    kept = {}
    for mime, value in data.items():
        text = "".join(value) if isinstance(value, list) else value
        if not isinstance(text, str):
            continue
        if mime in SAFE_MIME_TYPES:
            kept[mime] = text
        elif mime == "text/html":
            kept["text/html"] = clean_html(text)
        elif mime == "text/markdown":
            kept.setdefault("text/html", clean_markdown(text))
    dropped = sorted(set(data) - set(kept) - CLEANED_MIME_TYPES)
    if dropped and not kept:
        kept["text/plain"] = f"[{', '.join(dropped)} output removed by the grader]"
    output["data"] = kept
    if isinstance(output.get("metadata"), dict):
        output["metadata"] = {mime: meta for mime, meta in output["metadata"].items() if mime in kept}


class SanitizeOutputs(FeedbackPreprocessor):
    """Clean every display output, and every Markdown cell but the instructor's own; drop JavaScript and widgets.

    A Markdown cell is the instructor's when the gradebook holds it as a locked cell with that very
    source (nbgrader's OverwriteCells restored it); a cell a student added, with whatever metadata,
    is not.
    """

    def preprocess(self, nb, resources):
        nb.metadata.pop("widgets", None)  # widget state: its views render HTML with the widget library's own code
        self._locked = locked_sources(resources)
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                sanitize_output(output)
        elif cell.cell_type == "markdown":
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if grade_id not in self._locked or self._locked[grade_id] != cell.source:
                cell.source = clean_markdown(cell.source)
                cell.pop("attachments", None)
        return cell, resources


def locked_sources(resources) -> dict:
    """grade_id -> source of the notebook's locked cells, as the gradebook holds them ({} if it cannot say)."""
    info = resources.get("nbgrader", {}) if resources else {}
    if not all(info.get(k) for k in ("db_url", "notebook", "assignment")):
        return {}
    from nbgrader.api import Gradebook, MissingEntry

    try:
        with Gradebook(info["db_url"]) as gradebook:
            record = gradebook.find_notebook(info["notebook"], info["assignment"])
            return {c.name: c.source for c in record.source_cells if c.locked}
    except MissingEntry:
        return {}
