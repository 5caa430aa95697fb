"""The OS sandbox around student code (grader/grading/sandbox.py, forkserver.py, kernels.py).

A kernel is probed under both launch paths, the one stock `nbgrader autograde` takes with the course's
GuardedExecute (each kernel launched through bwrap) and the one `python -m grader autograde` takes (forked
by the warm server, itself in the sandbox): no network, nothing of the course, no other process, nothing
writable but its own copy, limits that hold. The warm server cannot be killed or read by its kernels,
and nothing a student leaves running survives into the next notebook. The re-run is sandboxed and not
dumpable. Grading refuses to start without bubblewrap unless the instructor says so, and refuses a
course whose grader package is not the one the kernels import.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, tool_env
from synthetic_course import ASSIGNMENT, RIGHT, answered, make_course, report, submit

pytestmark = pytest.mark.notebooks


def _modules():
    from grader.grading import autograde_worker

    return autograde_worker.load_sibling("kernels"), autograde_worker.load_sibling("sandbox")


kernels, sandbox = _modules()
if not sandbox.available()[0]:
    pytest.skip(f"no sandbox on this machine: {sandbox.available()[1]}", allow_module_level=True)


@pytest.fixture
def course(tmp_path) -> dict:
    """A course folder's secrets, another student, and one student's submission folder (the kernel's cwd)."""
    root = tmp_path / "course"
    mine, theirs = root / "submitted" / "alice" / ASSIGNMENT, root / "submitted" / "bob" / ASSIGNMENT
    for folder in (root / "solutions" / ASSIGNMENT, mine, theirs):
        folder.mkdir(parents=True)
    (root / "gradebook.db").write_text("scores")
    (root / "solutions" / ASSIGNMENT / "toy.ipynb").write_text("the solution")
    (theirs / "toy.ipynb").write_text("bob's answers")
    (mine / "notes.txt").write_text("mine")
    secrets = [root / "gradebook.db", root / "solutions" / ASSIGNMENT / "toy.ipynb", theirs / "toy.ipynb"]
    assert all(p.exists() for p in secrets)  # control: they are there, outside the sandbox
    return {"root": root, "mine": mine, "secrets": [str(p) for p in secrets]}


@pytest.fixture
def listener():
    """A TCP port on loopback that this process can reach (the control)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    yield port
    server.close()


@pytest.fixture(params=["launched", "forked"])
def launch(request, monkeypatch):
    """Start kernels as stock nbgrader with GuardedExecute does (through bwrap), or as grader autograde (forked)."""
    monkeypatch.setenv("GRADER_SANDBOX_MEMORY", "1G")
    monkeypatch.setenv("GRADER_SANDBOX_PROCESSES", "64")
    server = None
    if request.param == "forked":
        server = kernels.ForkServer()
        server.preload(["json"])
        kernels.install(server)
    yield request.param, server
    kernels.uninstall()
    if server is not None:
        server.close()


def run_cells(folder: Path, *sources: str) -> list:
    """Each cell's stdout parsed as JSON, the cells run in one kernel of the kernel manager GuardedExecute uses."""
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources],
                                        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                 "language": "python"}})
    NotebookClient(notebook, kernel_manager_class=kernels.kernel_manager_class(), timeout=120,
                   resources={"metadata": {"path": str(folder)}}).execute()
    found = []
    for cell in notebook.cells:
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
        errors = [f"{o.ename}: {o.evalue}" for o in cell.outputs if o.output_type == "error"]
        assert not errors, errors
        found.append(json.loads(text.strip().splitlines()[-1]))
    return found


PROBE = r'''
import ctypes, json, os, socket, sys, tempfile
found = {{}}
connection = socket.socket()
connection.settimeout(5)
try:
    connection.connect(("127.0.0.1", {port}))
    found["tcp"] = "connected"
except OSError as error:
    found["tcp"] = type(error).__name__
found["seen"] = [p for p in {secrets!r} if os.path.exists(p)]
found["own file"] = open("notes.txt").read()
commands = []
for pid in (p for p in os.listdir("/proc") if p.isdigit()):
    try:
        commands.append(open(f"/proc/{{pid}}/cmdline", "rb").read().replace(b"\0", b" ").decode())
    except OSError:
        commands.append("?")
found["processes"] = commands
writes = {{}}
for folder in ({course!r}, {mine!r}, sys.prefix, {package!r}, "/usr", "/etc"):
    try:
        with open(os.path.join(folder, "written-by-the-kernel.txt"), "w") as target:
            target.write("x")
        writes[folder] = "written"
    except OSError as error:
        writes[folder] = type(error).__name__
found["writes"] = writes
open("mine.txt", "w").write("ok")
handle, found["temp file"] = tempfile.mkstemp()
found["uid"] = os.getuid()
found["dumpable"] = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
found["output"] = [os.readlink(f"/proc/self/fd/{{fd}}").split(":")[0] for fd in (1, 2)]
print(json.dumps(found))
'''

