"""Checks that a fix keeps what the broken model did: the same function from the same weights (also through a
checkpoint conversion), and the values it keeps for a log. Used by the debugging clinic (unit 07) and by the
fix-the-model exercises of units 05 and 06.

* ``check_same_function(model, original, example, convert=None)``: loaded with ``original``'s state_dict (or
  ``convert(state_dict)``, which must leave its input as it was), ``model`` gives ``original``'s eval-mode outputs.
* ``check_log(model, example, logged, expected)``: after every call, in train and eval mode, the values the model
  keeps for a log are that call's numbers, and none holds on to the autograd graph.
"""

import numbers
from collections.abc import Callable, Mapping

import torch

from .diagnose import describe_error, explain_error, type_name
from .report import fail
from .runner import AGREEMENT, _build, _check, _forward, _inputs, _outputs
from .training import _batch, _few, _names


# --- a fix keeps what the model computes ------------------------------------------------------

@_check("same function")
def check_same_function(model, original, example, *, convert: Callable | None = None, device):
    """Loaded with ``original``'s state_dict, ``model`` gives ``original``'s eval-mode outputs.

    A fix should change how a model computes, not what it computes. ``original`` (the broken
    model, which may work only on the CPU and without gradients) runs on the CPU under
    torch.no_grad(); ``model`` runs on each device of the matrix. With ``convert``, the model
    loads ``convert(original.state_dict())`` instead: a checkpoint upgraded to new names.
    """
    __tracebackhide__ = True
    title, where = "same function", str(device)
    theirs = _build(original, torch.device("cpu"), title).eval()
    yours = _build(model, device, title).eval()
    label = type_name(theirs)
    saved, source = theirs.state_dict(), f"{label}'s state_dict"
    if convert is not None:
        source = f"{getattr(convert, '__name__', 'convert')}({label}'s state_dict)"
        given, as_given = saved, _snapshot(saved)
        try:
            saved = convert(saved)
        except Exception as error:  # the student's conversion: report any failure
            fail(title, f"{source} raised {describe_error(error)}", hint=explain_error(error), devices=where)
        changes = _changes(given, as_given)
        if changes:
            fail(title, f"{source} changed the checkpoint it was given", changes[:4],
                 hint="build a new dict and leave the one you are given as it was: the caller may still need the "
                      "checkpoint as it was read (to retry, to compare, to save it elsewhere)", devices=where)
        if not isinstance(saved, dict):
            fail(title, f"{source} returned {type(saved).__name__}, not a dict of tensors",
                 hint="return a dict that maps each key to its tensor", devices=where)
    mine = set(yours.state_dict())
    buffers = {n for n, _ in yours.named_buffers()}  # a plain tensor made a buffer is a fix, not a mismatch
    missing, unexpected = sorted(set(saved) - mine), sorted(mine - set(saved) - buffers)
    if missing or unexpected:
        if convert is None:
            details = ([f"{label} has `{n}`, yours has not" for n in missing]
                       + [f"yours has `{n}`, {label} has not" for n in unexpected])
            hint = f"keep {label}'s attribute names and layers: a fix changes how the model computes, not what it holds"
        else:  # name the renames that would fit, as check_loads_state_dict does
            from .saving import state_dict_mismatch  # unit 06's module; imported where it is needed
            details = state_dict_mismatch(yours, saved)
            hint = "every key of the converted checkpoint must be a key of the model, with the same shape"
        fail(title, f"your model cannot take {source}: the names differ", details, hint=hint, devices=where)
    try:
        yours.load_state_dict(saved, strict=False)
    except RuntimeError as error:
        fail(title, f"loading {source} raised {describe_error(error)}",
             hint="keep the layer sizes of the original", devices=where)
    with torch.no_grad():
        try:  # the original is the broken model: run it as it is, without the grader's diagnoses
            truth = theirs(*_inputs(example, torch.device("cpu")))
        except Exception as error:
            raise ValueError(f"check_same_function: the original {label} raised {describe_error(error)} on the CPU "
                             "under torch.no_grad(); it cannot serve as the reference") from error
        got = _forward(yours, _inputs(example, device), title, where)
    a, b = _outputs(got), _outputs(truth)
    if a.shape != b.shape or not torch.allclose(a, b, **AGREEMENT):
        details = ([f"yours: {_few(a)}", f"{label}: {_few(b)}"] if a.shape == b.shape else
                   [f"yours has {plural(a.numel(), 'output value')}, {label} has {b.numel():,}"])
        fail(title, f"with the same weights, your model's eval-mode output differs from {label}'s", details,
             hint=(f"fix only the bug: every other step of {label}'s forward must stay as it was" if convert is None else
                   "each tensor must land on the layer that plays its part: check which key goes where"),
             devices=where)
    return f"with {label}'s weights{'' if convert is None else ', converted,'} gives {label}'s outputs", a


