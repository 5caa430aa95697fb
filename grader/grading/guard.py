"""What graded code may do: a PEP 578 audit hook, installed before any student code runs.

Two places run a student's code at grading time, and both install this hook first (an audit hook
cannot be removed once installed):

* the notebook's kernel, started by nbgrader's Execute (see `rerun.GuardedExecute`);
* the re-run, a fresh process that runs the student's answer cells and the locked cells again, out
  of the kernel (see `rerun_child`), with ``protect_frames=True``.

The policy, everywhere:

* files: a path is readable when the longest root that contains it is in ``read_roots`` or
  ``write_roots``, writable when it is in ``write_roots``; a longer ``deny_roots`` entry wins
  (the course folder: solutions, source notebooks, the gradebook, other students' work), and
  ``/proc/*/mem``-like files are never readable, nor a process's pipes, sockets and anonymous files
  through ``/proc/*/fd/`` (an fd link to a real file resolves to that file and its root decides);
* relative paths: the "open" audit event does not say which directory a ``dir_fd`` names, so a
  relative path may not climb (``..``), and only a folder under ``write_roots`` may be opened as a
  file descriptor: a relative path then stays inside a writable folder, whatever ``dir_fd`` is;
* no SQLite at all (an in-memory database can ``ATTACH`` a file with no audit event of its own);
* no sockets to anywhere but a Unix socket under ``write_roots`` (connect, bind, sendto): no
  network, and no fork server of the grader's (multiprocessing's, or the warm kernels');
* no new processes (subprocess, os.system, exec*, spawn*, posix_spawn, fork, _posixsubprocess)
  and no signals to other processes, unless ``processes`` (the OS sandbox holds them: DataLoader
  workers, torch.compile's compiler); no symbolic or hard links;
* no ctypes (dlopen, dlsym, from_address, string_at...), since it reads and writes any memory;
* no new audit hooks, and no gc.get_objects/get_referrers/get_referents.

In the re-run only (``protect_frames``), because the re-run's own state must stay out of reach:

* never: tracing or profiling hooks, ``sys._current_frames``;
* while code of the student is on the call stack (a frame whose code neither comes from a file
  under ``trusted_code_roots`` nor was compiled from a locked cell): no frame objects
  (``sys._getframe``, ``tb_frame``, ``gi_frame``...), refused with a ValueError, which the
  standard library's own callers (namedtuple, enum, typing, logging) already read as "no frame";
  except for traceback's text-only consumers and torch's own tracing modes (see `install`);
  no change of ``__code__`` (any function), nor of ``__defaults__``/``__kwdefaults__``/``__bases__``/
  ``__class__`` of an object in ``trusted_ids``;
* when the student's own code asks (the frame that raised the event is the student's): no code
  objects built by hand (``types.CodeType``, ``code.replace``, ``marshal``) or compiled under a
  trusted file name (torch.export and dynamo build code objects while tracing student code: allowed).

The hook runs no code that the graded code could have replaced: every name it uses is bound when
`install` runs (locals, closures and default arguments of functions that nothing else references),
it compares only objects of exact built-in types, and it raises built-in exception types
(PermissionError, and ValueError for frames). Each refusal is appended to ``refusals`` as
``(event, message, where)`` for the grader's report (where: the file and line that asked).

This module imports only the standard library: the kernel loads it by path, before torch.
"""

import _stat
import _thread
import posix
import sys

