"""The warm fork server: a process, inside the sandbox, that imports torch once and forks kernels and re-runs.

The server (`serve`) imports ipykernel and the assignment's modules (torch, grader, ...) once, then
forks one fresh process per notebook: a kernel, or the re-run of its tests (`rerun_child`). It
runs inside a bubblewrap sandbox (`sandbox`) as the init process of its PID namespace, so
everything it forks is sandboxed too, and no process of the sandbox can signal it (the kernel
drops signals to a namespace's init that come from inside it). Before each fork, and before the
grading process copies the next submission into its folder, it kills every other process of the
namespace (whatever the previous notebook left, detached or not) and empties the sandbox's /tmp
and /dev/shm.

Its only channel is a Unix socket pair inherited from the grading process (no path to find, no
child keeps it); the server is not dumpable, so its /proc/<pid>/fd and memory are closed to the
processes of the sandbox. A re-run child gets its job, with the key that signs its reports, on a
pipe from the grading process: the key never passes through the server.

Forking is refused when preloading left the server unsafe to fork: a Python thread running, or
CUDA initialised (checked before every fork). `ForkServer` is the grading process's handle.

This file has no imports from the grader package: it is loaded by path (grader/__init__.py imports torch).
"""

import atexit
import contextlib
import ctypes
import importlib.util
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

RERUN_MODULE = "grader.grading.rerun_child"
_BOOTSTRAP = ("import importlib.util as u, sys; s = u.spec_from_file_location('grader_forkserver', sys.argv[1]); "
              "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); m.serve(sys.argv[2:])")
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 4


def _sandbox():
    """sandbox.py, loaded by path as grader_sandbox (the module object every loader shares)."""
    if "grader_sandbox" not in sys.modules:
        spec = importlib.util.spec_from_file_location("grader_sandbox", Path(__file__).with_name("sandbox.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["grader_sandbox"] = module
        spec.loader.exec_module(module)
    return sys.modules["grader_sandbox"]


# ---------------------------------------------------------------- the server (its own process, in the sandbox)

def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(option, value)


def _unsafe_to_fork() -> str:
    if threading.active_count() > 1:
        return "a Python thread is running: " + ", ".join(t.name for t in threading.enumerate())
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised (a forked child could not use it)"
    return ""


def _preload(names, rerun: bool) -> dict:
    loaded, failed = [], []
    for name in names:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except BaseException as error:  # a module that fails here will fail in the notebook too
            failed.append(f"{name}: {type(error).__name__}: {error}")
    if rerun:
        _import_rerun()
    return {"preloaded": loaded, "failed": failed, "unsafe": _unsafe_to_fork()}


def _import_rerun() -> None:
    """The re-run's module warms torch up and takes its integrity watch at import."""
    importlib.import_module(RERUN_MODULE)


def _reseed() -> None:
    """A forked child starts with its server's random state: seed it afresh, as a new process seeds itself
    (`random` reseeds itself after a fork; numpy's global state does not, nor torch's default generator,
    which torch 2.13 seeds from the OS in every new process)."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()


class _Server:
    """The server's state: its channel to the worker, the processes it forked and their exit codes."""

    def __init__(self, channel: socket.socket, base_path: list[str]):
        self.channel, self.base_path = channel, base_path
        self.children: dict[int, int | None] = {}
        self.init = os.getpid() == 1  # the init of the sandbox's PID namespace

    def reap(self, block_until: float = 0.0) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                if time.monotonic() >= block_until:
                    return
                time.sleep(0.005)
                continue
            if pid in self.children:
                self.children[pid] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    def reset(self) -> None:
        """Kill whatever the previous notebook left (kernel, re-run, their children, detached or not), empty /tmp."""
        if self.init:
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)  # from a namespace's init: every other process of the namespace
            self.reap(block_until=time.monotonic() + 5)
            for folder in ("/tmp", "/dev/shm"):
                _empty(folder)
        else:  # no sandbox: what it forked, by process group
            for pid, code in self.children.items():
                if code is None:
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
            self.reap(block_until=time.monotonic() + 2)

    def fork(self, become, *args) -> int:
        unsafe = _unsafe_to_fork()
        if unsafe:
            raise RuntimeError(f"refusing to fork: {unsafe}")
        self.reset()
        pid = os.fork()
        if pid == 0:
            become(self.channel.fileno(), *args)
        self.children[pid] = None
        return pid

    def answer(self, request: dict, fds: list[int]) -> dict:
        op = request["op"]
        if op == "preload":
            return _preload(request["modules"], request.get("rerun", False))
        if op == "kernel":
            return {"pid": self.fork(_become_kernel, request, self.base_path)}
        if op == "rerun":
            if RERUN_MODULE not in sys.modules:
                _import_rerun()
            return {"pid": self.fork(_become_rerun, fds[0], fds[1])}
        if op == "reset":
            self.reset()
            return {}
        if op == "poll":
            self.reap()
            return {"returncode": self.children.get(request["pid"], -signal.SIGKILL)}
        if op == "signal":
            if self.children.get(request["pid"], 0) is None:
                with contextlib.suppress(OSError):
                    os.killpg(request["pid"], request["signum"])  # each child leads its process group
            return {}
        return {"error": f"unknown op {op!r}"}


def _empty(folder: str) -> None:
    """Remove what is in a tmpfs of the sandbox, but never a folder bound into it, nor one on the way to it."""
    try:
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if any(m == entry.path or m.startswith(entry.path + "/") for m in mounts):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)


