"""Scores from the re-run alone: what each test cell's outcome is worth, and the lines that say why.

nbgrader's `SaveAutoGrades` scores a test cell from the kernel's outputs (`utils.determine_grade`):
an error or stderr scores 0, but the first `execute_result` decides before any error is read, and
text that is not a number counts as full marks. Code in the notebook runs in that kernel and
controls those outputs (an input transformer, a `sys.displayhook` call, an expression whose repr is
shown), so the kernel's outputs are what the student sees, never what is scored:

* `RerunTests` (rerun.py) runs every test again out of the kernel and calls `record` with the
  outcomes. `record` writes each test cell's verdict to its metadata, ``cell.metadata["grader"]``:
  ``{"status", "points", "max_points", "lines", "error", "seconds"}`` (status: ``passed``,
  ``failed``, ``tampered``, ``missing`` or ``grader-error``; lines: the check verdicts the re-run
  printed and the failure's diagnosis, which feedback shows in place of the test), and the
  notebook's to ``nb.metadata["grader"]``: ``{"flagged", "reasons", "rerun_seconds", "kernel_seconds"}``
  (kernel_seconds: nbgrader's run of the notebook in its kernel, start-up included).
* `SaveRerunGrades`, in place of SaveAutoGrades, scores a test cell from that verdict alone:
  passed → its points, grader-error → no auto score (nbgrader marks the cell for a manual grade),
  anything else, or no verdict at all → 0. Everything else is nbgrader's own: the gradebook rows,
  comments, manual overrides (a manual score still wins), late penalties, export.

This module imports only the standard library and nbgrader: nbgrader_config.py loads it by path.
"""

import re

from nbgrader import utils
from nbgrader.preprocessors import SaveAutoGrades