WRITE_FLAGS = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND
PROCESS_EVENTS = frozenset({
    "subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
    "os.startfile", "pty.spawn",
})
LIST_EVENTS = frozenset({"os.listdir", "os.scandir"})
# event -> (indexes of the paths it reads, indexes of the paths it changes)
PATH_EVENTS = {
    "os.remove": ((), (0,)), "os.rmdir": ((), (0,)), "os.rename": ((), (0, 1)), "os.mkdir": ((), (0,)),
    "os.truncate": ((), (0,)), "os.chmod": ((), (0,)), "os.chown": ((), (0,)), "os.utime": ((), (0,)),
    "os.chflags": ((), (0,)), "os.lchflags": ((), (0,)), "os.setxattr": ((), (0,)), "os.removexattr": ((), (0,)),
    "os.getxattr": ((0,), ()), "os.listxattr": ((0,), ()),
    "shutil.copyfile": ((0,), (1,)), "shutil.copymode": ((0,), (1,)), "shutil.copystat": ((0,), (1,)),
    "shutil.copytree": ((0,), (1,)), "shutil.move": ((0,), (0, 1)), "shutil.rmtree": ((), (0,)),
    "shutil.chown": ((), (0,)), "shutil.make_archive": ((), (0,)), "shutil.unpack_archive": ((0,), (1,)),
}
SOCKET_EVENTS = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"})
ALWAYS_REFUSED = {
    "os.symlink": "create symbolic links", "os.link": "create hard links", "sys.addaudithook": "add audit hooks",
    "sqlite3.connect": "open a database (SQLite)", "sqlite3.enable_load_extension": "load SQLite extensions",
    "gc.get_objects": "walk the interpreter's objects (gc)", "gc.get_referrers": "walk the interpreter's objects (gc)",
    "gc.get_referents": "walk the interpreter's objects (gc)",
}
SECRET_PROC_FILES = frozenset({"mem", "environ", "pagemap", "kcore", "syscall", "auxv"})
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
TRACING_EVENTS = frozenset({"sys.settrace", "sys.setprofile", "sys._current_frames", "sys._current_exceptions"})
CODE_EVENTS = frozenset({"code.__new__", "marshal.loads", "marshal.load"})
GUARDED_ATTRIBUTES = frozenset({"__code__", "__defaults__", "__kwdefaults__", "__bases__", "__class__"})
# torch's cache folders, set to sub-folders of graded code's temporary folder: an inherited value (any process that
# compiled with torch sets TORCHINDUCTOR_CACHE_DIR for its children) would point outside the writable roots.
TORCH_CACHE_VARIABLES = {"TORCHINDUCTOR_CACHE_DIR": "torchinductor", "TRITON_CACHE_DIR": "triton"}
# Extension modules that, loaded afresh, would bring back what install() took away.
BLOCKED_IMPORTS = frozenset({"_posixsubprocess", "_ctypes"})
PROCESS_IMPORTS = frozenset({"_posixsubprocess"})  # allowed again when processes are


def resolve(path, cwd=None, _lstat=posix.lstat, _readlink=posix.readlink, _getcwd=posix.getcwd,
            _islink=_stat.S_ISLNK, _str=str, _bytes=bytes, _type=type, _OSError=OSError,
            _PermissionError=PermissionError):
    """The absolute path with '.', '..' and symbolic links resolved (posixpath.realpath, from C functions only)."""
    if _type(path) is _bytes:
        path = _bytes.decode(path, "utf-8", "surrogateescape")
    if _type(path) is not _str:
        raise _PermissionError("the grader accepts file paths as str or bytes only")
    if not _str.startswith(path, "/"):
        path = (cwd or _getcwd()) + "/" + path
    parts = [p for p in _str.split(path, "/") if p and p != "."]
    parts.reverse()
    done: list = []
    hops = 0
    while parts:
        part = parts.pop()
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = "/" + "/".join(done) + ("/" if done else "") + part
        try:
            mode = _lstat(candidate).st_mode
        except _OSError:
            done.append(part)
            continue
        if _islink(mode):
            hops += 1
            if hops > 40:
                raise _PermissionError(f"too many symbolic links in {path}")
            target = _readlink(candidate)
            if _str.startswith(target, "/"):
                done = []
            more = [p for p in _str.split(target, "/") if p and p != "."]
            more.reverse()
            parts.extend(more)
            continue
        done.append(part)
    return "/" + "/".join(done)