def serve(argv) -> None:
    """Fork server main: `serve SETTINGS`; requests arrive on the inherited socket, the server ends at its EOF."""
    settings = json.loads(argv[0])
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(_PR_SET_DUMPABLE, 0)  # /proc/<pid>/fd and memory closed to the processes of the sandbox
    del sys.path[0]  # '' from `python -c`; a kernel started with `-m ipykernel_launcher` drops it too
    channel = socket.socket(fileno=settings["fd"])
    server = _Server(channel, list(sys.path))
    if settings.get("kernels", True):
        import ipykernel.kernelapp  # noqa: F401  (the expensive part of every kernel start)
    channel.send(json.dumps({"pid": os.getpid()}).encode())
    try:
        while True:
            readable, _, _ = select.select([channel], [], [], 0.1)
            server.reap()
            if not readable:
                continue
            message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 4)
            if not message:
                break  # the worker closed the channel or died
            try:
                reply = server.answer(json.loads(message), fds)
            except Exception as error:
                reply = {"error": f"{type(error).__name__}: {error}"}
            finally:
                for fd in fds:
                    os.close(fd)
            channel.send(json.dumps(reply).encode())
    finally:
        server.reset()


def _child_setup(channel_fd: int, dumpable: bool) -> None:
    os.close(channel_fd)  # the server's channel stays the server's
    os.setsid()  # its own process group, as jupyter_client's launcher does: interrupts and kills reach all of it
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(_PR_SET_DUMPABLE, int(dumpable))
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tempfile.tempdir = None  # the server's may be cached: read TMPDIR again


def _become_kernel(channel_fd: int, request: dict, base_path: list[str]) -> None:
    """In the forked child: turn into what `python -m ipykernel_launcher ARGS` would be, then run it."""
    code = 1
    try:
        _child_setup(channel_fd, dumpable=True)  # as a fresh process: it holds nothing of the grader's
        stdin, _ = os.pipe()  # like a launched kernel: stdin is a pipe that nobody writes to
        os.dup2(stdin, 0)
        os.close(stdin)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["JPY_PARENT_PID"] = str(os.getppid())
        sys.argv = [importlib.util.find_spec("ipykernel_launcher").origin, *request["argv"]]
        sys.path[:] = base_path
        _reseed()
        from ipykernel import kernelapp

        # IPKernelApp read JPY_PARENT_PID when the server imported it: pass the value a kernel would read
        kernelapp.launch_new_instance(parent_handle=os.getppid())
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # what interpreter shutdown would run
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class _Channel:
    def __init__(self, fd: int):
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def _become_rerun(channel_fd: int, job_fd: int, report_fd: int) -> None:
    """In the forked child: read the job (the 32-byte key, then JSON), run `rerun_child.serve`; never returns."""
    try:
        _child_setup(channel_fd, dumpable=False)  # it holds the key: no process it starts may read its memory
        os.set_inheritable(report_fd, False)
        key, data = b"", b""
        while len(key) < 32:
            chunk = os.read(job_fd, 32 - len(key))
            if not chunk:
                os._exit(2)
            key += chunk
        while chunk := os.read(job_fd, 1 << 20):
            data += chunk
        os.close(job_fd)
        job = json.loads(data)
        del data
        os.environ.update(job.pop("env"))
        job["key"] = key
        del key
        _reseed()
        sys.modules[RERUN_MODULE].serve(job, _Channel(report_fd))
    except BaseException:
        traceback.print_exc()
    os._exit(1)


# ---------------------------------------------------------------- the grading process's side

