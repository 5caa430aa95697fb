"""The re-run's child process: one notebook's cells again, out of the kernel, and a verdict per cell.

`rerun.Rerunner` asks the sandboxed warm server (`forkserver`), which imports torch, the grader
and this module once, for a fresh fork per notebook; `WATCH` (what the checks rely on, see
`integrity`) is taken there, before any student code exists. The fork, not dumpable, reads its
job from a pipe and runs `serve`:

1. it binds every function it will need to local variables, takes the job (cells, paths, the
   key that signs its reports) and empties it;
2. it moves into the notebook's folder, sends its own output to /dev/null, gives the cells a
   fresh ``__main__`` module and a private temp folder, compiles every cell and installs the
   audit hook of `guard` (files, processes, ctypes, frames...);
3. it runs, in order, the locked cells (set-up, demos, tests with their hidden part) and the
   student's answer cells. Before each locked cell, the names that locked cells bound and that
   this cell uses are bound again (an answer cell cannot rebind ``check_*`` or ``torch``); at every
   cell boundary the watched state is compared with the pristine one;
4. it reports, for each cell, ``start`` and then its outcome, each message signed with an HMAC
   under a key that only this function's locals hold: the parent rejects anything else written
   to the pipe. Student code runs in this same process, so the key's protection is the audit
   hook's refusal to hand out frames, ctypes and gc walks (docs/grading-security.md says what
   that does not cover).

Everything here is run by the re-run only; it runs no code of the student's outside `exec`.
"""

import builtins
import posix
import sys
import types

import _hashlib
import _struct

from . import guard, integrity

def warm_up() -> None:
    """Run torch's lazy initialisation here, once, so that it does not look like patching later.

    Importing torch._dynamo rebinds torch.manual_seed (torch does it on the first optimizer step
    otherwise); the first optimizer of each class wraps its class's `step`; profilers and hooks set
    module state on first use. No forward or backward pass: torch's CPU kernels start a thread pool,
    and a process with threads is not safe to fork (the child hangs in its first parallel op).
    """
    import copy

    import torch
    from torch import nn

    from ..checks.export import install_dynamo_patches

    install_dynamo_patches()  # imports torch._dynamo, which rebinds torch.manual_seed

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 2))
    model.register_forward_hook(lambda *args: None).remove()
    for kind in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad):
        optimizer = kind(model.parameters(), lr=0.1)
        optimizer.zero_grad()
        optimizer.step()  # no gradients yet: a no-op that goes through the step wrappers
    copy.deepcopy(model).to(torch.float64).eval()
    model.load_state_dict(model.state_dict())
    copy.deepcopy(model).to("meta")


warm_up()
WATCH = integrity.Watch()  # taken at import, in the pristine fork server
TRUSTED_IDS = WATCH.trusted_ids | frozenset(map(id, (guard.resolve, integrity.capture, integrity.unchanged)))
LIMIT = 4000  # characters of an error message sent back


class _IPythonStub:
    """What `get_ipython()` gives the re-run: magics and shell escapes in an answer cell do nothing here."""

    def run_line_magic(self, *args, **kwargs):
        return None

    def run_cell_magic(self, *args, **kwargs):
        return None

    def system(self, *args, **kwargs):
        return None

    def getoutput(self, *args, **kwargs):
        return []

    def __getattr__(self, name):
        raise AttributeError(f"get_ipython().{name} is not available when the grader re-runs your cells")


_IPYTHON = _IPythonStub()


def get_ipython():
    return _IPYTHON


def display(*objects, **kwargs):
    """IPython's display(): the re-run shows nothing."""


def code_objects(code, _type=type, _CodeType=types.CodeType):
    """`code` and every code object nested in its constants (functions, classes, comprehensions)."""
    found, todo = [], [code]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(c for c in current.co_consts if _type(c) is _CodeType)
    return found


