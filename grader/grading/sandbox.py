"""The OS sandbox for every process that runs student code: bubblewrap command lines and policy, in one place.

A sandboxed process (a kernel, the warm server that forks kernels and re-runs, a re-run) sees:

* no network (its own network namespace: not even the grader's ports on loopback), its own PID
  namespace (``/proc`` lists only the sandbox), its own IPC and UTS namespaces, a new session;
* read-only: the system folders (``/usr``, ``/etc``, ``/bin``, ``/lib*``...), the Python
  installation and the venv, the ``grader`` package: each folder alone, so a venv or a package
  that lives inside the course folder never brings the course folder with it;
* a private ``/tmp`` and ``/dev/shm`` (tmpfs, limited in size);
* read-write only the folders it is given: one notebook's `Workspace` (a fresh copy of the
  submission, a private temp folder, the kernel's IPC sockets), or the warm server's folder of
  workspaces. Never the course folder: solutions, source notebooks, the gradebook, other students.

Limits (per process, inherited by its children): address space, processes (RLIMIT_NPROC, which
counts a user's threads), CPU time, file size. RLIMIT_NPROC does not apply to uid 0, so when the
grader runs as root the sandboxed process switches to a uid of its own (`allocate_uid`), unique
per sandbox, before anything else runs: its count is then the sandbox's alone. Run as another
user, bubblewrap makes a user namespace and the process keeps the instructor's uid.

bwrap itself is started by `command`: ``bwrap [namespaces, mounts] -- python -I -S -c SHIM ARGS
-- COMMAND``, where the shim switches uid, sets the limits and re-arms the parent-death signal,
then execs COMMAND. `available` says whether that works here; grading refuses to start without it
unless the instructor sets GRADER_UNSAFE_NO_SANDBOX=1 (or passes ``--unsafe-no-sandbox`` to
``python -m grader autograde``). `preflight` checks, once per run, what the kernels will import.

This module imports only the standard library: workers and nbgrader's process load it by path.
"""

import contextlib
import functools
import itertools
import json
import os
import shutil
import site
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent  # the grader package: read-only in every sandbox
UNSAFE_ENV = "GRADER_UNSAFE_NO_SANDBOX"
BWRAP_ENV = "GRADER_BWRAP"  # the bwrap to run (default: the one on PATH)
INSTALL_HINT = ("Install bubblewrap (`sudo apt-get install bubblewrap` on Debian and Ubuntu, `sudo dnf install "
                "bubblewrap` on Fedora), or grade WITHOUT a sandbox, where student code can read the solutions and "
                "the gradebook: `python -m grader autograde --unsafe-no-sandbox ...`, or GRADER_UNSAFE_NO_SANDBOX=1 "
                "for `nbgrader autograde`.")
SYSTEM = ("/usr", "/etc")
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # symlinks into /usr on merged-/usr systems
UID_BASE = 1 << 30  # sandbox uids when the grader runs as root: far above any real user's
# What a sandboxed process keeps of the grader's environment (an instructor's tokens stay outside).
ENV_KEEP = ("PATH", "LANG", "LANGUAGE", "TZ", "TERM", "PYTHONHASHSEED", "PYTHONPATH", "PYTHONIOENCODING",
            "PYTHONUNBUFFERED", "PYTHONWARNINGS", "PYTHONDONTWRITEBYTECODE", "MPLBACKEND", "NBGRADER_EXECUTION")
ENV_KEEP_PREFIXES = ("LC_", "JPY_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "NUMEXPR_", "CUDA_", "NVIDIA_", "TORCH",
                     "TRITON_", "GRADER_")
SHIM = """import os, resource, sys
a = __import__("json").loads(sys.argv[1])
if a["uid"] is not None:
    os.setgroups([]); os.setresgid(a["uid"], a["uid"], a["uid"]); os.setresuid(a["uid"], a["uid"], a["uid"])
    __import__("ctypes").CDLL(None).prctl(1, 9)  # a uid change clears the parent-death signal: SIGKILL again
for name, value in a["limits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
if os.getsid(0) != os.getpid():
    os.setsid()  # lead its own session and process group, as jupyter_client's launcher makes a kernel do
os.environ.pop("PWD", None)  # bwrap's, not the grader's
os.execv(sys.argv[2], sys.argv[2:])
"""