ERROR_NAME = "GradingCheckFailed"  # the error output that tells the instructor a kernel pass did not count
STATUS = {"ok": "passed", "error": "failed", "tampered": "tampered", "missing": "missing",
          "grader-error": "grader-error"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MAX_LINES = 40  # lines kept per verdict in the notebook

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
    "PermissionError": ("the grader refused something your code did",
                        "write only the code the exercise asks for: no files outside your folder, no other "
                        "processes, no databases, no network"),
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
VERDICT_ERRORS = frozenset({"CheckFailed", "GradingCheckFailed", "GraderError"})


def is_test_cell(cell) -> bool:
    """An autograded test: a graded code cell that is not an answer."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.get("cell_type") == "code" and bool(meta.get("grade")) and not meta.get("solution")


def verdict_lines(ename: str, evalue: str) -> list[str]:
    """What failed, why and a hint, for an error a test raised."""
    evalue = ANSI.sub("", evalue or "").strip()
    if ename in VERDICT_ERRORS or evalue.startswith(("✗", "⚠")):
        return evalue.splitlines()  # the check's diagnosis already says what, why and where to look
    what, hint = next(((w, h) for fragment, w, h in MESSAGE_HINTS if fragment in evalue), HINTS.get(ename, GENERIC))
    first = evalue.splitlines()[0] if evalue else ""
    return [f"✗ {what}", f"  {ename}: {first}" if first else f"  {ename}", f"Hint: {hint}"]


def kernel_refusals(nb) -> list[str]:
    """The guard's refusals that the kernel's cells printed (a PermissionError with the guard's words)."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.output_type == "error" and "the grader does not let" in output.get("evalue", ""):
                found.append(output.evalue.splitlines()[0])
    return found


def kernel_points(cell):
    """What stock nbgrader would give the cell for the kernel's outputs (None if it cannot say)."""
    try:
        return utils.determine_grade(cell)[0]
    except Exception:
        return None


def verdict(outcome, max_points: float, explanation: list[str]) -> dict:
    """The metadata of one test cell: the re-run's outcome, its points and the lines a student reads."""
    status = STATUS.get(outcome.status, "missing") if outcome is not None else "missing"
    lines = list(outcome.lines) if outcome is not None else []
    if status == "passed" and not lines:
        lines = ["✓ test passed"]
    lines += explanation
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES - 1] + [f"  ... and {len(lines) - MAX_LINES + 1} more lines"]
    return {"status": status, "points": float(max_points) if status == "passed" else 0.0,
            "max_points": float(max_points), "lines": lines,
            "error": (outcome.error if outcome is not None and status != "tampered" else "") or "",
            "seconds": round(float(outcome.seconds), 3) if outcome is not None else 0.0}


def notebook_verdict(flagged: bool, reasons: list[str], seconds: float, kernel_seconds: float | None = None) -> dict:
    found = {"flagged": bool(flagged), "reasons": list(reasons), "rerun_seconds": round(float(seconds), 3)}
    if kernel_seconds is not None:
        found["kernel_seconds"] = round(float(kernel_seconds), 3)
    return found


def record(nb, cells, outcomes) -> list[str]:
    """Write every test cell's verdict from the re-run's outcomes; the reasons to flag the notebook.

    `cells` are the re-run's (notebook index, (kind, grade_id, source)) and `outcomes` its Outcomes, in
    the same order. A test with no outcome (the re-run never reported on it) is ``missing``: 0.
    """
    by_index = {index: outcome for (index, _), outcome in zip(cells, outcomes)}
    answers = [o for o in outcomes if o.kind == "answer"]
    reasons = []
    for index, cell in enumerate(nb.cells):
        if not is_test_cell(cell):
            continue
        outcome = by_index.get(index)
        max_points = float(cell.metadata["nbgrader"].get("points", 0) or 0)
        claimed = kernel_points(cell)  # what stock nbgrader would give for the kernel's outputs
        in_kernel = not any(o.get("output_type") == "error" for o in cell.get("outputs", []))
        cell.metadata["grader"] = found = verdict(outcome, max_points, explain(outcome, answers, in_kernel))
        grade_id = cell.metadata["nbgrader"].get("grade_id", f"#{index + 1}")
        first = ((outcome.message if outcome is not None else "") or "no verdict").splitlines()[0]
        if found["status"] == "grader-error":
            reasons.append(f"cell {grade_id} needs a manual grade: the grader itself failed in a check ({first})")
        elif found["status"] == "tampered":
            reasons.append(f"cell {grade_id} scored 0: what the checks rely on was changed: {first}")
        elif found["status"] != "passed" and claimed:
            reasons.append(f"cell {grade_id} scored 0, though its outputs in the kernel would have scored "
                           f"{claimed:g} / {max_points:g}: {found['status']} in the re-run "
                           f"({found['error'] + ': ' if found['error'] else ''}{first})")
        if found["status"] != "passed" and in_kernel:
            cell.outputs.append(_output("error", "\n".join(found["lines"])))
        elif found["status"] == "passed" and not in_kernel:
            cell.outputs.append(_output("stream", "✓ the grader's re-run of the answers passed this test, so it "
                                                  "scores its points; the error above is from the notebook's own run"))
    return reasons


def explain(outcome, answers: list, in_kernel: bool) -> list[str]:
    """The lines that say why a test cell scores what it scores, after what its checks printed."""
    if outcome is None or outcome.status == "missing":
        reason = outcome.message if outcome is not None else "the re-run did not reach this cell"
        return [f"✗ re-run: the grader's re-run of your answer cells gave no verdict for this test: {reason}.",
                "Hint: make sure your answer cells finish quickly and do not end the Python process (exit(), "
                "os._exit, killing the kernel)."]
    if outcome.status == "tampered":
        return (["✗ grading integrity: this test is scored 0. Code outside the locked cells changed what the "
                 "grader's checks rely on:"] + [f"  - {line}" for line in outcome.message.splitlines()]
                + ["Hint: answer cells must not patch torch, Python's builtins, the grader or Jupyter; write "
                   "only the code the exercise asks for."])
    if outcome.status == "ok":
        return []
    lines = verdict_lines(outcome.error, outcome.message)
    if outcome.status == "grader-error" or not in_kernel:
        return lines
    lines.append("  (this test passed in your notebook's own run, but failed when the grader ran your answer cells "
                 "again, on their own, in a fresh Python process)")
    broken = [a for a in answers if a.status == "error"]
    lines += [f"  - your answer cell `{a.grade_id}` raised {a.error}: {(a.message.splitlines() or [''])[0]}"
              for a in broken[:3]]
    notes = [n for a in answers for n in a.notes] + outcome.notes
    lines += [f"  - {n}" for n in dict.fromkeys(notes)][:5]
    lines.append("Hint: the re-run runs only the locked cells and your answer cells, in order; code in cells you "
                 "added does not run there, and nothing may change how Jupyter runs cells. Put everything your "
                 "answer needs in its answer cell, then Restart & Run All.")
    return lines


def _output(kind: str, text: str):
    from nbformat.v4 import new_output

    if kind == "error":
        return new_output("error", ename=ERROR_NAME, evalue=text, traceback=text.splitlines())
    return new_output("stream", name="stdout", text=text + "\n")


class SaveRerunGrades(SaveAutoGrades):
    """SaveAutoGrades, with each test cell scored from the re-run's verdict (its metadata), not from its outputs."""

    def _add_score(self, cell, resources) -> None:
        if not is_test_cell(cell):
            return super()._add_score(cell, resources)
        grade = self.gradebook.find_grade(cell.metadata["nbgrader"]["grade_id"], self.notebook_id,
                                          self.assignment_id, self.student_id)
        found = cell.metadata.get("grader")
        status = found.get("status") if isinstance(found, dict) else None
        max_points = float(cell.metadata["nbgrader"]["points"])
        grade.auto_score = max_points if status == "passed" else None if status == "grader-error" else 0.0
        # a manual grade, or a grader error (no auto score), leaves the cell for the instructor, as nbgrader does
        grade.needs_manual_grade = grade.manual_score is not None or grade.auto_score is None
        self.gradebook.db.commit()