LIMITS = r'''
import json, os, resource, time
found = {}
try:
    block = bytearray(2 << 30)
    found["2 GiB"] = "allocated"
except MemoryError:
    found["2 GiB"] = "MemoryError"
children = []
try:
    for _ in range(200):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    found["forks"] = "unlimited"
except OSError as error:
    found["forks"] = len(children)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
found["limits"] = {n: resource.getrlimit(getattr(resource, n))[0] for n in ("RLIMIT_AS", "RLIMIT_NPROC")}
print(json.dumps(found))
'''


def test_a_sandboxed_kernel_reaches_nothing_of_the_course_and_no_network(launch, course, listener):
    probe = PROBE.format(port=listener, secrets=course["secrets"], course=str(course["root"]),
                         mine=str(course["mine"]), package=str(sandbox.PACKAGE))
    found, = run_cells(course["mine"], probe)
    assert found["tcp"] != "connected"  # the test process itself connected (the listener fixture)
    assert found["seen"] == []
    assert found["own file"] == "mine"  # its own copy of the submission
    assert not [c for c in found["processes"] if "pytest" in c or "nbgrader" in c], found["processes"]
    assert len(found["processes"]) <= 3, found["processes"]  # init (bwrap's or the server), the kernel, maybe one
    assert set(found["writes"].values()) <= {"PermissionError", "OSError", "FileNotFoundError"}, found["writes"]
    assert not list(course["root"].rglob("written-by-the-kernel.txt"))
    assert not (course["mine"] / "mine.txt").exists()  # it wrote its copy, not the submission
    assert not found["temp file"].startswith(str(course["root"]))
    assert found["uid"] != 0 or os.geteuid() != 0
    assert found["dumpable"] == 1  # a kernel is dumpable, as a fresh process (the control for the re-run's 0)
    assert found["output"] == ["pipe", "pipe"]  # not the grader's log file, which /proc/self/fd would reopen


def test_the_memory_and_process_limits_hold(launch, course):
    found, = run_cells(course["mine"], LIMITS)
    assert found["2 GiB"] == "MemoryError"
    assert found["limits"] == {"RLIMIT_AS": 1 << 30, "RLIMIT_NPROC": 64}
    assert found["forks"] != "unlimited" and found["forks"] < 64


LEAVE_BEHIND = r'''
import json, os, signal
found = {}
os.kill(1, signal.SIGKILL)  # the namespace's init ignores signals from inside the namespace
try:
    found["init fds"] = os.listdir("/proc/1/fd")
except OSError as error:
    found["init fds"] = type(error).__name__
open("/tmp/leftover.txt", "w").write("for the next student")
if os.fork() == 0:  # a detached process that outlives the kernel
    os.setsid()
    if os.fork() == 0:
        open("/proc/self/comm", "w").write("leftover-proc")
        import time
        time.sleep(120)
    os._exit(0)
print(json.dumps(found))
'''
FIND_LEFTOVERS = r'''
import json, os
names = []
for pid in (p for p in os.listdir("/proc") if p.isdigit()):
    try:
        names.append(open(f"/proc/{pid}/comm").read().strip())
    except OSError:
        pass
print(json.dumps({"names": names, "tmp": os.listdir("/tmp"), "own file": open("notes.txt").read()}))
'''


def _host_comms() -> list[str]:
    names = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            pass
    return names


