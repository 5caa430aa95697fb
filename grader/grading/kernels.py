"""Kernels in the sandbox, with `import torch` paid once per grading worker.

nbgrader starts kernels through jupyter_client's documented extension point, a kernel provisioner
(`SandboxProvisioner`). With a warm fork server installed (`install`; `forkserver.ForkServer`,
started by each worker of `python -m grader autograde`), a kernel is a fresh fork of that server,
which runs in the sandbox and has imported ipykernel, torch and the grader once. Without one (stock
`nbgrader autograde` with the course's GuardedExecute, or `--no-warm`), each kernel is launched
through bwrap. Either way the kernel runs in a fresh `sandbox.Workspace`: a copy of the notebook's
folder (its cwd), a private temp folder and home, the Unix sockets of jupyter_client's IPC
transport (a sandbox has no network, so no TCP). nbclient and nbgrader's Execute run unchanged;
interrupts, timeouts, shutdown and kill work as for a normal kernel.

A kernel command that is not this interpreter's `python -m ipykernel_launcher` (another kernelspec)
is launched through bwrap rather than forked.

This file has no imports from the grader package: workers load it by path (grader/__init__.py
imports torch).
"""

import ast
import asyncio
import atexit
import contextlib
import functools
import importlib.util
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

PROVISIONER_NAME = "grader-sandbox"


def sibling(name: str):
    """grader/grading/<name>.py as module grader_<name>, loaded by path (the same object for every loader)."""
    key = f"grader_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


_forkserver = sibling("forkserver")
ForkServer, ForkedProcess = _forkserver.ForkServer, _forkserver.ForkedProcess


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


# ---------------------------------------------------------------- kernels in the sandbox