class SandboxUnavailable(RuntimeError):
    """No working bubblewrap here, and the instructor did not ask to grade without a sandbox."""


class StartupError(RuntimeError):
    """Something about the course, the grader package or the sandbox would make grading wrong: stop first."""


# ---------------------------------------------------------------- limits

def _size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    return int(float(text.rstrip("KMGT")) * scale)


@dataclass(frozen=True)
class Limits:
    """Per process, inherited by its children. Set by GRADER_SANDBOX_MEMORY, _PROCESSES, _CPU, _FILE_SIZE, _TMP."""

    memory: int = 4 << 30       # RLIMIT_AS, bytes of address space (torch with a model: well under 1 GiB)
    processes: int = 256        # RLIMIT_NPROC: processes and threads of the sandbox's uid
    cpu_seconds: int = 3600     # RLIMIT_CPU
    file_size: int = 1 << 30    # RLIMIT_FSIZE, the largest file it may write
    tmp_size: int = 512 << 20   # size of /tmp and of /dev/shm (tmpfs, held in memory)

    @classmethod
    def from_env(cls, env=None) -> "Limits":
        env = os.environ if env is None else env
        found = {}
        for name, variable, parse in (("memory", "MEMORY", _size), ("processes", "PROCESSES", int),
                                      ("cpu_seconds", "CPU", int), ("file_size", "FILE_SIZE", _size),
                                      ("tmp_size", "TMP", _size)):
            if env.get(f"GRADER_SANDBOX_{variable}"):
                found[name] = parse(env[f"GRADER_SANDBOX_{variable}"])
        return cls(**found)

    def rlimits(self) -> dict[str, int]:
        return {"RLIMIT_AS": self.memory, "RLIMIT_NPROC": self.processes, "RLIMIT_CPU": self.cpu_seconds,
                "RLIMIT_FSIZE": self.file_size}

    def describe(self) -> str:
        return (f"{self.memory / (1 << 30):g} GiB of memory and {self.cpu_seconds} s of CPU per process, "
                f"{self.processes} processes and threads, files up to {self.file_size / (1 << 20):g} MiB, "
                f"/tmp {self.tmp_size / (1 << 20):g} MiB")


# ---------------------------------------------------------------- is there a sandbox?

