"""Realistic student answers per assignment (unitNN_topic.py, one ANSWERS list each), graded by tests/answer_lab.py."""
