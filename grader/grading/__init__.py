"""The grading machinery instructors run; students never import it.

autograde, autograde_worker, kernels   `python -m grader autograde`: parallel workers, warm kernels
rerun, rerun_child                     the re-run of every test out of the student's kernel
guard, integrity                       the audit-hook guard and the integrity watch
feedback                               feedback that shows verdicts, never test code
report, report_data, report_figures    `python -m grader report`: the class report from the stored verdicts
similarity                             similar answers, for the instructor to review
export                                 `python -m grader export`: grades for Canvas, Moodle or a CSV
"""
