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
