"""Checks on saving and loading: state_dicts and checkpoints (unit 06).

* ``check_loads_state_dict(model, state_dict, example=None, convert=None)``: the model takes ``state_dict``
  (or ``convert(state_dict)``, which must leave its input as it was) with strict=True. On failure it names the
  missing and unexpected keys, pairs them up when an attribute was renamed (or a wrapper added a prefix), and
  names shape mismatches (grader.checks.state_dict_keys); with ``example``, the loaded model must also run.
* ``check_checkpoint_round_trip(save, load, model, example)``: ``save(path, model, optimizer, step)`` and
  ``load(path, model, optimizer) -> step`` carry model, optimizer and step (an int) through a file that
  ``torch.load(path, weights_only=True)`` accepts, so that training goes on exactly as if never stopped.
"""

import contextlib
import io
import itertools
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .runner import _build, _check, _forward, _inputs, _loss, _outputs
from .diagnose import describe_error, explain_error, type_name
from .report import CheckFailed, fail, plural
from .state_dict_keys import _mismatch_hint, _not_a_state_dict, input_changes, state_dict_mismatch
from .state_dict_keys import _dotted_prefixes, _rests, renamed_prefixes  # noqa: F401 (their old home, still imported)

_folders = itertools.count()


def _warm_pickle_caches() -> None:
    """The first pickling of a Tensor or a Parameter caches `__slotnames__` on its class (copyreg). Do it once
    here, at import, so that the grading defences, which watch torch's classes for changes, do not see it
    happen in the middle of a graded cell."""
    torch.save([torch.zeros(1), nn.Parameter(torch.zeros(1))], io.BytesIO())


_warm_pickle_caches()

# --- loading a state_dict -------------------------------------------------------------------------

def _loaded_as_is(tensor: torch.Tensor, saved: torch.Tensor) -> bool:
    """Does the model's tensor hold the saved values (cast to its dtype, as load_state_dict does; NaN equal NaN)?"""
    a, b = tensor.detach().cpu(), saved.detach().to(device="cpu", dtype=tensor.dtype)
    return a.shape == b.shape and (torch.equal(a, b) or (a.is_floating_point()
                                                         and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)))


@_check("loads state_dict")
def check_loads_state_dict(model, state_dict, example=None, *, convert: Callable | None = None, device):
    """``model.load_state_dict(state_dict)`` (strict=True) succeeds; with ``example``, the loaded model runs.

    With ``convert`` (the student's function), the model loads ``convert(state_dict)`` instead, and ``convert``
    must leave the dict it is given as it was."""
    __tracebackhide__ = True
    title, where = "loads state_dict", str(device)
    m = _build(model, device, title)
    if convert is not None:
        state_dict = _converted(title, where, convert, state_dict)
    wrong = _not_a_state_dict(state_dict)
    if wrong:
        fail(title, wrong[0], hint=wrong[1], devices=where)
    label = type_name(m)
    lines = state_dict_mismatch(m, state_dict)  # read before loading: a failed load may have copied a part
    try:
        m.load_state_dict(state_dict)  # torch decides; a module's own loading code may accept more than the keys
    except Exception as error:  # torch's refusal, or a load_state_dict hook of the student's: report any failure
        if lines:
            fail(title, f"{label} cannot load this state_dict with strict=True", lines, hint=_mismatch_hint(lines),
                 devices=where)
        fail(title, f"{label}.load_state_dict(state_dict) raised {describe_error(error)}", hint=explain_error(error),
             devices=where)
    changed = [k for k, t in m.state_dict().items() if k in state_dict and not _loaded_as_is(t, state_dict[k])]
    if changed:
        fail(title, "after load_state_dict, some tensors differ from the state_dict", [f"`{k}`" for k in changed],
             hint="load_state_dict copies every tensor in; a load_state_dict hook or a custom "
                  "_load_from_state_dict changed them", devices=where)
    count = plural(len(state_dict), "tensor")
    if example is None:
        return f"{label} takes all {count} with strict=True", len(state_dict)
    m.eval()
    with torch.no_grad():
        out = _forward(m, _inputs(example, device), title, where)
    values = _outputs(out)
    if values.is_floating_point() and not torch.isfinite(values).all():
        fail(title, "the loaded model's output holds NaN or Inf", hint="the checkpoint's values are not finite: "
             "it was saved after training diverged", devices=where)
    return f"{label} takes all {count} with strict=True and runs", values


def _converted(title, where, convert: Callable, state_dict):
    __tracebackhide__ = True
    name = getattr(convert, "__name__", "convert")
    before = list(state_dict.items()) if isinstance(state_dict, Mapping) else []
    values = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in before}
    try:
        converted = convert(state_dict)
    except Exception as error:  # the student's function: report any failure
        fail(title, f"{name}(state_dict) raised {describe_error(error)}", hint=explain_error(error), devices=where)
    changed = input_changes(name, before, state_dict, values) if before else []
    if changed:
        fail(title, f"{name} changed the state_dict it was given", changed[:4],
             hint="build and return a new dict (for example a dict comprehension over state_dict.items()) and leave "
                  "the one you are given as it was: the caller may still need the old checkpoint", devices=where)
    return converted