def test_the_warm_server_is_out_of_reach_and_nothing_survives_into_the_next_notebook(course, monkeypatch):
    deep = Path(tempfile.mkdtemp(dir="/tmp")) / "deep"  # its folder two levels into /tmp, whose tmpfs it empties
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    server = kernels.ForkServer()
    server.preload(["json"])
    kernels.install(server)
    try:
        found, = run_cells(course["mine"], LEAVE_BEHIND)
        assert found["init fds"] == "PermissionError"  # the server is not dumpable: its channel stays its own
        assert server.process.poll() is None
        assert "leftover-proc" in _host_comms()  # control: the detached process outlived its kernel
        later, = run_cells(course["mine"], FIND_LEFTOVERS)
        assert "leftover-proc" not in later["names"]
        assert "leftover.txt" not in later["tmp"]
        assert later["own file"] == "mine"  # emptying /tmp left the folder of workspaces, bound into it, alone
        assert "leftover-proc" not in _host_comms()
        assert (server.forked, server.fallbacks) == (2, 0)
    finally:
        kernels.uninstall()
        server.close()
        shutil.rmtree(deep.parent)


def test_the_rerun_child_is_sandboxed_and_not_dumpable(course, listener):
    from grader.grading.rerun import Rerunner

    checks = {
        "not dumpable": "assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 0",
        "no network": f"s = socket.socket()\ns.settimeout(5)\ntry:\n    s.connect(('127.0.0.1', {listener}))\n"
                      "except OSError:\n    pass\nelse:\n    raise AssertionError('connected')",
        "nothing of the course": f"assert not [p for p in {course['secrets']!r} if os.path.exists(p)]",
        "its own copy": "assert open('notes.txt').read() == 'mine'\nopen('mine.txt', 'w').write('x')",
        "no other process": "assert all(b'pytest' not in open(f'/proc/{p}/cmdline', 'rb').read() "
                            "for p in os.listdir('/proc') if p.isdigit())",
    }
    cells = [("locked", "setup", "import ctypes, os, socket")] + [("test", name, code) for name, code in checks.items()]
    outcomes = Rerunner(cell_timeout=60).run(cells, course["mine"], course_root=str(course["root"]), guard=False,
                                             integrity=False)
    assert {o.grade_id: (o.status, o.message) for o in outcomes} == {name: ("ok", "") for name in ["setup", *checks]}
    assert not (course["mine"] / "mine.txt").exists()


# ---------------------------------------------------------------- refusing to grade

GUARDED = '''
import importlib.util as _util, sys as _sys
from nbgrader.converters import Autograde as _Autograde
from nbgrader.preprocessors import Execute as _Execute
_spec = _util.spec_from_file_location("grader_rerun", _util.find_spec("grader").submodule_search_locations[0]
                                      + "/grading/rerun.py")
_rerun = _util.module_from_spec(_spec)
_sys.modules["grader_rerun"] = _rerun
_spec.loader.exec_module(_rerun)
c.Autograde.autograde_preprocessors = [_rerun.GuardedExecute if p is _Execute else p
                                       for p in _Autograde.class_traits()["autograde_preprocessors"].default()]
c.GuardedExecute.preload = []
'''


