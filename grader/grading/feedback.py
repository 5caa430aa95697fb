"""Feedback that shows each check's verdict and never its code (nbgrader issue #917).

nbgrader's generate_feedback renders the autograded notebook, test cells included, so the
hidden tests' source (and the lines of it that a traceback quotes) reach the student.
`HideTestCode`, first in GenerateFeedback.preprocessors, rewrites every test cell before it is
rendered:

* the source keeps only its opening docstring ("Check that ..."), followed by a comment saying
  that the test's code is not shown;
* outputs are kept (the ✓ verdict lines of the checks that passed), except that an error loses
  its traceback, which quotes test code, and is shown as what failed, why, and a hint: the
  check's own diagnosis for CheckFailed (and for the re-run's verdicts), a hint written here for
  any other error (a missing name, the stub's NotImplementedError, a timeout...).

This module imports only the standard library and nbgrader: nbgrader_config.py loads it by path.
"""

import ast
import re

from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import List

HIDDEN_NOTE = "# The test's code is not shown in feedback. Its verdict is below."
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# ename -> (what happened, hint) for errors that are not a check's own verdict
HINTS = {
    "NameError": ("a name that the test uses is not defined",
                  "run your answer cell above and read its error; keep the names that the exercise gives "
                  "(classes, functions, arguments)"),
    "NotImplementedError": ("your answer is still the stub",
                            "replace the line `raise NotImplementedError(...)` with your code"),
    "CellTimeoutError": ("the test ran out of time",
                         "look for an endless loop, or for work that grows with the input, in your answer"),
    "DeadKernelError": ("the notebook's Python process died during this test",
                        "look for code that ends the process or uses too much memory"),
    "SyntaxError": ("Python could not read the code", "run your answer cell and fix the line its error points to"),
    "IndentationError": ("Python could not read the code", "run your answer cell and fix the indentation"),
    "ImportError": ("an import failed", "import only what the exercise uses (torch and the standard library)"),
    "ModuleNotFoundError": ("an import failed", "import only what the exercise uses (torch and the standard library)"),
    "TypeError": ("the test called your code and got a TypeError",
                  "check the signature the exercise gives (argument names and order) and what you return"),
    "AttributeError": ("the test used an attribute your code does not have",
                       "keep the attribute names the exercise gives (for example `self.layers`)"),
    "RuntimeError": ("torch raised an error while the test ran your code",
                     "read the message: a shape mismatch or a device mix-up is the usual cause"),
}
# (fragment of the message, what happened, hint): torch's own wording, for errors raised outside a check
MESSAGE_HINTS = (
    ("before Module.__init__() call", "your model could not be built",
     "your __init__ must call super().__init__() before it assigns layers"),
    ("replace this line with your code", "your answer is still the stub",
     "replace the line `raise NotImplementedError(...)` with your code"),
    ("shapes cannot be multiplied", "your model's layer sizes do not fit together",
     "a layer's input size does not match what reaches it: check in_features against the previous layer's out_features"),
    ("Expected all tensors to be on the same device", "your model mixes devices",
     "create tensors on the input's device (x.device), or register them as buffers so that .to() moves them"),
    ("does not require grad", "the output is cut from the graph",
     "something in forward cuts the graph: .detach(), .item(), .data or torch.no_grad()"),
)
GENERIC = ("the test raised an error before a check could give its verdict",
           "read the message, then run your answer cell and this test in your notebook to see it happen")
VERDICT_ERRORS = frozenset({"CheckFailed", "GradingCheckFailed"})


def is_test_cell(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


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


def verdict_lines(ename: str, evalue: str) -> list[str]:
    """What failed, why and a hint, for an error output of a test cell."""
    evalue = ANSI.sub("", evalue or "").strip()
    if ename in VERDICT_ERRORS or evalue.startswith("✗"):
        return evalue.splitlines()  # the check's diagnosis already says what, why and where to look
    what, hint = next(((w, h) for fragment, w, h in MESSAGE_HINTS if fragment in evalue), HINTS.get(ename, GENERIC))
    first = evalue.splitlines()[0] if evalue else ""
    return [f"✗ {what}", f"  {ename}: {first}" if first else f"  {ename}", f"Hint: {hint}"]


class HideTestCode(NbGraderPreprocessor):
    """Test cells in feedback: the docstring and the verdicts, not the code."""

    # NbGraderPreprocessor re-declares nbconvert's display_data_priority without config=True, so the HTML
    # exporter's NbConvertBase.display_data_priority setting is reported as "not recognized"; nbgrader's own
    # GetGrades makes it configurable again, and so does this.
    display_data_priority = List(NbGraderPreprocessor.display_data_priority.default_value).tag(config=True)

    def preprocess_cell(self, cell, resources, index):
        if not is_test_cell(cell):
            return cell, resources
        header = docstring_line(cell.source)
        cell.source = f"{header}\n{HIDDEN_NOTE}" if header else HIDDEN_NOTE
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                lines = verdict_lines(output.get("ename", ""), output.get("evalue", ""))
                output.traceback = lines
                output.evalue = "\n".join(lines)
        return cell, resources
