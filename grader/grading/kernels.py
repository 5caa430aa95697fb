"""Warm kernels: pay for starting Python, ipykernel and `import torch` once per grading worker.

A fork server process imports ipykernel and the assignment's modules (torch, grader, ...) once,
then forks one fresh kernel process per notebook. A kernel is never reused: each notebook gets a
new process, copied from the server's pristine state, so nothing one student does (globals,
monkeypatches, environment variables, files opened, the cwd) can reach the next one; when the
kernel exits, all of it is gone.

The server plugs into nbgrader through jupyter_client's documented extension point, a kernel
provisioner (`WarmProvisioner`): nbgrader's Execute preprocessor and nbclient run unchanged, and
interrupts, timeouts, shutdown and kill work as they do for a normal kernel (the forked kernel
leads its own process group, like one started by jupyter_client). A kernel command that is not
the standard `python -m ipykernel_launcher` of this interpreter falls back to a normal launch.

Forking is refused (and every kernel is launched normally) when preloading left the server in a
state that is unsafe to fork: a Python thread running, or CUDA initialised. Importing torch does
not initialise CUDA, so each forked kernel initialises CUDA itself, as a fresh process would.

This file has no imports from the grader package: workers load it by path so that they do not
import torch themselves (grader/__init__.py does).
"""

import ast
import asyncio
import atexit
import contextlib
import ctypes
import functools
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

PROVISIONER_NAME = "grader-warm"
_BOOTSTRAP = ("import importlib.util as u, sys; s = u.spec_from_file_location('grader_kernels', sys.argv[1]); "
              "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); m.serve(sys.argv[2:])")


# ---------------------------------------------------------------- which modules to preload

def imported_modules(notebooks) -> list[str]:
    """Top-level modules that the code cells of these notebooks import, in order of appearance."""
    import nbformat

    found = []
    for path in notebooks:
        try:
            cells = nbformat.read(path, as_version=4).cells
        except Exception:
            continue
        for cell in cells:
            if cell.cell_type != "code":
                continue
            source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in found:
                        found.append(top)
    return found


# ---------------------------------------------------------------- the server (its own process)

def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent process dies, so nothing outlives a killed worker."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _unsafe_to_fork() -> str:
    if threading.active_count() > 1:
        return "a Python thread is running: " + ", ".join(t.name for t in threading.enumerate())
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised (a forked child could not use it)"
    return ""


def _preload(names) -> dict:
    loaded, failed = [], []
    for name in names:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except BaseException as error:  # a module that fails here will fail in the notebook too
            failed.append(f"{name}: {type(error).__name__}: {error}")
    return {"preloaded": loaded, "failed": failed, "unsafe": _unsafe_to_fork()}


