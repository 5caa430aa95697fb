"""Checks on ``torch.export`` (unit 06).

``check_export_agrees(model, example, batch_sizes)``: ``torch.export.export`` with a dynamic batch
dimension succeeds, and the exported program agrees with eager ``forward`` for every batch size. Export
errors (specialised sizes, data-dependent branches, torch.cond mistakes) are explained in the student's
terms. ``install_dynamo_patches`` is the re-run's: torch's one-time set-up for torch.cond, done before
any graded cell.
"""

import contextlib
import inspect
import logging
import re
import sys

import torch

from .runner import SEED, _build, _check, _outputs
from .diagnose import describe_error, explain_error, type_name
from .report import fail, plural

# The exported graph runs the same kernels as eager, sometimes in another order.
EXPORT_AGREEMENT = {"rtol": 1e-5, "atol": 1e-6}


# --- torch.export inside a graded notebook: no stderr, and nothing the grading defences read as tampering ---

def install_dynamo_patches() -> None:
    """Run torch's one-time set-up for torch.cond and torch.compile now (the re-run's fork server calls it).

    The first function that dynamo compiles (torch.cond does, even in eager mode, for a tensor predicate) patches torch:
    it wraps the optimizers' `_init_group` and fused kernels, `torch.fx` tracing and `torch.jit.trace`, and
    `nn.Module.__init__`/`__setstate__` (`TorchPatcher.patch`, `install_generation_tagging_init`). The re-run
    compares torch's namespaces with a copy taken in its pristine fork server, and would read these patches, made
    in the middle of a graded cell, as tampering. Both functions are idempotent, so torch's own later call changes
    nothing. A kernel needs none of this (nothing there compares), so `import grader` does not import dynamo.
    """
    import torch._dynamo  # noqa: F401
    from torch._dynamo.eval_frame import TorchPatcher
    from torch._dynamo.mutation_guard import install_generation_tagging_init

    TorchPatcher.patch()
    install_generation_tagging_init()


@contextlib.contextmanager
def _no_cache_traces():
    """Take back the `__slotnames__` caches that torch.export leaves on torch's classes.

    Export copies objects of many torch classes, and the first copy of each caches `__slotnames__` on its class
    (copyreg). The grading defences watch torch's classes, and a new class attribute looks like patching; the
    cache holds nothing that copyreg cannot compute again, so the classes go back to how they were.
    """
    before = {id(cls) for cls in _torch_classes() if "__slotnames__" in vars(cls)}
    try:
        yield
    finally:
        for cls in _torch_classes():
            if id(cls) not in before and "__slotnames__" in vars(cls):
                with contextlib.suppress(AttributeError, TypeError):
                    delattr(cls, "__slotnames__")


@contextlib.contextmanager
def _frames_may_be_refused():
    """Let torch read "no frame" where a frame is refused, as the standard library does.

    torch.export asks for the current stack frame (inspect.currentframe) to name the user's line in its messages.
    The grading defences refuse frames while a student's code is on the stack, with a ValueError that torch does
    not expect. Here a refused frame becomes None, which torch handles; where nothing refuses (a plain kernel),
    nothing changes.
    """
    original = inspect.currentframe

    def currentframe():
        try:
            return sys._getframe(1)
        except ValueError:
            return None

    inspect.currentframe = currentframe
    try:
        yield
    finally:
        inspect.currentframe = original


def _torch_classes() -> list[type]:
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "torch" or name.startswith("torch.")):
            continue
        for value in list(getattr(module, "__dict__", {}).values()):
            if issubclass(type(value), type):  # not isinstance: some torch objects warn when asked for __class__
                found[id(value)] = value
    return list(found.values())