def disabled() -> bool:
    """The instructor asked to grade without a sandbox (GRADER_UNSAFE_NO_SANDBOX=1)."""
    return os.environ.get(UNSAFE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def bwrap() -> str | None:
    path = os.environ.get(BWRAP_ENV) or shutil.which("bwrap")
    return path if path and os.access(path, os.X_OK) else None


@functools.cache
def available() -> tuple[bool, str]:
    """(True, "bubblewrap 0.8.0") when a sandbox starts here, else (False, why, with what to do)."""
    program = bwrap()
    if program is None:
        return False, "bubblewrap (bwrap) is not installed" + (f" at {os.environ[BWRAP_ENV]}"
                                                                if os.environ.get(BWRAP_ENV) else "")
    try:
        version = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        trial = subprocess.run(Sandbox().command([sys.executable, "-I", "-S", "-c", "pass"]),
                               capture_output=True, text=True, timeout=60, env=process_env(os.environ))
    except (OSError, subprocess.SubprocessError) as error:
        return False, f"{program} could not be run: {error}"
    if trial.returncode != 0:
        why = (trial.stderr.strip().splitlines() or [f"exit code {trial.returncode}"])[-1]
        hint = ""
        if "namespace" in why or "uid map" in why or "Permission denied" in why:
            hint = (" (user namespaces may be disabled for unprivileged users: see sysctl "
                    "kernel.unprivileged_userns_clone and kernel.apparmor_restrict_unprivileged_userns)")
        return False, f"{program} cannot start a sandbox here: {why}{hint}"
    return True, version or "bubblewrap"


def require() -> bool:
    """True when grading runs sandboxed, False when the instructor switched the sandbox off; raises otherwise."""
    if disabled():
        return False
    ok, why = available()
    if not ok:
        raise SandboxUnavailable(f"{why}. Student code must run in a sandbox. {INSTALL_HINT}")
    return True


# ---------------------------------------------------------------- what a sandbox shows

def python_folders() -> list[str]:
    """The Python installation, the venv and their package folders (real paths, outermost only)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages()}
    paths |= {p for k, p in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return _outermost(os.path.realpath(p) for p in paths if p and os.path.isdir(p))


def readonly_folders(extra=()) -> list[str]:
    """Every folder a sandbox shows read-only, besides /dev, /proc and its tmpfs."""
    found = [p for p in SYSTEM if os.path.isdir(p)]
    found += python_folders() + [str(PACKAGE)] + [os.path.realpath(p) for p in extra]
    return _outermost(found)


def _outermost(paths) -> list[str]:
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def temp_folder() -> str:
    """Where sandbox folders go: the temp folder, unless its path is so long that a kernel's Unix sockets inside
    would pass the 107 bytes a socket path may have."""
    folder = tempfile.gettempdir()
    return folder if len(folder) <= 48 else "/tmp"


def allocate_uid(_counter=itertools.count()) -> int | None:
    """A fresh uid for a sandbox when running as root (RLIMIT_NPROC counts per uid and never limits root), else None."""
    if os.geteuid() != 0:
        return None
    return UID_BASE + ((os.getpid() & 0x3FFFFF) << 8 | next(_counter) & 0xFF)


@dataclass
class Sandbox:
    """One bubblewrap sandbox: what it shows, what it may write, its limits and its uid."""

    writable: tuple = ()
    readonly: tuple = ()
    limits: Limits = field(default_factory=Limits.from_env)
    as_pid_1: bool = False  # the command is the namespace's init: other processes of the sandbox cannot signal it
    uid: int | None = field(default_factory=allocate_uid)

    def command(self, argv, *, chdir: str = "/") -> list[str]:
        """bwrap's command line for `argv` (argv[0] an absolute path)."""
        root = os.geteuid() == 0
        args = [bwrap() or "bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--hostname", "grader", "--die-with-parent", "--new-session"]
        if self.as_pid_1:
            args.append("--as-pid-1")
        if root:  # bwrap runs privileged: keep only what the shim needs to switch to the sandbox's uid
            args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            args += ["--unshare-user", "--disable-userns"]
        size = str(self.limits.tmp_size)
        args += ["--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
                 "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
        nvidia = sorted(str(p) for p in Path("/dev").glob("nvidia*"))
        for device in nvidia:  # CUDA graders (not tried here: this project's machine has no GPU)
            args += ["--dev-bind-try", device, device]
        if nvidia:
            args += ["--ro-bind-try", "/sys", "/sys"]
        for link in SYSTEM_LINKS:
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        readonly = readonly_folders(self.readonly)
        writable = _outermost(os.path.realpath(p) for p in self.writable)
        for folder in _parents(readonly + writable):  # after the tmpfs, so that folders under /tmp stay visible
            args += ["--perms", "0755", "--dir", folder]  # bwrap would make them 0700, closed to the sandbox's uid
        for folder in readonly:
            args += ["--ro-bind", folder, folder]
        for folder in writable:
            args += ["--bind", folder, folder]
        shim = json.dumps({"uid": self.uid, "limits": self.limits.rlimits()})
        python = os.path.realpath(sys.executable)
        return args + ["--chdir", chdir, "--", python, "-I", "-S", "-c", SHIM, shim, *argv]

    def prepare(self, *paths) -> None:
        """Make these folders (and what they hold) the sandbox uid's, so that it can write them."""
        for path in paths:
            chown_tree(path, self.uid)


def _parents(folders) -> list[str]:
    """Ancestors of the bound folders that bwrap must create (those not inside another bound folder)."""
    found = set()
    for folder in folders:
        parent = os.path.dirname(folder)
        while parent != "/" and not any(inside(parent, f) for f in folders if f != folder):
            found.add(parent)
            parent = os.path.dirname(parent)
    return sorted(found)


def chown_tree(path, uid: int | None) -> None:
    if uid is None:
        return
    os.lchown(path, uid, uid)
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), uid, uid)


