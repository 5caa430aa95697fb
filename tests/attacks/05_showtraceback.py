"""IPython's traceback display and sys.excepthook are replaced by functions that print nothing.

where: added first
stock: 0
"""
import sys

get_ipython().showtraceback = lambda *args, **kwargs: None
sys.excepthook = lambda *args: None
