"""How checks speak: one verdict line on success, a diagnosis on failure, nothing on stderr.

In a notebook a failure shows only its diagnosis (IPython's `_render_traceback_`): no chained
exceptions, no grader or torch frames. nbgrader still sees an error, so the cell scores 0.
"""

import contextlib
import io
import warnings

PASS = "✓"
FAIL = "✗"
MAX_LINES = 10  # what a failed check may show in a notebook


def _shown(message: str) -> list[str]:
    """The message as a notebook shows it: at most MAX_LINES lines, the hint kept."""
    lines = message.splitlines() or [""]
    if len(lines) <= MAX_LINES:
        return lines
    tail = [line for line in lines[1:] if line.startswith(("Hint:", "(torch warned"))][:2]
    body = [line for line in lines[1:] if line not in tail]
    room = MAX_LINES - 2 - len(tail)
    return [lines[0], *body[:room], f"  ... and {len(body) - room} more", *tail]


class CheckFailed(AssertionError):
    """A check's verdict against the student's code; the message is the diagnosis."""

    def _render_traceback_(self) -> list[str]:  # IPython shows these lines instead of a traceback
        return _shown(str(self))

    @property
    def diagnosis(self) -> str:
        """What is wrong and where, without the hint on how to fix it: what the debugging clinic's diagnosis
        cells show, since finding the fix is the exercise."""
        return "\n".join(line for line in _shown(str(self)) if not line.startswith("Hint:"))


class GraderError(Exception):
    """The grader itself failed inside a check: a bug of the grader or of the test, never the student's.

    The autograder does not score such a cell 0: it leaves it for a manual grade and tells the instructor.
    """

    def __init__(self, check: str, error: BaseException):
        self.check = check
        self.error = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        super().__init__(f"⚠ grader error in `{check}`: {self.error}\n"
                         "This is a bug in the grader or in this test, not in your code. Your instructor will grade "
                         "this cell by hand; please tell them what you see here.")

    def _render_traceback_(self) -> list[str]:
        return _shown(str(self))


def verdict(check: str, summary: str, devices: str = "") -> None:
    where = f" [{devices}]" if devices else ""
    print(f"{PASS} {check}: {summary}{where}")


def fail(check: str, problem: str, details=(), hint: str = "", devices: str = ""):
    """Raise CheckFailed with a message a student can act on."""
    __tracebackhide__ = True
    where = f" [{devices}]" if devices else ""
    lines = [f"{FAIL} {check}{where}: {problem}"]
    lines += [f"  - {d}" for d in details]
    if hint:
        lines.append(f"Hint: {hint}")
    diagnosis = "\n".join(lines)
    # The grader's verdict on your code: the message below says what is wrong and where to look.
    raise CheckFailed(diagnosis)


@contextlib.contextmanager
def own_errors(check: str):
    """Inside a check: an exception that is neither a verdict nor a grader error came from the student's code
    (a CheckFailed naming their line) or from the grader itself (GraderError, never a student's zero)."""
    __tracebackhide__ = True
    try:
        yield
    except (CheckFailed, GraderError):
        raise
    except Exception as error:
        from .diagnose import describe_error, explain_error, student_line

        if student_line(error):
            raise CheckFailed(f"{FAIL} {check}: your code raised {describe_error(error)}\n"
                              f"Hint: {explain_error(error)}") from None
        if isinstance(error, RuntimeError) and "support the deepcopy protocol" in str(error):
            # torch refuses to deep-copy a non-leaf tensor: the check copied a model that keeps one
            raise CheckFailed(f"{FAIL} {check}: the model cannot be copied (copy.deepcopy raised RuntimeError: "
                              f"{str(error).split('.')[0]})\nHint: {explain_error(error)}") from None
        raise GraderError(check, error) from None


@contextlib.contextmanager
def quiet():
    """Keep torch warnings and stray stderr writes out of the test cell.

    nbgrader scores a test cell that writes to stderr as 0, so a correct answer that
    makes torch warn must stay silent. Warnings are recorded; on failure they are
    appended to the diagnosis, since they often name the cause.
    """
    captured = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(captured):
        warnings.simplefilter("always")
        try:
            yield
        except CheckFailed as failure:
            notes = _warning_notes(caught)
            if notes:  # the same verdict, with the warnings torch gave on the way
                raise CheckFailed(f"{failure}\n" + "\n".join(notes)).with_traceback(None) from None
            raise


def _warning_notes(caught) -> list[str]:
    seen = []
    for w in caught:
        text = f"{w.category.__name__}: {str(w.message).splitlines()[0]}"
        if text not in seen:
            seen.append(text)
    return [f"(torch warned: {text})" for text in seen[:3]]


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (many or word + 's')}"
