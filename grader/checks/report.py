"""How checks speak: one verdict line on success, a diagnosis on failure, nothing on stderr."""

import contextlib
import io
import warnings

PASS = "✓"
FAIL = "✗"


class CheckFailed(AssertionError):
    """A check's verdict against the student's code; the message is the diagnosis."""


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