# --- a checkpoint round trip: model, optimizer and step ----------------------------------------------

_SAFE_HINT = ("torch.load uses weights_only=True by default since torch 2.6: it rebuilds only the types on its "
              "allowlist (tensors, dicts and OrderedDicts, lists, tuples, sets, numbers, strings, torch.Size, "
              "torch.device, dtypes and a few more) and refuses every other class unless you vouch for it with "
              "torch.serialization.add_safe_globals, because unpickling an object can run arbitrary code. Save "
              "state_dicts and plain values: torch.save({'model': model.state_dict(), 'optimizer': "
              "optimizer.state_dict(), 'step': step}, path)")
_STATE_HINT = ("save optimizer.state_dict() in the checkpoint and restore it with "
               "optimizer.load_state_dict(checkpoint['optimizer']) on the optimizer you were given")


@contextlib.contextmanager
def _scratch_folder():
    """A new folder under the temporary directory, removed afterwards. (tempfile.TemporaryDirectory would set up
    tempfile's random name sequence on first use, a change the grading defences' watch on `tempfile` flags.)"""
    folder = os.path.join(tempfile.gettempdir(), f"grader-checkpoint-{os.getpid()}-{next(_folders)}")
    shutil.rmtree(folder, ignore_errors=True)
    os.mkdir(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _default_optimizer(params):
    return torch.optim.Adam(params, lr=0.01)


def _train(title, where, model, optimizer, example, steps, first=0):
    __tracebackhide__ = True
    for step in range(first, first + steps):
        optimizer.zero_grad()
        inputs = tuple(x * (1 + step) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                       for x in _inputs(example, model_device(model)))
        _loss(_forward(model, inputs, title, where)).backward()
        optimizer.step()


def model_device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _unsafe_global(error: BaseException) -> str | None:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else None


def _describe_global(name: str, model: nn.Module, optimizer) -> str:
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    if name == cls or name.endswith("." + type(model).__qualname__):
        return (f"the checkpoint holds the model object itself (class `{name}`), pickled whole, not its state_dict; "
                "the file refers to the class by name, so loading it needs that class and runs whatever its "
                "unpickling runs")
    if name == f"{type(optimizer).__module__}.{type(optimizer).__qualname__}":
        return f"the checkpoint holds the optimizer object itself (class `{name}`), not optimizer.state_dict()"
    if name.startswith("numpy"):
        return (f"the checkpoint holds a NumPy value (`{name}`): a step or a loss taken from NumPy; store a plain "
                "int or float (int(step), loss.item())")
    if name.startswith("torch.nn.") or name.startswith("torch.optim."):
        return f"the checkpoint holds a torch object (class `{name}`), not a state_dict"
    return f"the checkpoint holds an object of class `{name}`"


@contextlib.contextmanager
def _watch_torch_load(calls: list):
    """Record the keyword arguments of every torch.load call the student's function makes."""
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    torch.load = spy
    try:
        yield
    finally:
        torch.load = original


def _differs(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                    and torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() != b.keys() or any(_differs(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    return a != b


def _optimizer_problems(saved: dict, loaded: dict, names: list[str]) -> list[str]:
    problems = []
    if saved["state"] and not loaded["state"]:
        kinds = sorted({k for per in saved["state"].values() for k in per})
        return [f"the restored optimizer has no state; the saved one holds {', '.join(f'`{k}`' for k in kinds)} for "
                f"{plural(len(saved['state']), 'parameter')}"]
    for index, per in saved["state"].items():
        label = f"`{names[index]}`" if index < len(names) else f"parameter {index}"
        other = loaded["state"].get(index)
        if other is None:
            problems.append(f"no optimizer state for {label}")
            continue
        problems += [f"optimizer state `{k}` of {label} differs" for k in per if _differs(per[k], other.get(k))]
    for i, (a, b) in enumerate(zip(saved["param_groups"], loaded["param_groups"])):
        problems += [f"param_groups[{i}]['{k}'] is {b.get(k)!r}, saved {a[k]!r}"
                     for k in a if k != "params" and _differs(a[k], b.get(k))]
    return problems


@_check("checkpoint round trip")
def check_checkpoint_round_trip(save: Callable, load: Callable, model, example, *, optimizer: Callable | None = None,
                                steps: int = 2, device):
    """``save(path, model, optimizer, step)`` writes a file that ``torch.load(path, weights_only=True)`` accepts;
    ``load(path, model, optimizer)`` restores a fresh model and optimizer from it and returns the step; one more
    training step then gives exactly what it gives without the round trip."""
    __tracebackhide__ = True
    title, where = "checkpoint round trip", str(device)
    make_optimizer = optimizer or _default_optimizer
    save_name, load_name = getattr(save, "__name__", "save"), getattr(load, "__name__", "load")
    m = _build(model, device, title).train()
    opt = make_optimizer(m.parameters())
    _train(title, where, m, opt, example, steps)
    with _scratch_folder() as folder:
        path = os.path.join(folder, "checkpoint.pt")
        try:
            save(path, m, opt, steps)
        except Exception as error:  # the student's function: report any failure
            fail(title, f"{save_name}(path, model, optimizer, step={steps}) raised {describe_error(error)}",
                 hint=explain_error(error), devices=where)
        if not os.path.exists(path):
            fail(title, f"{save_name}(path, model, optimizer, step) wrote no file at `path`",
                 hint="torch.save(checkpoint, path): write to the path you are given", devices=where)
        try:
            checkpoint = torch.load(path, weights_only=True)
        except pickle.UnpicklingError as error:
            found = _unsafe_global(error)
            problem = (_describe_global(found, m, opt) if found else
                       f"torch.load(path, weights_only=True) refuses the file: {describe_error(error)}")
            fail(title, f"torch.load(path, weights_only=True) refuses what {save_name} wrote", [problem],
                 hint=_SAFE_HINT, devices=where)
        except Exception as error:  # a file torch cannot read at all
            fail(title, f"torch.load cannot read what {save_name} wrote: {describe_error(error)}",
                 hint="write the checkpoint with torch.save(checkpoint, path)", devices=where)
        fresh = _build(model, device, title).train()
        fresh_opt = make_optimizer(fresh.parameters())
        calls: list = []
        try:
            with _watch_torch_load(calls):
                step = load(path, fresh, fresh_opt)
        except CheckFailed:
            raise
        except Exception as error:  # the student's function: report any failure
            fail(title, f"{load_name}(path, model, optimizer) raised {describe_error(error)}",
                 hint=explain_error(error), devices=where)
    unsafe = [c for c in calls if c.get("weights_only") is False]
    if unsafe:
        fail(title, f"{load_name} calls torch.load(..., weights_only=False)",
             hint="weights_only=False unpickles anything, and a checkpoint from elsewhere can run arbitrary code "
                  "on load; a checkpoint of state_dicts loads with the default, weights_only=True: leave it out",
             devices=where)
    if step is None:
        fail(title, f"{load_name}(path, model, optimizer) returned None, not the step",
             hint=f"save the step in the checkpoint and return it from {load_name}: return checkpoint['step']",
             devices=where)
    if isinstance(step, torch.Tensor) or not isinstance(step, int) or isinstance(step, bool):
        kind = "a tensor" if isinstance(step, torch.Tensor) else f"a {type(step).__name__}"
        why = (": with a tensor step, step + 1 is a tensor again and json.dumps refuses it"
               if isinstance(step, torch.Tensor) else "")
        fail(title, f"{load_name}(...) returned {step!r}, {kind}; the step is the int {steps}",
             hint=f"store the step as the plain int {save_name} is given ('step': step) and return it as it is{why}",
             devices=where)
    if step != steps:
        fail(title, f"{load_name}(...) returned {step!r}; the step saved was {steps}",
             hint=f"save the step you are given in {save_name} and return the stored value from {load_name}",
             devices=where)
    mine, restored = m.state_dict(), fresh.state_dict()
    stale = [k for k in mine if _differs(mine[k], restored.get(k))]
    if stale:
        fail(title, "after loading, the model's tensors are not the ones saved",
             [f"`{k}` was not restored" for k in stale[:6]] + [f"... and {len(stale) - 6} more"] * (len(stale) > 6),
             hint="save model.state_dict() and restore it with model.load_state_dict(checkpoint['model']) on the "
                  "model you were given (rebinding a local name to a new model does not change the caller's)",
             devices=where)
    names = [n for n, _ in m.named_parameters()]
    problems = _optimizer_problems(opt.state_dict(), fresh_opt.state_dict(), names)
    if problems:
        fail(title, "after loading, the optimizer is not the one saved", problems, hint=_STATE_HINT, devices=where)
    _train(title, where, m, opt, example, 1, first=steps)
    _train(title, where, fresh, fresh_opt, example, 1, first=steps)
    after, resumed = m.state_dict(), fresh.state_dict()
    drift = [k for k in after if _differs(after[k], resumed[k])]
    if drift:
        fail(title, "one more training step after loading gives other weights than the same step without the "
                    "round trip", [f"`{k}` differs" for k in drift[:6]],
             hint=_STATE_HINT + "; restore everything that the step uses", devices=where)
    kind = type(opt).__name__
    return (f"{save_name}/{load_name} restore {plural(len(mine), 'model tensor')}, the {kind} state and step {steps} "
            "from a weights_only=True file; training continues identically"), _outputs(list(after.values()))