def serve(argv) -> None:
    """Fork server main: `serve SOCKET`. Its stdin is a pipe from the worker (EOF: exit)."""
    _die_with_parent()
    del sys.path[0]  # '' from `python -c`; a kernel started with `-m ipykernel_launcher` drops it too
    base_path = list(sys.path)
    import ipykernel.kernelapp  # noqa: F401  (the expensive part of every kernel start)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(argv[0])
    listener.listen(16)
    sys.stdout.write(json.dumps({"pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    os.dup2(2, 1)  # kernels inherit stdout and stderr: both go to the worker's log
    kernels: dict[int, int | None] = {}
    try:
        while True:
            readable, _, _ = select.select([listener, sys.stdin], [], [], 0.1)
            _reap(kernels)
            if sys.stdin in readable and not os.read(sys.stdin.fileno(), 4096):
                break  # the worker closed the pipe or died
            if listener in readable:
                connection, _ = listener.accept()
                with connection:
                    try:
                        reply = _answer(connection, listener, kernels, base_path)
                    except Exception as error:
                        reply = {"error": f"{type(error).__name__}: {error}"}
                    connection.sendall((json.dumps(reply) + "\n").encode())
    finally:
        for pid, code in kernels.items():
            if code is None:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)


def _reap(kernels) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        kernels[pid] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _answer(connection, listener, kernels, base_path) -> dict:
    request = json.loads(connection.makefile("r").readline())
    if request["op"] == "preload":
        reply = _preload(request["modules"])
    elif request["op"] == "spawn":
        unsafe = _unsafe_to_fork()
        if unsafe:
            raise RuntimeError(f"refusing to fork: {unsafe}")
        pid = os.fork()
        if pid == 0:
            _become_kernel(request, [listener, connection], base_path)
        kernels[pid] = None
        reply = {"pid": pid}
    elif request["op"] == "poll":
        _reap(kernels)
        reply = {"returncode": kernels.get(request["pid"], -signal.SIGKILL)}
    else:
        reply = {"error": f"unknown op {request['op']!r}"}
    return reply


def _become_kernel(request, sockets, base_path) -> None:
    """In the forked child: turn into what `python -m ipykernel_launcher ARGS` would be, then run it."""
    code = 1
    try:
        for sock in sockets:  # the server's sockets stay the server's
            os.close(sock.fileno())
        os.setsid()  # its own process group, as jupyter_client's launcher does: interrupts and kills reach all of it
        _die_with_parent()
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        stdin, _ = os.pipe()  # like a launched kernel: stdin is a pipe that nobody writes to
        os.dup2(stdin, 0)
        os.close(stdin)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["JPY_PARENT_PID"] = str(os.getppid())  # the kernel exits if the server goes away
        sys.argv = [importlib.util.find_spec("ipykernel_launcher").origin, *request["argv"]]
        sys.path[:] = base_path
        numpy_random = sys.modules.get("numpy.random")
        if numpy_random is not None:  # `random` reseeds itself after fork; numpy's global state does not
            numpy_random.seed()
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


# ---------------------------------------------------------------- the worker's side

class ForkServer:
    """A running fork server, started by a grading worker; `close()` stops it and its kernels.

    It starts importing ipykernel at once; `preload(modules)` adds the assignment's modules in the
    background. Kernels are forked only after both, and only if the server is still safe to fork.
    """

    def __init__(self, env=None, python=sys.executable):
        self.python = python
        self.folder = tempfile.mkdtemp(prefix="grader-kernels-")
        self.socket_path = os.path.join(self.folder, "server.sock")
        self.process = subprocess.Popen([python, "-c", _BOOTSTRAP, __file__, self.socket_path],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.info: dict = {}
        self.problem = ""  # why kernels are started the normal way, if they are
        self.forked = 0
        self.fallbacks = 0
        self._started = False
        self._preloading: threading.Thread | None = None
        self._lock = threading.Lock()

    def _wait_started(self, timeout: float) -> None:
        with self._lock:
            if self._started:
                return
            readable, _, _ = select.select([self.process.stdout], [], [], timeout)
            line = self.process.stdout.readline() if readable else b""
            try:
                self.info.update(json.loads(line))
            except ValueError:
                self.problem = self.problem or f"the fork server did not start (exit code {self.process.poll()})"
            self._started = True

    def preload(self, modules) -> None:
        """Import these modules in the server, in a background thread; kernels wait for it."""
        def run():
            self._wait_started(120)
            if self.problem:
                return
            try:
                self.info.update(self._request(op="preload", modules=list(modules)))
            except (OSError, ValueError, RuntimeError) as error:
                self.info["unsafe"] = f"preloading failed: {error}"
            self.problem = self.info.get("unsafe", "")

        self._preloading = threading.Thread(target=run, daemon=True)
        self._preloading.start()

    def wait_ready(self, timeout: float = 300) -> bool:
        """Block until the server can fork kernels; False (see `problem`) when it cannot."""
        if self._preloading is not None:
            self._preloading.join(timeout)
        self._wait_started(timeout)
        return not self.problem

    def _request(self, **request) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(None if request["op"] == "preload" else 30)
            connection.connect(self.socket_path)
            connection.sendall((json.dumps(request) + "\n").encode())
            line = connection.makefile("r").readline()
        if not line:
            raise RuntimeError(f"the fork server gave no answer to {request['op']}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def spawn(self, argv, env, cwd) -> int:
        pid = self._request(op="spawn", argv=list(argv), env=dict(env), cwd=str(cwd))["pid"]
        self.forked += 1
        return pid

    def poll(self, pid: int) -> int | None:
        try:
            return self._request(op="poll", pid=pid)["returncode"]
        except (OSError, ValueError, RuntimeError):
            return -signal.SIGKILL  # the server is gone, and its kernels with it

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
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
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


_server: ForkServer | None = None
last_kernel = None  # the process of the kernel started last: why it died, when it did
on_launch = None  # called with each new kernel's pid (the grading worker tells its parent)


def _launcher_args(cmd, python) -> list[str] | None:
    """ARGS when cmd is `python -m ipykernel_launcher ARGS` for the server's interpreter, else None."""
    if len(cmd) < 3 or cmd[1:3] != ["-m", "ipykernel_launcher"]:
        return None
    try:
        same = os.path.samefile(cmd[0], python)
    except OSError:
        same = False
    return list(cmd[3:]) if same else None


@functools.cache
def _provisioner_class():
    from jupyter_client.provisioning import LocalProvisioner

    class WarmProvisioner(LocalProvisioner):
        """LocalProvisioner whose kernels are forked by the worker's fork server."""

        async def launch_kernel(self, cmd, **kwargs):
            global last_kernel
            server, args = _server, _launcher_args(cmd, _server.python if _server else sys.executable)
            pid = None
            if server is not None and args is not None and await asyncio.to_thread(server.wait_ready):
                cwd = kwargs.get("cwd") or os.getcwd()
                try:
                    pid = await asyncio.to_thread(server.spawn, args, kwargs.get("env") or dict(os.environ), cwd)
                except (OSError, ValueError, RuntimeError) as error:
                    server.problem = f"forking a kernel failed: {error}"
            if pid is None:
                if server is not None:
                    server.fallbacks += 1
                info = await super().launch_kernel(cmd, **kwargs)
            else:
                self.process = ForkedProcess(server, pid)
                self.pid = self.pgid = pid
                self.cwd = cwd
                info = self.connection_info
            last_kernel = self.process
            if on_launch is not None:
                on_launch(self.process.pid)
            return info

    return WarmProvisioner


class _Registration:
    """Quacks like the importlib.metadata.EntryPoint that KernelProvisionerFactory keeps per provisioner."""

    name = value = PROVISIONER_NAME
    group = "jupyter_client.kernel_provisioners"

    def load(self):
        return _provisioner_class()


def install(server: ForkServer | None) -> None:
    """Make this process's kernel managers start kernels through `server` (unless a kernelspec names
    its own provisioner); with None, kernels start normally but `last_kernel` is still kept."""
    global _server
    from jupyter_client.provisioning import KernelProvisionerFactory

    _server = server
    KernelProvisionerFactory.provisioners[PROVISIONER_NAME] = _Registration()
    KernelProvisionerFactory.instance().default_provisioner_name = PROVISIONER_NAME


def uninstall() -> None:
    """Back to jupyter_client's own default provisioner."""
    global _server
    from jupyter_client.provisioning import KernelProvisionerFactory

    _server = None
    factory = KernelProvisionerFactory.instance()
    factory.default_provisioner_name = factory._default_provisioner_name_default()