def _grade(root: Path, *args: str, env=None, stock: bool = False) -> subprocess.CompletedProcess:
    command = ([Path(sys.executable).parent / "nbgrader", "autograde", ASSIGNMENT] if stock else
               [sys.executable, "-m", "grader", "autograde", ASSIGNMENT, "--report", "report.json", "--quiet"])
    return subprocess.run([*command, *args], cwd=root, env={**tool_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def guarded_course(tmp_path_factory) -> Path:
    """The toy course with GuardedExecute (its kernels in the sandbox under stock nbgrader too), one student."""
    root = make_course(tmp_path_factory.mktemp("guarded") / "course", extra_config=GUARDED)
    submit(root, "alice", answered(root, RIGHT))
    return root


NO_BWRAP = {"GRADER_BWRAP": "/nonexistent/bwrap"}


def test_grader_autograde_refuses_to_start_without_bubblewrap(guarded_course, tmp_path):
    root = guarded_course
    done = _grade(root, env=NO_BWRAP)
    assert done.returncode != 0
    assert "bubblewrap (bwrap) is not installed" in done.stderr and "--unsafe-no-sandbox" in done.stderr
    assert not (root / "autograded").exists()
    done = _grade(root, "--unsafe-no-sandbox", "--force", env=NO_BWRAP)
    assert done.returncode == 0, done.stderr
    assert "WARNING: no sandbox" in done.stderr
    assert report(root / "report.json")["alice"]["score"] == 3.0


def test_stock_nbgrader_refuses_to_start_without_bubblewrap(guarded_course):
    root = guarded_course
    done = _grade(root, "--force", env=NO_BWRAP, stock=True)
    assert done.returncode != 0
    assert "grading refused" in done.stderr and "GRADER_UNSAFE_NO_SANDBOX=1" in done.stderr, done.stderr[-2000:]
    assert not (root / "autograded" / "alice" / ASSIGNMENT).exists()  # nothing half-done: the next run grades her
    done = _grade(root, "--force", env={**NO_BWRAP, "GRADER_UNSAFE_NO_SANDBOX": "1"}, stock=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (root / "autograded" / "alice" / ASSIGNMENT / "toy.ipynb").exists()


def test_stock_nbgrader_grades_in_the_sandbox(guarded_course):
    """The same course, sandboxed: GuardedExecute's kernel is launched through bwrap, and grades as before."""
    root = guarded_course
    done = _grade(root, "--force", stock=True)
    assert done.returncode == 0, done.stderr[-2000:]
    from synthetic_course import gradebook_rows

    grades = {g[0]: g[1] for g in gradebook_rows(root)[(ASSIGNMENT, "alice", "toy")]["grades"]}
    assert grades == {"test_square": 1.0, "test_cube": 2.0, "explain": None}


@pytest.fixture(scope="module")
def course_with_its_own_grader(guarded_course, tmp_path_factory) -> Path:
    """A copy of a course that carries its own grader package, while the kernels import this repository's."""
    import shutil

    root = tmp_path_factory.mktemp("mismatch") / "course"
    shutil.copytree(guarded_course, root, ignore=shutil.ignore_patterns("autograded", "report.json"))
    shutil.copytree(ROOT / "grader", root / "grader", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_grader_autograde_refuses_a_course_whose_grader_is_not_the_one_kernels_import(course_with_its_own_grader):
    done = _grade(course_with_its_own_grader)
    assert done.returncode != 0
    assert f"this course has its own grader package ({course_with_its_own_grader / 'grader'})" in done.stderr
    assert f"kernels would import {sandbox.PACKAGE}" in done.stderr
    assert not (course_with_its_own_grader / "autograded").exists()


def test_stock_nbgrader_refuses_it_too(course_with_its_own_grader):
    done = _grade(course_with_its_own_grader, stock=True)
    assert done.returncode != 0
    assert "this course has its own grader package" in done.stderr, done.stderr[-2000:]
    assert not (course_with_its_own_grader / "autograded" / "alice" / ASSIGNMENT).exists()


def test_the_preflight_names_what_it_uses():
    line = sandbox.preflight(str(ROOT), secrets=[str(ROOT / "solutions")])
    assert line.startswith("sandbox: bubblewrap") and f"kernels import grader from {sandbox.PACKAGE}" in line
    with pytest.raises(sandbox.StartupError, match="was not loaded"):
        sandbox.preflight(str(ROOT), config_files=[])


def test_the_sandbox_shows_neither_the_course_folder_nor_its_parents_contents(tmp_path):
    """Only the folders it binds: the course's venv or grader package may live in it, the rest never shows."""
    box = sandbox.Sandbox()
    done = subprocess.run(box.command([sys.executable, "-c", f"import os; print(sorted(os.listdir({str(ROOT)!r})))"]),
                          capture_output=True, text=True, env=sandbox.process_env(os.environ), timeout=60)
    shown = json.loads(done.stdout.replace("'", '"'))
    assert "solutions" not in shown and "nbgrader_config.py" not in shown
    assert set(shown) <= {"grader", ".venv"}, shown


def test_forked_kernels_seed_torch_afresh_as_new_processes_do(course):
    """torch 2.13 seeds its default generator from the OS in every process; forked kernels must not share a seed."""
    seed = "import json, torch\nprint(json.dumps(torch.initial_seed()))"
    fresh = {subprocess.run([sys.executable, "-c", seed.replace("\n", "; ")], capture_output=True, text=True,
                            check=True).stdout for _ in range(2)}
    assert len(fresh) == 2  # the control: two new processes
    server = kernels.ForkServer()
    server.preload(["torch"], rerun=True)
    kernels.install(server)
    try:
        forked = [run_cells(course["mine"], seed)[0] for _ in range(2)]
        assert (server.forked, server.fallbacks, server.problem) == (2, 0, "")
    finally:
        kernels.uninstall()
        server.close()
    assert forked[0] != forked[1]