def _snapshot(state: dict) -> list[tuple[str, object, torch.Tensor | None]]:
    """(key, value, a copy of the tensor's values) for each entry, in order."""
    return [(k, v, v.detach().clone() if isinstance(v, torch.Tensor) else None) for k, v in state.items()]


def _changes(state: dict, snapshot) -> list[str]:
    """How `state` differs from its snapshot: keys removed or added, tensors replaced or changed in place."""
    before = {k: (v, copy_) for k, v, copy_ in snapshot}
    lines = [f"`{k}` was removed from it" for k in before if k not in state]
    lines += [f"`{k}` was added to it" for k in state if k not in before]
    for k, (v, copy_) in before.items():
        if k not in state:
            continue
        if state[k] is not v:
            lines.append(f"`{k}` was replaced by another value")
        elif copy_ is not None and (v.shape != copy_.shape or not torch.equal(v, copy_)):
            lines.append(f"`{k}` was changed in place")
    return lines


# --- values a model keeps for a log ----------------------------------------------------------

_LOG_MODES = ("train", "train", "eval")  # a new batch for each call
_DETACH_HINT = ("a logged value must let go of the graph: keep a number (.item()) or a detached tensor. A tensor "
                "with a grad_fn keeps the whole graph of its call, and every activation in it, alive for as long as "
                "the log holds it")


@_check("training log")
def check_log(model, example, logged: Callable, expected: Callable, *, device):
    """After each of three calls (two in train mode, one in eval mode, each on a new batch of shape ``example``,
    with autograd on), ``logged(model)`` (a dict of the values the model keeps for a log) holds, under each
    name, the number ``expected(model, x)`` gives for that call's input: a Python number, or a one-element
    tensor that carries no autograd graph. Both functions are written in the test cell.
    """
    __tracebackhide__ = True
    title, where = "training log", str(device)
    m = _build(model, device, title)
    previous: dict = {}
    values = []
    for k, mode in enumerate(_LOG_MODES, start=1):
        m.train(mode == "train")
        x = _batch(example, 20 + k, device) * k  # a batch of its own scale: each call's numbers differ
        _forward(m, (x,), title, where)
        when = f"after call {k} ({mode} mode)"
        try:
            log = logged(m)
        except Exception as error:  # the student's model lacks what the log reads
            fail(title, f"{when}, reading the log raised {describe_error(error)}",
                 hint="keep the log where the exercise says, and set it on every call", devices=where)
        if not isinstance(log, Mapping):
            fail(title, f"{when}, the log is a {type(log).__name__}, not a dict of values", devices=where)
        log = dict(log)  # what it holds now: the test's own calls below may run the model's hooks again
        with torch.no_grad():
            truth = {name: float(value) for name, value in expected(m, x).items()}
        for name, want in truth.items():
            got = _logged_number(title, where, when, name, log)
            if not _same_number(got, want):
                fail(title, f"{when}, `{name}` is {got:.6g}; it should be {want:.6g}",
                     _why_log_differs(name, got, truth, previous.get(name)), devices=where,
                     hint="set every value of the log on every call, from that call's tensors, as the exercise "
                          "describes them")
            values.append(got)
        previous = truth
    names = _names(list(truth))
    return (f"{names} {'holds' if len(truth) == 1 else 'hold'} each call's value (train and eval mode), with no "
            f"autograd graph kept", torch.tensor(values, dtype=torch.float64))


def _logged_number(title, where, when, name, log) -> float:
    """The logged value as a float; fails when it is missing, not a number, or still attached to a graph."""
    __tracebackhide__ = True
    if name not in log:
        fail(title, f"{when}, the log has no `{name}`", [f"it holds {_names(list(log)) if log else 'nothing'}"],
             hint="set it on every call", devices=where)
    value = log[name]
    if value is None:
        fail(title, f"{when}, `{name}` is None: nothing sets it", hint="set it on every call", devices=where)
    if isinstance(value, torch.Tensor):
        if value.requires_grad or value.grad_fn is not None:
            fail(title, f"{when}, `{name}` is a tensor attached to the autograd graph", hint=_DETACH_HINT,
                 devices=where)
        if value.numel() != 1:
            fail(title, f"{when}, `{name}` has shape {list(value.shape)}; the log keeps one number per name",
                 hint="reduce over every element (the whole batch and every feature)", devices=where)
        return float(value.item())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    fail(title, f"{when}, `{name}` is a {type(value).__name__}, not a number", hint="keep one number per name",
         devices=where)


def _same_number(got: float, want: float) -> bool:
    return abs(got - want) <= 1e-6 + 1e-5 * abs(want)


def _why_log_differs(name, got, truth, before) -> list[str]:
    """What the wrong value is, where that can be said for sure: the last call's, or another name's."""
    if before is not None and _same_number(got, before):
        return [f"it still holds the previous call's value: `{name}` was not updated by this call"]
    others = [other for other, value in truth.items() if other != name and _same_number(got, value)]
    if others:
        return [f"it holds what `{others[0]}` should hold"]
    return []
