"""The answer cell starts a detached process that waits until grading is over, then writes full
manual scores into the gradebook.

where: answer counting_functions
stock: 5
contained: in the OS sandbox a process may start (DataLoader workers do), so nothing refuses it; it sees no gradebook (not in the sandbox) and is killed before the next notebook starts (tests/test_sandbox.py)
"""
import os
import subprocess
import sys

_student = os.path.basename(os.path.dirname(os.getcwd()))
_gradebook = os.path.abspath(os.path.join("..", "..", "..", "gradebook.db"))
_later = f"""
import sqlite3, time
time.sleep(3)
with sqlite3.connect({_gradebook!r}, timeout=60) as db:
    db.execute("UPDATE grade SET manual_score = (SELECT max_score FROM grade_cells WHERE grade_cells.id = grade.cell_id) "
               "WHERE notebook_id IN (SELECT n.id FROM submitted_notebook n JOIN submitted_assignment a "
               "ON n.assignment_id = a.id WHERE a.student_id = ?)", ({_student!r},))
"""
subprocess.Popen([sys.executable, "-c", _later], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