def process_env(env, workspace=None) -> dict:
    """The environment a sandboxed process gets: the neutral part of `env`, and its own home and temp folder."""
    kept = {k: v for k, v in env.items() if k in ENV_KEEP or k.startswith(ENV_KEEP_PREFIXES)}
    kept.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    kept.update(USER="grader", LOGNAME="grader")
    if workspace is not None:
        kept.update(HOME=workspace.home, TMPDIR=workspace.tmp)
    else:
        kept.update(HOME="/tmp", TMPDIR="/tmp")
    return kept


# ---------------------------------------------------------------- processes in sandboxes

def is_child(pid: int) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid()
    return False


def relay(fd: int) -> None:
    """Copy what sandboxed processes print to this process's stderr (the worker's log), through a pipe: handed
    the log file itself, they could open it again through /proc/self/fd and read other students' lines."""
    fd = os.dup(fd)

    def run():
        with contextlib.suppress(OSError):
            while chunk := os.read(fd, 1 << 16):
                os.write(2, chunk)
        os.close(fd)

    threading.Thread(target=run, daemon=True, name="sandbox output").start()


def children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    found = children(pid)
    for child in list(found):
        found += descendants(child)
    return found


def ns_pids(pid: int) -> list[int]:
    """A process's pid in each PID namespace it is in, outermost first."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(p) for p in line.split()[1:]]
    return []


# ---------------------------------------------------------------- one notebook's folders

class Workspace:
    """One notebook's folders: `work`, a fresh copy of the submission (the cwd); `tmp`, its private temp folder
    (`home` inside it); `ipc`, the kernel's Unix sockets; `log`, where the kernel's guard writes its refusals.

    `parent` is the folder a warm server's sandbox can write (None: a new temp folder); `uid` the sandbox's.
    Unsandboxed (the instructor switched the sandbox off), `work` is the submission's folder itself, as
    nbgrader would use it.
    """

    def __init__(self, source: str, *, parent: str | None = None, uid: int | None = None, sandboxed: bool = True):
        self.source, self.uid, self.sandboxed = os.path.realpath(source), uid, sandboxed
        copy = sandboxed
        self.path = tempfile.mkdtemp(prefix="ws-" if parent else "grader-ws-", dir=parent or temp_folder())
        os.chmod(self.path, 0o755)
        self.work = os.path.join(self.path, os.path.basename(self.source)) if copy else self.source
        self.tmp = os.path.join(self.path, "tmp")
        self.home = os.path.join(self.tmp, "home")
        self.ipc = os.path.join(self.path, "ipc")
        self.log = os.path.join(self.path, "refusals.log")
        if copy:
            copy_submission(self.source, self.work)
        os.makedirs(self.home)
        os.mkdir(self.ipc)
        Path(self.log).touch(0o600)
        for path in ([self.work] if copy else []) + [self.tmp, self.ipc, self.log]:
            chown_tree(path, uid)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def copy_submission(source: str, target: str) -> None:
    """Regular files and folders; symbolic links as links (never followed: a link to the solutions stays a
    dangling link inside the sandbox); pipes, sockets and devices left out."""
    os.mkdir(target)
    for folder, dirs, files in os.walk(source):
        into = os.path.join(target, os.path.relpath(folder, source))
        for name in dirs + files:
            origin, copy = os.path.join(folder, name), os.path.join(into, name)
            mode = os.lstat(origin).st_mode
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(origin), copy)
                if name in dirs:
                    dirs.remove(name)  # os.walk does not follow it; nothing to copy below
            elif stat.S_ISDIR(mode):
                os.mkdir(copy)
            elif stat.S_ISREG(mode):
                shutil.copy2(origin, copy)


# ---------------------------------------------------------------- once per run, before grading anyone

PROBE = """import importlib.util, json, os, sys
spec = importlib.util.find_spec("grader")
print(json.dumps({"grader": spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None,
                  "seen": [p for p in sys.argv[1:] if os.path.exists(p)]}))