@contextlib.contextmanager
def _silent_logs():
    """torch logs some export diagnostics through `logging`, whose handlers write to the stderr they found at
    import time (quiet() cannot redirect them): mute them while the check exports. A failed export logs at ERROR
    level ("... is unsupported"), before raising the error the check explains."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


# --- torch.export: a dynamic batch, compared with eager ------------------------------------------------

_COND_HINT = ("Write the branch with torch.cond(pred, true_fn, false_fn, (h,)): export keeps both branches and picks "
              "one at run time. Use a size as the predicate (x.shape[0] > 1, not len(x), which is a plain int), and "
              "let each branch return a new tensor (h.clone(), not h itself)")


def explain_export_error(error: BaseException) -> tuple[str, str]:
    """(problem, hint) for an exception from torch.export.export, in the student's terms."""
    text = str(error)
    first = describe_error(error)
    constant = re.search(r"specialized it to be a constant \((\d+)\)", text)
    if constant:
        return (f"torch.export.export refused a dynamic batch: forward's code fixed the batch size to "
                f"{constant.group(1)} (Constraints violated)",
                "export traces forward on fake tensors shaped like the example and records what Python did; "
                "code that needs the exact batch size (an `if` or a loop on len(x) or x.shape[0], a reshape to the example's size) turns the dynamic "
                f"size into a constant. {_COND_HINT}")
    guard = re.search(r"satisfy the generated guard (.+)", text)
    if guard:
        return (f"torch.export.export refused a dynamic batch: forward's code works only for some batch sizes "
                f"(guard {guard.group(1).strip()})",
                "a Python `if` on the batch size was decided for the example and export kept a guard for it: other "
                f"sizes would take the branch that was not recorded. {_COND_HINT}")
    if "data-dependent" in text or "GuardOnDataDependentSymNode" in type(error).__name__:
        return (f"torch.export.export stopped at a branch on tensor values ({first})",
                "an `if` on a tensor's value (if h.sum() > 0, .item(), bool(t)) needs data that export does not "
                f"have. {_COND_HINT}")
    if "aliasing" in text:
        return (f"torch.cond refused a branch that returns its input ({first})",
                "each branch of torch.cond must return a new tensor: return h.clone(), not h")
    merge = re.search(r"output in torch\.cond,\s+expected same (\w+) but got ([^\"')]+)", text)
    if merge or "Unmatched output spec from torch.cond" in text:
        kind = {"dim": "number of dimensions"}.get(merge.group(1), merge.group(1)) if merge else ""
        what = (f"the two branches return tensors with a different {kind} ({merge.group(2).strip().rstrip('.')})"
                if merge else "the two branches return a different number of tensors")
        return (f"torch.cond refused branches that do not match: {what}",
                "torch.cond needs both branches to return the same structure (as many tensors), each with the same "
                "dtype and number of dimensions; the sizes may differ (export then gives the output a size of its "
                "own). Make both branches compute the same kind of result")
    if "cond" in text.lower():
        return (f"torch.export.export failed inside torch.cond ({first})",
                "torch.cond(pred, true_fn, false_fn, operands): both branches take the operands and must return the "
                "same structure (the same number of tensors) with the same dtype and the same number of dimensions "
                "for each; the sizes may differ")
    return f"torch.export.export raised {first}", explain_error(error)


def _batch_input(example, batch: int, device) -> tuple:
    shape = tuple(example)
    generator = torch.Generator().manual_seed(SEED + 10 + batch)
    return (torch.randn((batch, *shape[1:]), generator=generator).to(device),)


@_check("export agrees with eager")
def check_export_agrees(model, example, batch_sizes, *, device):
    """``torch.export.export(model, (x,), dynamic_shapes=...)`` with the batch dimension dynamic succeeds, and
    the exported program's module gives eager forward's outputs for every batch size in ``batch_sizes``.

    ``example`` is the shape of the example batch export traces with: its batch must be at least 2, since
    export specialises sizes 0 and 1.
    """
    __tracebackhide__ = True
    with _no_cache_traces(), _frames_may_be_refused():
        return _export_agrees(model, example, batch_sizes, device)


def _export_agrees(model, example, batch_sizes, device):
    __tracebackhide__ = True
    title, where = "export agrees with eager", str(device)
    shape = tuple(example)
    if len(shape) < 1 or shape[0] < 2:
        raise ValueError("check_export_agrees: the example batch must be at least 2 (export specialises sizes 0 and 1)")
    m = _build(model, device, title).eval()
    label = type_name(m)
    inputs = _batch_input(shape, shape[0], device)
    try:
        with _silent_logs():
            program = torch.export.export(m, inputs, dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as error:  # the student's forward, traced: report any failure
        problem, hint = explain_export_error(error)
        fail(title, problem, hint=hint, devices=where)
    exported = program.module()
    wrong, refused, outputs = [], [], []
    for batch in batch_sizes:
        x = _batch_input(shape, batch, device)
        with torch.no_grad():
            try:
                eager = m(*x)
            except Exception as error:  # the student's forward: report any failure
                fail(title, f"eager {label}(x) with a batch of {batch} raised {describe_error(error)}",
                     hint=explain_error(error), devices=where)
            try:
                got = exported(*x)
            except Exception as error:  # the exported program's guards
                refused.append(f"batch {batch}: {describe_error(error)}")
                continue
        a, b = _outputs(got), _outputs(eager)
        outputs.append(b)
        if a.shape != b.shape:
            wrong.append(f"batch {batch}: the exported program returns {a.numel()} values, eager {b.numel()}")
        elif not torch.allclose(a, b, **EXPORT_AGREEMENT):
            wrong.append(f"batch {batch}: largest gap {(a - b).abs().max().item():.3g}")
    if refused:
        fail(title, f"the exported program refuses some batch sizes that eager {label} accepts", refused,
             hint="export kept a guard on the batch size, because forward's Python code depends on it. "
                  + _COND_HINT, devices=where)
    if wrong:
        sizes = ", ".join(str(b) for b in batch_sizes)
        fail(title, f"the exported program disagrees with eager {label} at {plural(len(wrong), 'batch size')} "
                    f"(of {sizes})", wrong,
             hint=f"export ran forward once, on the example batch of {shape[0]}, and recorded only the operations "
                  "that ran for it: a Python `if` on the batch size was decided then, and the other branch is not in "
                  "the graph (export assumes a dynamic size is at least 2, so `x.shape[0] > 1` is True without any "
                  f"guard). {_COND_HINT}", devices=where)
    sizes = ", ".join(str(b) for b in batch_sizes)
    return f"{label} exports with a dynamic batch and agrees with eager at batch sizes {sizes}", torch.cat(outputs)
