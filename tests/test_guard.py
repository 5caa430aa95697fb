"""The grading guard's file policy, probed in a child process (an audit hook cannot be removed)."""

import json
import subprocess
import sys

from conftest import ROOT

PROBE = r'''
import json, os, sys
sys.path.insert(0, {grader!r})
import guard

secret = os.path.join({denied!r}, "gradebook.db")
with open(secret, "w") as f:
    f.write("scores")
fd = os.open(secret, os.O_RDONLY)
read_end, write_end = os.pipe()
guard.install(read_roots=[sys.prefix, sys.base_prefix, "/usr", "/proc", {readable!r}],
              write_roots=[{writable!r}], deny_roots=[{denied!r}])


def outcome(action):
    try:
        action()
        return "allowed"
    except PermissionError:
        return "refused"


print(json.dumps({{
    "read a readable file": outcome(lambda: open(os.path.join({readable!r}, "notes.txt")).read()),
    "write a writable file": outcome(lambda: open(os.path.join({writable!r}, "out.txt"), "w").write("x")),
    "write a readable file": outcome(lambda: open(os.path.join({readable!r}, "notes.txt"), "w")),
    "read a denied file": outcome(lambda: open(secret).read()),
    "read it through /proc/self/fd": outcome(lambda: open(f"/proc/self/fd/{{fd}}").read()),
    "read it through /proc/self/cwd": outcome(lambda: open("/proc/self/cwd/denied/gradebook.db").read()),
    "read a pipe through /proc/self/fd": outcome(lambda: open(f"/proc/{{os.getpid()}}/fd/{{write_end}}")),
    "read /proc/self/mem": outcome(lambda: open("/proc/self/mem", "rb")),
    "read /proc/self/status": outcome(lambda: open("/proc/self/status").read()),
    "start a process": outcome(lambda: os.system("true")),
    "make a symbolic link": outcome(lambda: os.symlink(secret, os.path.join({writable!r}, "link"))),
}}))
'''


def test_file_policy(tmp_path):
    folders = {name: tmp_path / name for name in ("readable", "writable", "denied")}
    for folder in folders.values():
        folder.mkdir()
    (folders["readable"] / "notes.txt").write_text("notes")
    code = PROBE.format(grader=str(ROOT / "grader" / "grading"), **{k: str(v) for k, v in folders.items()})
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "read a readable file": "allowed",
        "write a writable file": "allowed",
        "write a readable file": "refused",
        "read a denied file": "refused",
        "read it through /proc/self/fd": "refused",
        "read it through /proc/self/cwd": "refused",
        "read a pipe through /proc/self/fd": "refused",
        "read /proc/self/mem": "refused",
        "read /proc/self/status": "allowed",
        "start a process": "refused",
        "make a symbolic link": "refused",
    }