def serve(job, conn):
    """Run the job's cells and report on `conn`; never returns (the process ends with os._exit)."""
    # 1. Everything this function calls, bound now, before any student code runs.
    _exec, _compile, _type, _str, _len, _id = exec, compile, type, str, len, id
    _dict, _list, _set, _frozenset, _BaseException, _builtins = dict, list, set, frozenset, BaseException, builtins
    _safe_describe, limit = safe_describe, LIMIT
    _write, _exit, _dup2, _open_fd, _close = posix.write, posix._exit, posix.dup2, posix.open, posix.close
    _pack, _digest = _struct.pack, _hashlib.hmac_digest
    _encode, _join = str.encode, bytes.join
    _type_name = type.__dict__["__name__"].__get__
    _exc_str = BaseException.__str__
    _capture, _unchanged, _describe = integrity.capture, integrity.unchanged, WATCH.describe
    _code_objects = code_objects
    data, trusted_ids = WATCH.data, TRUSTED_IDS
    key = job.pop("key")
    fd = conn.fileno()
    cells, notebook_dir, tmp_dir, policy = job["cells"], job["notebook_dir"], job["tmp_dir"], job["policy"]
    check_integrity, use_guard = job.get("integrity", True), job.get("guard", True)
    job.clear()

    def send(*fields):
        message = _join(b"\x1f", fields)
        frame = _digest(key, message, "sha256") + message
        frame = _pack("!i", _len(frame)) + frame
        try:
            while frame:
                frame = frame[_write(fd, frame):]
        except _BaseException:
            _exit(3)  # the channel was closed or replaced: the parent scores what is missing as failed

    def text(value):
        value = value if _type(value) is _str else "<not a string>"
        return _encode(value[:limit], "utf-8", "replace")

    def describe_error(error):
        try:
            message = _exc_str(error)
        except _BaseException:
            message = "<the error's message could not be read>"
        return _type_name(_type(error)), message

    # 2. The process the cells run in.
    null = _open_fd("/dev/null", posix.O_RDWR)
    _dup2(null, 0)
    _dup2(null, 1)
    _dup2(null, 2)
    sys.stdin = sys.stdout = sys.stderr = open(null, "w+", closefd=False)
    posix.chdir(notebook_dir)
    sys.path[:0] = [notebook_dir]
    posix.environ[b"TMPDIR"] = _encode(tmp_dir, "utf-8", "surrogateescape")
    sys.modules["tempfile"].tempdir = tmp_dir
    for variable, folder in guard.TORCH_CACHE_VARIABLES.items():
        sys.modules["os"].environ[variable] = tmp_dir + "/" + folder
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    namespace = main.__dict__
    namespace.update(__builtins__=builtins, get_ipython=get_ipython, display=display)

    program, locked_code_ids = [], _set()
    for index, (kind, grade_id, source) in enumerate(cells):
        filename = f"<{'answer' if kind == 'answer' else 'locked'} cell {grade_id}>"
        try:
            code = _compile(source, filename, "exec")
        except _BaseException as error:  # a syntax error in an answer cell (locked cells compile)
            program.append((index, kind, grade_id, None, (), describe_error(error)))
            continue
        nested = _code_objects(code)
        names = _set()
        for c in nested:
            names.update(c.co_names)
        if kind != "answer":
            locked_code_ids.update(_id(c) for c in nested)
        program.append((index, kind, grade_id, code, _frozenset(names), None))

    refusals: list = []
    if use_guard:
        guard.install(read_roots=policy["read"], write_roots=policy["write"], deny_roots=policy["deny"],
                      protect_frames=True, trusted_code_roots=policy["trusted_code"],
                      locked_code_ids=locked_code_ids, stop_code_ids={_id(serve.__code__)},
                      trusted_ids=trusted_ids, refusals=refusals)
    baseline = _capture(data) if check_integrity else None

    # 3. The cells, in order.
    locked_bindings: dict = {}
    missing = object()
    tampered = None  # the first description of a change to trusted state, once seen
    seen_refusals = 0
    send(b"ready")
    for index, kind, grade_id, code, names, compile_error in program:
        send(b"start", b"%d" % index)
        notes = []
        if check_integrity and tampered is None and not _unchanged(data, baseline):
            tampered = _safe_describe(_describe, data, baseline) + (f" (first seen before cell {grade_id})",)
        if kind != "answer":
            for name in names:
                bound = locked_bindings.get(name, missing)
                if bound is not missing and namespace.get(name, missing) is not bound:
                    notes.append(f"`{name}` was bound again by other code: the grader restored the value the "
                                 "locked cells gave it")
                    namespace[name] = bound
            namespace["__builtins__"] = _builtins
            before = _dict(namespace)
        error = compile_error
        if code is not None:
            try:
                _exec(code, namespace)
            except _BaseException as raised:
                error = describe_error(raised)
        if kind != "answer":
            for name, value in _list(namespace.items()):
                if _type(name) is _str and before.get(name, missing) is not value:
                    locked_bindings[name] = value
        if check_integrity and tampered is None and not _unchanged(data, baseline):
            tampered = _safe_describe(_describe, data, baseline) + (f" (first seen after cell {grade_id})",)
        if _len(refusals) > seen_refusals:
            notes += [message for _, message in refusals[seen_refusals:seen_refusals + 3]]
            seen_refusals = _len(refusals)
        status = b"error" if error is not None else b"ok"
        if kind == "test" and tampered is not None:
            status = b"tampered"
        name, message = error if error is not None else ("", "")
        details = "\n".join(tampered) if status == b"tampered" else message
        send(b"end", b"%d" % index, status, text(name), text(details), text("\n".join(notes)))
    send(b"done")
    _exit(0)


def safe_describe(describe, data, baseline) -> tuple:
    """The changes in words; the flag is already decided, so a failure here only loses the words."""
    try:
        return tuple(describe(data, baseline))
    except BaseException:
        return ("the grader's or torch's state changed",)
