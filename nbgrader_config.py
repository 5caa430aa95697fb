"""nbgrader settings for the course; run the stock commands from this folder.

    nbgrader generate_assignment 01_registration   # solutions/ -> exercises/
    nbgrader autograde 01_registration             # submitted/ -> autograded/ + gradebook.db
"""

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)

c.CourseDirectory.course_id = "inside-nn-module"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"

# A fresh kernel plus `import torch` takes about 4 s; no cell of ours needs more than a few.
c.Execute.timeout = 120
c.Execute.startup_timeout = 120
c.Execute.interrupt_on_timeout = True

# The stub a student sees in place of a solution. The grader's checks recognise it and
# say "replace that line with your code" rather than showing a bare NotImplementedError.
c.ClearSolutions.code_stub = {"python": '# YOUR CODE HERE\nraise NotImplementedError("replace this line with your code")'}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# --- Grading defences (grader/grading/: rerun.py, scoring.py, guard.py, feedback.py; docs/grading-security.md) ---
# Student code runs before the tests, in the same kernel, and controls what the kernel prints. So every test cell is
# run again out of the kernel, on the locked cells and the answer cells only (RerunTests), and scored from that
# run's verdict alone (SaveRerunGrades, in place of SaveAutoGrades); the kernel runs under an audit hook from before
# the first cell (GuardedExecute). Feedback shows each test's verdict, never its code (HideTestCode), and HTML or
# JavaScript that the notebook displayed is made harmless for formgrader and feedback (SanitizeOutputs). The modules
# are loaded by path, so that nbgrader's own process never imports the grader package (and torch).
import importlib.util as _importlib_util  # noqa: E402
import sys as _sys  # noqa: E402

from nbgrader.converters import Autograde as _Autograde, GenerateFeedback as _GenerateFeedback  # noqa: E402
from nbgrader.preprocessors import Execute as _Execute, SaveAutoGrades as _SaveAutoGrades  # noqa: E402


def _grader_module(name):
    """grader/grading/<name>.py as module grader_<name>, without running the package's __init__ (which imports torch)."""
    key = f"grader_{name}"
    if key not in _sys.modules:
        package = _importlib_util.find_spec("grader").submodule_search_locations[0]
        spec = _importlib_util.spec_from_file_location(key, f"{package}/grading/{name}.py")
        module = _importlib_util.module_from_spec(spec)
        _sys.modules[key] = module
        spec.loader.exec_module(module)
    return _sys.modules[key]


_scoring = _grader_module("scoring")  # first: rerun and feedback import it as grader_scoring
_rerun, _feedback = _grader_module("rerun"), _grader_module("feedback")
_replaced = {_Execute: _rerun.GuardedExecute, _SaveAutoGrades: _scoring.SaveRerunGrades}
_autograde = [_replaced.get(p, p) for p in _Autograde.class_traits()["autograde_preprocessors"].default()]
_autograde.insert(_autograde.index(_scoring.SaveRerunGrades), _rerun.RerunTests)
c.Autograde.autograde_preprocessors = _autograde + [_feedback.SanitizeOutputs]
c.GenerateFeedback.preprocessors = [_feedback.HideTestCode, _feedback.SanitizeOutputs,
                                    *_GenerateFeedback.class_traits()["preprocessors"].default()]
# A test cell the student deleted is put back (with its hidden part) and run, rather than keeping
# whatever score the gradebook held for it.
c.OverwriteCells.add_missing_cells = True

# --- This machine's settings: nbgrader_config_local.py, next to this file, git-ignored and optional ---
# e.g. c.Exchange.root = "/srv/nbgrader/exchange", or a PostgreSQL c.CourseDirectory.db_url; loaded last, so it wins.
load_subconfig("nbgrader_config_local.py")  # noqa: F821 (provided by traitlets, like get_config); no file: no-op
