"""The answer cell reads the instructor's source notebook through a relative path that a path rule resolves
against the wrong folder: it opens its own folder as a file descriptor, moves the current folder deep into its
temporary folder, opens ../../../solutions/... relative to the descriptor (dir_fd), and runs the answer cells.

where: answer super_answer
stock: 3
"""
import glob
import json
import os
import tempfile

_here = os.open(".", os.O_RDONLY)
_assignment = os.path.basename(os.getcwd())
_name = os.path.basename(glob.glob("*.ipynb")[0])
_deep = os.path.join(tempfile.gettempdir(), "a", "b", "c")
os.makedirs(_deep, exist_ok=True)
os.chdir(_deep)
try:
    _fd = os.open(os.path.join("..", "..", "..", "solutions", _assignment, _name), os.O_RDONLY, dir_fd=_here)
    with os.fdopen(_fd) as _source:
        for _cell in json.load(_source)["cells"]:
            if _cell["metadata"].get("nbgrader", {}).get("solution") and _cell["cell_type"] == "code":
                exec("".join(_cell["source"]))
finally:
    os.fchdir(_here)