"""
checked = False  # set once the run's preflight passed (a worker's parent ran it)


def preflight(course_root: str, *, secrets=(), config_files=None, python: str = sys.executable) -> str:
    """Check what grading relies on; one line saying what is used, or StartupError saying what to fix.

    * the sandbox works (or the instructor switched it off);
    * the sandbox shows neither the course folder nor the gradebook nor the source notebooks;
    * the `grader` package the kernels import (asked in a sandbox, as a kernel would) is this one, and,
      when the course folder has a grader package, it is that one;
    * when `config_files` is given: the course's nbgrader_config.py is among them.
    """
    global checked
    course_root = os.path.realpath(course_root)
    if not os.path.isdir(course_root):
        raise StartupError(f"the course folder {course_root} does not exist")
    config = os.path.join(course_root, "nbgrader_config.py")
    if config_files is not None and os.path.exists(config) \
            and not any(os.path.realpath(f) == config for f in config_files):
        raise StartupError(f"the course's configuration {config} was not loaded (nbgrader reads nbgrader_config.py "
                           f"from the current folder, {os.getcwd()}): run the command from the course folder")
    sandboxed = require()
    secrets = [os.path.realpath(s) for s in secrets if s]
    box = Sandbox()
    if sandboxed:
        for path in [course_root, *secrets]:
            for folder in readonly_folders():
                if inside(path, folder):
                    raise StartupError(f"the sandbox would show {path} to student code: it lies inside {folder}, "
                                       "which kernels need; move the course folder out of it")
    # What the environment's Python imports (a kernel's), then what a sandboxed process sees.
    environment = _probe([python, "-c", PROBE], "a Python process of the grading environment")
    imported = environment["grader"] and os.path.realpath(environment["grader"])
    own = os.path.join(course_root, "grader")
    if os.path.exists(os.path.join(own, "__init__.py")) and os.path.realpath(own) != imported:
        raise StartupError(f"this course has its own grader package ({own}), but kernels would import "
                           f"{imported or 'none'}: run `pip install -e {course_root}` in the grading environment "
                           f"({python}), or grade from the course that {imported} belongs to")
    if imported != str(PACKAGE):
        raise StartupError(f"kernels would import the grader package from {imported or 'nowhere'}, but the grading "
                           f"code running is {PACKAGE}: run from a folder without another copy of grader/, with one "
                           f"copy installed in the environment that runs the kernels ({python})")
    if sandboxed:  # none of these may exist inside the sandbox; the grader package must
        inside_box = _probe(box.command([python, "-c", PROBE, config, *secrets]), "a process in the sandbox")
        if inside_box["seen"]:
            raise StartupError(f"the sandbox shows {', '.join(inside_box['seen'])} to student code")
        if inside_box["grader"] is None or os.path.realpath(inside_box["grader"]) != imported:
            raise StartupError(f"the sandbox does not show the grader package {imported} to kernels")
    checked = True
    where = "this course's" if inside(imported, course_root) else "installed, outside the course folder"
    what = (f"{available()[1]}, no network, {box.limits.describe()}" if sandboxed
            else f"OFF ({UNSAFE_ENV} is set): student code can read the solutions and the gradebook")
    return f"sandbox: {what}; kernels import grader from {imported} ({where})"


def _probe(argv, what: str) -> dict:
    done = None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=process_env(os.environ), cwd="/")
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        raise StartupError(f"{what} failed to start: "
                           + (done.stderr.strip()[-500:] if done is not None else "it did not run")) from None
