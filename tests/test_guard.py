"""The grading guard's policy, probed in a child process (an audit hook cannot be removed): files, relative paths
and folder descriptors, SQLite, sockets, processes."""

import json
import subprocess
import sys

from conftest import ROOT

PROBE = r'''
import json, os, socket, sqlite3, sys
sys.path.insert(0, {grader!r})
import guard

secret = os.path.join({denied!r}, "gradebook.db")
with open(secret, "w") as f:
    f.write("scores")
fd = os.open(secret, os.O_RDONLY)
read_end, write_end = os.pipe()
guard.install(read_roots=[sys.prefix, sys.base_prefix, "/usr", "/proc", {readable!r}],
              write_roots=[{writable!r}], deny_roots=[{denied!r}], processes={processes!r})


def unix_socket(action, path):
    with socket.socket(socket.AF_UNIX) as s:
        getattr(s, action)(path)


def tcp_connect():
    with socket.socket() as s:
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", 9))
        except (ConnectionError, OSError) as error:
            if isinstance(error, PermissionError):
                raise


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
    "climb with a relative path": outcome(lambda: open(os.path.join("readable", "..", "readable", "notes.txt"))),
    "read with a relative path": outcome(lambda: open(os.path.join("readable", "notes.txt")).read()),
    "open a readable folder as a descriptor": outcome(lambda: os.close(os.open({readable!r}, os.O_RDONLY))),
    "open a writable folder as a descriptor": outcome(lambda: os.close(os.open({writable!r}, os.O_RDONLY))),
    "open an in-memory database": outcome(lambda: sqlite3.connect(":memory:")),
    "connect to a socket outside the writable folder": outcome(lambda: unix_socket("connect", os.path.join({readable!r}, "s"))),
    "bind a socket in the writable folder": outcome(lambda: unix_socket("bind", os.path.join({writable!r}, "s"))),
    "connect over TCP": outcome(tcp_connect),
}}))
'''


def probe(tmp_path, processes=False) -> dict:
    folders = {name: tmp_path / name for name in ("readable", "writable", "denied")}
    for folder in folders.values():
        folder.mkdir()
    (folders["readable"] / "notes.txt").write_text("notes")
    code = PROBE.format(grader=str(ROOT / "grader" / "grading"), processes=processes,
                        **{k: str(v) for k, v in folders.items()})
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_policy(tmp_path):
    assert probe(tmp_path) == {
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
        # the "open" audit event does not name the dir_fd a relative path is relative to
        "climb with a relative path": "refused",
        "read with a relative path": "allowed",
        "open a readable folder as a descriptor": "refused",
        "open a writable folder as a descriptor": "allowed",
        # an in-memory database can ATTACH any file, with no audit event of its own
        "open an in-memory database": "refused",
        "connect to a socket outside the writable folder": "refused",
        "bind a socket in the writable folder": "allowed",
        "connect over TCP": "refused",
    }


def test_processes_are_allowed_only_when_asked(tmp_path):
    """Inside the OS sandbox (which then holds them), graded code may start processes; the rest stays."""
    found = probe(tmp_path, processes=True)
    assert found["start a process"] == "allowed"
    assert found["read a denied file"] == found["open an in-memory database"] == found["connect over TCP"] == "refused"