def frame_consumers() -> dict:
    """Standard-library functions that turn the current stack into text and never hand a frame on.

    torch.manual_seed calls traceback.format_stack (CUDA's lazy seeding), so an answer cell that
    seeds must not be refused. Each entry maps the id of a function's code to the namespace
    entries it calls with frames; the hook lets the function have its frame only while every one
    of them is still the original object.
    """
    import traceback

    summary = vars(traceback.StackSummary)
    needs = [(vars(traceback), name, getattr(traceback, name)) for name in ("walk_stack", "extract_stack", "StackSummary")]
    needs += [(summary, name, summary[name]) for name in ("extract", "_extract_from_extended_frame_gen")]
    return {id(traceback.format_stack.__code__): tuple(needs), id(traceback.extract_stack.__code__): tuple(needs)}


def install(*, read_roots, write_roots, deny_roots=(), protect_frames=False, trusted_code_roots=(),
            locked_code_ids=None, stop_code_ids=(), trusted_ids=frozenset(), refusals=None, log_fd=None,
            processes=False, what="your code"):
    """Add the audit hook; from now on this process runs under the policy in the module docstring.

    ``locked_code_ids`` is a set that the re-run fills with the ids of the code objects it compiled
    from locked cells; the walk down the stack stops at a frame whose code is in ``stop_code_ids``
    (the re-run's own loop); ``trusted_ids`` are the ids of the grader's, torch's and the standard
    library's functions, classes and modules; ``processes`` lets the code start processes and signal
    them (only where an OS sandbox holds them). Returns the list of refusals (``refusals`` if given);
    each refusal is also written as a line to ``log_fd``, a file descriptor opened before, on a file
    the graded code cannot open (the grader reads it afterwards, even if the code hid the error).
    """
    # Everything the hook uses, bound here: later changes to this module or to builtins cannot reach it.
    _type, _str, _int, _len, _id = type, str, int, len, id
    _PermissionError, _ValueError = PermissionError, ValueError
    _getframe, _ident, _resolve, _write, _encode = sys._getframe, _thread.get_ident, resolve, posix.write, str.encode
    _OSError, _TypeError, _stat_path, _isdir, _bytes = OSError, TypeError, posix.stat, _stat.S_ISDIR, bytes
    write_flags, process_events, list_events = WRITE_FLAGS, PROCESS_EVENTS, LIST_EVENTS
    path_events, always_refused, secret_proc_files = dict(PATH_EVENTS), dict(ALWAYS_REFUSED), SECRET_PROC_FILES
    frame_attributes, tracing_events, code_events = FRAME_ATTRIBUTES, TRACING_EVENTS, CODE_EVENTS
    guarded_attributes, socket_events = GUARDED_ATTRIBUTES, SOCKET_EVENTS
    blocked_imports = BLOCKED_IMPORTS - PROCESS_IMPORTS if processes else BLOCKED_IMPORTS
    process_events = frozenset() if processes else process_events
    roots = ([(resolve(r), "read") for r in read_roots] + [(resolve(r), "write") for r in write_roots]
             + [(resolve(r), "deny") for r in deny_roots])
    roots = tuple((r if r.endswith("/") else r + "/", _len(r.rstrip("/")), kind) for r, kind in roots)
    trusted_code_roots = tuple(r.rstrip("/") + "/" for r in trusted_code_roots) + ("<frozen ",)
    locked_code_ids = set() if locked_code_ids is None else locked_code_ids
    stop_code_ids = frozenset(stop_code_ids)
    consumers = frame_consumers() if protect_frames else {}
    mode_handlers = frozenset({"__torch_function__", "__torch_dispatch__"})
    torch_module = sys.modules.get("torch")
    torch_root = (torch_module.__file__.rpartition("/")[0] + "/") if torch_module is not None else ""
    dynamo_entry = torch_root + "_dynamo/convert_frame.py"  # called by the interpreter with the frame to compile
    import_system = "<frozen importlib._bootstrap>"  # a module's own code runs under it while it is imported
    inductor_loader = torch_root + "_inductor/runtime/compile_tasks.py"  # runs the modules inductor generates
    trusted_ids = frozenset(trusted_ids)
    refusals = [] if refusals is None else refusals
    own_pid = posix.getpid()
    busy: set = set()

    def allowed(path, write):
        if _type(path) is _int or path is None:
            return True  # an open file descriptor, or listdir()'s current folder
        if climbs(path):
            return False  # relative to a dir_fd the hook cannot see: it must not leave that folder
        where = _resolve(path)
        if _str.startswith(where, "/proc/") and (_str.rpartition(where, "/")[2] in secret_proc_files
                                                 or "/fd/" in where or "/map_files/" in where):
            return False  # an fd link that `resolve` left in /proc leads to a pipe, socket or anonymous file
        best, verdict = -1, "deny"
        probe = where + "/"
        for root, length, kind in roots:
            if _str.startswith(probe, root) and length > best:
                best, verdict = length, kind
            elif length == best and kind == "deny" and _str.startswith(probe, root):
                verdict = "deny"
        return verdict == "write" or (verdict == "read" and not write)

    def climbs(path):
        text = _bytes.decode(path, "utf-8", "surrogateescape") if _type(path) is _bytes else path
        return _type(text) is _str and not _str.startswith(text, "/") and ".." in _str.split(text, "/")

    def directory(path):
        try:
            return _isdir(_stat_path(path).st_mode)
        except (_OSError, _TypeError, _ValueError):
            return False

    def socket_allowed(address):
        if address is None:
            return True  # a connected socket: no new destination
        if _type(address) is _bytes:
            address = _bytes.decode(address, "utf-8", "surrogateescape")
        if _type(address) is not _str or not _str.startswith(address, "/"):
            return False  # the network, or an abstract Unix socket
        return allowed(address, True)

    def student_on_stack(frames_for=None):
        """Is code of the student's on the stack below the hook (down to the re-run's loop)?

        With ``frames_for`` (a frame request), three requests are let through: a trusted consumer
        that turns frames into text, asking with its callees intact; torch asking while it traces
        the student's code (a ``__torch_function__``/``__torch_dispatch__`` of torch's, or dynamo's
        frame conversion, sits between the request and the newest student frame): torch.export and
        torch.cond record where a guard came from; and a trusted module asking while it is imported
        (the import system sits between: torch.library records which file registered an operator
        when torch.compile imports its backends). The frame goes to torch, not back to student code.
        A module that inductor generated counts as torch's while inductor's loader runs it (its
        caller is that loader); anywhere else, code from a writable folder is the student's.
        """
        frame = _getframe(2)  # the frame that raised the event (1 is the hook itself)
        if frames_for is not None and frame is not None:
            needs = consumers.get(_id(frame.f_code))
            if needs is not None:
                for namespace, key, original in needs:
                    if namespace.get(key) is not original:
                        break
                else:
                    return False
        handled = False
        while frame is not None:
            code = frame.f_code
            if _id(code) in stop_code_ids:
                return False
            filename = code.co_filename
            if not _str.startswith(filename, trusted_code_roots) and _id(code) not in locked_code_ids \
                    and not generated_by_torch(frame):
                return not (frames_for is not None and handled)
            if (torch_root and ((code.co_name in mode_handlers and _str.startswith(filename, torch_root))
                                or filename == dynamo_entry)) or filename == import_system:
                handled = True
            frame = frame.f_back
        return False

    def generated_by_torch(frame):
        """A module inductor wrote to its cache and is running now (its caller is inductor's loader): torch's code."""
        caller = frame.f_back
        return (frame.f_code.co_name == "<module>" and caller is not None and caller.f_code is not None
                and caller.f_code.co_filename == inductor_loader and caller.f_code.co_name == "_reload_python_module")

    def student_asked():
        """Is the frame that raised the event the student's own code (not torch or the library it called)?"""
        frame = _getframe(2)
        if frame is None:
            return False
        code = frame.f_code
        return not _str.startswith(code.co_filename, trusted_code_roots) and _id(code) not in locked_code_ids

    def refuse(event, detail, error=_PermissionError):
        message = f"the grader does not let {what} {detail} while it is graded"
        asker = _getframe(2)  # the code that raised the event (1 is the hook), for the instructor's log
        refusals.append((event, message, f"{asker.f_code.co_filename}:{asker.f_lineno}" if asker is not None else "?"))
        if log_fd is not None:
            try:
                _write(log_fd, _encode(message.replace("\n", " ") + "\n", "utf-8", "replace"))
            except _OSError:
                pass  # the graded code closed the log: the refusal still stands
        raise error(message)

    def shown(path):
        return path if _type(path) is _str else "a path" if _type(path) is not _bytes else _bytes.decode(path, "utf-8", "replace")

    def hook(event, args):
        if _type(event) is not _str or event == "builtins.id":
            return  # `id` is by far the most frequent event: leave at once
        me = _ident()
        if me in busy:
            return  # an event raised by the hook's own work
        busy.add(me)
        try:
            if event == "open":
                path, flags = args[0], args[2]
                write = (flags & write_flags) if _type(flags) is _int else True
                if not allowed(path, write):
                    refuse(event, f"{'write' if write else 'read'} {shown(path)}")
                if _type(path) is not _int and not write and directory(path) and not allowed(path, True):
                    refuse(event, f"open the folder {shown(path)} (only your own folders)")
            elif event in list_events:
                path = args[0] if args else None
                if not allowed(path, False):
                    refuse(event, f"list the folder {shown(path)}")
            elif event in path_events:
                reads, writes = path_events[event]
                for i in reads:
                    if i < _len(args) and not allowed(args[i], False):
                        refuse(event, f"read {shown(args[i])}")
                for i in writes:
                    if i < _len(args) and not allowed(args[i], True):
                        refuse(event, f"change {shown(args[i])}")
            elif event in process_events:
                refuse(event, "start another process")
            elif event == "os.kill" or event == "os.killpg":
                if not processes and not (event == "os.kill" and _type(args[0]) is _int and args[0] == own_pid):
                    refuse(event, "send signals to other processes")
            elif event in socket_events:
                if not socket_allowed(args[1] if _len(args) > 1 else None):
                    refuse(event, "use the network or another program's socket")
            elif _str.startswith(event, "ctypes."):
                refuse(event, "use ctypes (it reads and writes any memory)")
            elif event in always_refused:
                refuse(event, always_refused[event])
            elif event == "import":
                if _type(args[0]) is not _str or args[0] in blocked_imports:
                    refuse(event, f"load the module {shown(args[0])} again")
            elif protect_frames:
                if event in tracing_events:
                    refuse(event, f"call {event} (it would show the grader's own state)")
                elif event == "sys._getframe" or (event == "object.__getattr__" and _type(args[1]) is _str
                                                   and args[1] in frame_attributes):
                    if student_on_stack(frames_for=event):
                        refuse(event, "inspect call-stack frames", _ValueError)
                elif event in code_events:
                    if student_asked():  # torch.export and dynamo build code objects on the student's behalf
                        refuse(event, "build code objects by hand")
                elif event == "compile":
                    filename = args[1]
                    if (_type(filename) is not _str or _str.startswith(filename, trusted_code_roots)) \
                            and student_asked():
                        refuse(event, "compile code under the file name of the grader's own code")
                elif event == "object.__setattr__" and _type(args[1]) is _str and args[1] in guarded_attributes:
                    if (args[1] == "__code__" or _id(args[0]) in trusted_ids) and student_on_stack():
                        refuse(event, f"change {args[1]} of the grader's, torch's or Python's own objects")
        finally:
            busy.discard(me)

    if not processes:
        _disable_posixsubprocess()
    sys.addaudithook(hook)
    return refusals


def _disable_posixsubprocess():
    """_posixsubprocess.fork_exec starts processes without an audit event of its own: take it away."""
    module = sys.modules.get("_posixsubprocess")
    if module is None:
        import _posixsubprocess as module

    def fork_exec(*args, _error=PermissionError, **kwargs):
        raise _error("the grader does not let your code start another process while it is graded")

    module.fork_exec = fork_exec