class SandboxedProcess:
    """A kernel launched through bwrap: bwrap's Popen, with the kernel's death by a signal told as such."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen

    def __getattr__(self, name):
        return getattr(self.popen, name)

    @staticmethod
    def _code(code):
        if code is not None and 128 < code < 128 + signal.NSIG:
            return -(code - 128)  # bwrap exits with 128 + N when its command died of signal N
        return code

    def poll(self):
        return self._code(self.popen.poll())

    def wait(self, timeout=None):
        return self._code(self.popen.wait(timeout))

    def kernel_pid(self) -> int | None:
        """The kernel's pid on this machine: the process that is pid 2 of the sandbox (bwrap's init is 1)."""
        sandbox = sibling("sandbox")
        return next((p for p in sandbox.descendants(self.popen.pid) if sandbox.ns_pids(p)[-1:] == [2]), None)


_server: ForkServer | None = None
_own_rerun_server: ForkServer | None = None
_workspaces: dict[str, object] = {}  # work folder -> Workspace, made by the grading code before a kernel starts
last_kernel = None  # the process of the kernel started last: why it died, when it did
on_launch = None  # called with each new kernel's pid on this machine (the grading worker tells its parent)


def new_workspace(source: str, server: ForkServer | None = None):
    """A fresh workspace for one notebook: in `server`'s sandbox folder (default: the installed warm server's),
    else in a folder of its own for a sandbox of its own; registered so that the provisioner uses it."""
    sandbox = sibling("sandbox")
    server = server or _server
    if server is not None:
        server.reset()  # nothing the previous notebook left may see this one's copy
        workspace = sandbox.Workspace(source, parent=server.folder, uid=server.uid, sandboxed=server.sandboxed)
    else:
        sandboxed = sandbox.require()
        workspace = sandbox.Workspace(source, uid=sandbox.allocate_uid() if sandboxed else None, sandboxed=sandboxed)
    _workspaces[workspace.work] = workspace
    return workspace


def release_workspace(workspace) -> None:
    _workspaces.pop(workspace.work, None)
    workspace.remove()


def rerun_server(timeout: float = 300) -> ForkServer:
    """The installed warm server, or one of this process's own (sandboxed, re-runs only), started once."""
    global _own_rerun_server
    if _server is not None and _server.wait_ready(timeout):
        return _server  # else (its preload started a thread, say) the re-run gets a server of its own
    if _own_rerun_server is None or _own_rerun_server.process.poll() is not None:
        _own_rerun_server = ForkServer(kernels=False, rerun=True)
        _own_rerun_server.preload([], rerun=True)
        atexit.register(_own_rerun_server.close)
    _own_rerun_server.wait_ready(timeout)
    return _own_rerun_server


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

    class SandboxProvisioner(LocalProvisioner):
        """LocalProvisioner whose kernels run in the sandbox: forked by the warm server, or launched through bwrap."""

        workspace = None
        own_workspace = False
        launched = None  # the SandboxedProcess of a kernel launched through bwrap

        async def pre_launch(self, **kwargs):
            km = self.parent
            cwd = os.path.realpath(kwargs.get("cwd") or os.getcwd())
            self.workspace = _workspaces.get(cwd)
            self.own_workspace = self.workspace is None
            if self.own_workspace:  # a kernel nobody prepared a workspace for (nbgrader's own Execute)
                self.workspace = await asyncio.to_thread(new_workspace, cwd)
            if self.workspace.sandboxed:
                km.transport, km.ip, km.cache_ports = "ipc", os.path.join(self.workspace.ipc, "kernel"), False
                km.connection_file = os.path.join(self.workspace.ipc, "kernel.json")
                kwargs["env"] = sibling("sandbox").process_env(kwargs.get("env") or os.environ, self.workspace)
            kwargs["cwd"] = self.workspace.work
            kwargs = await super().pre_launch(**kwargs)
            if self.workspace.sandboxed:
                sibling("sandbox").chown_tree(km.connection_file, self.workspace.uid)
                # Its parent is the sandbox's init: ipykernel must not take that for its launcher having died.
                kwargs["cmd"] = [*kwargs["cmd"], "--IPKernelApp.parent_handle=1"]
            return kwargs

        async def launch_kernel(self, cmd, **kwargs):
            global last_kernel
            server, args = _server, _launcher_args(cmd, _server.python if _server else sys.executable)
            pid = None
            if server is not None and args is not None and await asyncio.to_thread(server.wait_ready):
                try:
                    pid = await asyncio.to_thread(server.spawn, args, kwargs.get("env") or dict(os.environ),
                                                  kwargs["cwd"])
                except (OSError, ValueError, RuntimeError) as error:
                    server.problem = f"forking a kernel failed: {error}"
            if pid is not None:
                self.process = ForkedProcess(server, pid)
                self.pid, self.pgid, self.cwd = pid, None, kwargs["cwd"]  # signals go through the server
                info, host = self.connection_info, await asyncio.to_thread(server.host_pid, pid)
            else:
                if server is not None:
                    server.fallbacks += 1
                if self.workspace.sandboxed:
                    box = sibling("sandbox").Sandbox(writable=(self.workspace.path,), uid=self.workspace.uid)
                    cmd = box.command(cmd, chdir=kwargs["cwd"])
                    kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                info = await super().launch_kernel(cmd, **kwargs)
                if self.workspace.sandboxed:
                    sibling("sandbox").relay(self.process.stdout.fileno())
                    self.process = self.launched = SandboxedProcess(self.process)
                host = self.pid
            last_kernel = self.process
            if on_launch is not None and host is not None:
                on_launch(host)
            return info

        async def send_signal(self, signum: int) -> None:
            kernel = self.launched.kernel_pid() if self.launched is not None and signum != signal.SIGKILL else None
            if kernel is not None:  # bwrap would die of it: send it to the kernel's process group in the sandbox
                with contextlib.suppress(OSError):
                    os.killpg(os.getpgid(kernel), signum)
                return
            await super().send_signal(signum)

        async def cleanup(self, restart: bool = False) -> None:
            await super().cleanup(restart)
            if self.own_workspace and self.workspace is not None and not restart:
                release_workspace(self.workspace)
                self.workspace = None

    return SandboxProvisioner


@functools.cache
def kernel_manager_class():
    """AsyncKernelManager whose kernels always start through SandboxProvisioner (GuardedExecute uses it)."""
    from jupyter_client.manager import AsyncKernelManager

    class SandboxedKernelManager(AsyncKernelManager):
        async def _async_pre_start_kernel(self, **kw):
            if self.provisioner is None:
                self.kernel_id = self.kernel_id or kw.pop("kernel_id", str(uuid.uuid4()))
                self.provisioner = _provisioner_class()(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec,
                                                        parent=self)
            return await super()._async_pre_start_kernel(**kw)

        pre_start_kernel = _async_pre_start_kernel

    return SandboxedKernelManager


class _Registration:
    """Quacks like the importlib.metadata.EntryPoint that KernelProvisionerFactory keeps per provisioner."""

    name = value = PROVISIONER_NAME
    group = "jupyter_client.kernel_provisioners"

    def load(self):
        return _provisioner_class()


def install(server: ForkServer | None) -> None:
    """Make this process's kernel managers start kernels in the sandbox, forked by `server` when there is one
    (unless a kernelspec names its own provisioner)."""
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