class ForkServer:
    """A running fork server, in its sandbox unless the instructor switched the sandbox off; `close()` stops it.

    It starts importing ipykernel at once (with kernels=True); `preload(modules)` queues the assignment's
    modules, which it imports while the caller goes on. Kernels and re-runs are forked only after both.
    A server started by one process can be handed to a child it forks: the child calls `adopt()`, the
    parent `release()`.
    """

    def __init__(self, env=None, python=sys.executable, *, kernels: bool = True, rerun: bool = False,
                 sandboxed: bool | None = None, readonly=(), adopt: bool = True):
        sandbox = _sandbox()
        self.python, self.rerun_ready = python, rerun
        self.sandboxed = sandbox.require() if sandboxed is None else sandboxed
        self.folder = tempfile.mkdtemp(prefix="grader-sandbox-", dir=sandbox.temp_folder())  # its workspaces
        os.chmod(self.folder, 0o755)
        self.box = sandbox.Sandbox(writable=(self.folder,), readonly=tuple(readonly), as_pid_1=True)
        self.uid = self.box.uid if self.sandboxed else None
        self._channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        settings = json.dumps({"fd": theirs.fileno(), "kernels": kernels})
        argv = [python, "-c", _BOOTSTRAP, __file__, settings]
        environment = dict(os.environ if env is None else env)
        if self.sandboxed:
            environment = sandbox.process_env(environment)
            argv = self.box.command(argv)
        self.process = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=environment,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        theirs.close()
        self.info: dict = {}
        self.problem = ""  # why kernels are started the normal way, if they are
        self.forked = self.fallbacks = 0
        self._started, self._pending = False, 0
        self._lock = threading.Lock()
        self._host_pid: int | None = None
        if adopt:
            self.adopt()

    def adopt(self) -> None:
        """This process talks to the server from now on: its output goes to this process's stderr."""
        _sandbox().relay(self.process.stdout.fileno())

    def release(self) -> None:
        """After handing the server to a forked child: this process keeps nothing of it but the bwrap to reap."""
        with contextlib.suppress(OSError):
            self._channel.close()
            self.process.stdout.close()

    def _receive(self, timeout) -> dict:
        readable, _, _ = select.select([self._channel], [], [], timeout)
        message = self._channel.recv(1 << 20) if readable else b""
        if not message:
            raise RuntimeError(f"the fork server gave no answer (exit code {self.process.poll()})")
        return json.loads(message)

    def _drain(self, timeout: float) -> None:
        """Read what the server owes: its start message, then the replies to the queued preloads."""
        try:
            if not self._started:
                self._started = True
                self.info.update(self._receive(timeout))
            while self._pending:
                self._pending -= 1
                self.info.update(self._receive(timeout))
                self.problem = self.problem or self.info.get("unsafe", "") or self.info.get("error", "")
        except (OSError, ValueError, RuntimeError) as error:
            self.problem = self.problem or f"the fork server failed: {error}"

    def preload(self, modules, rerun: bool | None = None) -> None:
        """Queue an import of these modules (and of the re-run's, with rerun=True) in the server."""
        self.rerun_ready = self.rerun_ready if rerun is None else rerun
        with self._lock:
            with contextlib.suppress(OSError):
                self._channel.send(json.dumps({"op": "preload", "modules": list(modules),
                                               "rerun": self.rerun_ready}).encode())
                self._pending += 1

    def wait_ready(self, timeout: float = 300) -> bool:
        """Block until the server can fork; False (see `problem`) when it cannot."""
        with self._lock:
            self._drain(timeout)
        return not self.problem

    def _request(self, fds=(), **request) -> dict:
        with self._lock:
            self._drain(300)
            socket.send_fds(self._channel, [json.dumps(request).encode()], list(fds))
            reply = self._receive(60)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def spawn(self, argv, env, cwd) -> int:
        pid = self._request(op="kernel", argv=list(argv), env=dict(env), cwd=str(cwd))["pid"]
        self.forked += 1
        return pid

    def rerun(self, job_fd: int, report_fd: int) -> int:
        """Fork a re-run child that reads its job from `job_fd` and reports on `report_fd`."""
        if not self.wait_ready():
            raise RuntimeError(f"the fork server cannot fork: {self.problem}")
        return self._request(fds=(job_fd, report_fd), op="rerun")["pid"]

    def reset(self) -> None:
        """Kill every process of the sandbox but the server, and empty its /tmp."""
        if self.wait_ready():
            self._request(op="reset")

    def poll(self, pid: int) -> int | None:
        try:
            return self._request(op="poll", pid=pid)["returncode"]
        except (OSError, ValueError, RuntimeError):
            return -signal.SIGKILL  # the server is gone, and its children with it

    def signal(self, pid: int, signum: int) -> None:
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            self._request(op="signal", pid=pid, signum=signum)

    def host_pid(self, pid: int) -> int | None:
        """The pid this machine knows a child by (its pid in the sandbox differs), or None."""
        if not self.sandboxed:
            return pid
        sandbox = _sandbox()
        if self._host_pid is None:
            self._host_pid = next((p for p in sandbox.children(self.process.pid) if sandbox.ns_pids(p)[-1:] == [1]), None)
        return next((p for p in sandbox.children(self._host_pid or -1) if sandbox.ns_pids(p)[-1:] == [pid]), None)

    def close(self) -> None:
        """Stop the server (it ends at the channel's EOF, killing what it forked) and remove its folder."""
        with contextlib.suppress(OSError):
            self._channel.close()
        if self.process.returncode is None and _sandbox().is_child(self.process.pid):  # else its parent reaps it
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class ForkedProcess:
    """The subset of subprocess.Popen that jupyter_client's LocalProvisioner uses, for a forked kernel."""

    stdin = stdout = stderr = None

    def __init__(self, server: ForkServer, pid: int):
        self.server, self.pid, self.returncode = server, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.poll(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("kernel", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            self.server.signal(self.pid, signum)  # its pid means something inside the sandbox only

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)
