"""Checks on hooks that guard a model (unit 05): a pre-hook that validates inputs, and a hunt for the first
module whose output is not finite.

* ``check_pre_hook_validates(make_hook, model, features, example)``: the pre-hook ``make_hook(features)``
  lets every floating-point input of the right size through untouched (float32, float64, bfloat16) and
  rejects the others before forward runs: TypeError for anything that is not a floating-point tensor
  (checked first), ValueError naming both sizes for a wrong last dimension.
* ``check_finds_first_nonfinite(find, model, example)``: ``find(model, *inputs)`` names the first module
  whose output holds NaN or Inf (the check plants one at several places), or returns None; it leaves no
  hook behind, also when the model raises, and lets that error through.
"""

import copy
from collections.abc import Callable

import torch
from torch import nn

from .hooks import SAME, _firing, _leftovers, _module, _name
from .runner import _build, _check, _inputs, _outputs, hook_counts
from .diagnose import describe_error, explain_error, type_name
from .report import fail

# Valid inputs besides the example's float32: every floating dtype the model can be cast to on any device.
_OTHER_FLOATS = (torch.float64, torch.bfloat16)


# --- validating inputs with a pre-hook ------------------------------------------------------------

@_check("input-validating pre-hook")
def check_pre_hook_validates(make_hook: Callable, model, features: int, example, *, device):
    """``make_hook(features)`` is a forward pre-hook: registered on the model, it leaves valid inputs alone (any
    floating-point dtype; forward gets the very tensor the caller passed), raises TypeError when the input is not a
    floating-point tensor (whatever its size) and ValueError naming both sizes when the last dimension is not
    ``features``; in both cases before forward runs."""
    __tracebackhide__ = True
    title, where = "input-validating pre-hook", str(device)
    name = _name(make_hook, "make_hook")
    hook = _make(title, where, name, make_hook, features)
    good = _inputs(example, device)
    if not good or not isinstance(good[0], torch.Tensor) or good[0].shape[-1] != features:
        raise ValueError(f"the example's last dimension must be {features}")
    x = good[0]
    floats = list(dict.fromkeys((x.dtype, *_OTHER_FLOATS)))
    for dtype in floats:
        _passes_valid(title, where, model, hook, (x.to(dtype), *good[1:]), dtype, device)

    m = _build(model, device, title).eval()
    ran = []
    m.register_forward_pre_hook(hook)
    m.register_forward_pre_hook(lambda module, args: ran.append(True))  # runs after the student's hook
    sizes = sorted({features + 1, max(1, features - 1)} - {features})
    wrong_size = x.new_zeros(*x.shape[:-1], sizes[0])
    cases = [(x.new_zeros(*x.shape[:-1], size), f"an input of shape {list(x.shape[:-1]) + [size]} ({size} features, "
              f"not {features})", size, ValueError) for size in sizes]
    cases += [(torch.ones(x.shape, dtype=torch.long, device=x.device), "an input of dtype torch.int64", None, TypeError),
              (wrong_size.long(), f"an input of dtype torch.int64 with {sizes[0]} features", None, TypeError),
              (torch.ones(x.shape, dtype=torch.bool, device=x.device), "an input of dtype torch.bool", None, TypeError),
              (x.tolist(), f"a Python list (not a tensor) of shape {list(x.shape)}", None, TypeError)]
    for bad, what, size, wanted in cases:
        ran.clear()
        try:
            with torch.no_grad():
                m(bad, *good[1:])
        except wanted as error:
            message = str(error)
            if size and not (str(size) in message and str(features) in message):
                fail(title, f"for {what}, the ValueError says {message!r}",
                     hint=f"name both sizes in the message, e.g. 'expected {features} input features, got {size}'",
                     devices=where)
        except Exception as error:
            fail(title, f"for {what}, the model raised {describe_error(error)}, not {wanted.__name__}",
                 hint=_validation_hint(wanted, features, ran, bad, error), devices=where)
        else:
            fail(title, f"{what} went through without an error",
                 hint=_validation_hint(wanted, features, ran, bad, None), devices=where)
        if ran:
            fail(title, f"for {what}, the {wanted.__name__} came from forward, not from your hook",
                 hint=_validation_hint(wanted, features, ran, bad, None), devices=where)
    kinds = ", ".join(str(d).removeprefix("torch.") for d in floats)
    return (f"passes valid inputs ({kinds}) unchanged; rejects wrong sizes (ValueError) and non-float inputs "
            f"(TypeError)"), len(cases)


def _make(title, where, name, make_hook, features):
    __tracebackhide__ = True
    try:
        hook = make_hook(features)
    except Exception as error:  # the student's function: report any failure
        fail(title, f"{name}({features}) raised {describe_error(error)}", hint=explain_error(error), devices=where)
    if not callable(hook):
        fail(title, f"{name}({features}) returned {type(hook).__name__}, not a hook",
             hint="define the hook inside and return it: def hook(module, args): ...", devices=where)
    return hook


def _passes_valid(title, where, model, hook, inputs, dtype, device):
    """The model in ``dtype``, with the hook, gives what it gives without it; forward gets the caller's tensor."""
    __tracebackhide__ = True
    m = _build(model, device, title).eval().to(dtype)
    with torch.no_grad():
        truth = _outputs(copy.deepcopy(m)(*inputs))
    received = []
    m.register_forward_pre_hook(hook)
    m.register_forward_pre_hook(lambda module, args: received.append(args[0] if args else None))
    shape, kind = list(inputs[0].shape), str(dtype).removeprefix("torch.")
    try:
        with torch.no_grad():
            out = _outputs(m(*inputs))
    except Exception as error:  # the student's hook on a valid input, or forward on what the hook returned
        if received and received[0] is not inputs[0]:
            _replaced(title, where, kind, shape, inputs[0], received[0])
        hint = ("raise only for a wrong last dimension or an input that is not a floating-point tensor"
                + (": float16, bfloat16, float32 and float64 are all floating point (x.is_floating_point())"
                   if dtype != torch.float32 else ""))
        fail(title, f"a valid {kind} input of shape {shape} raised {describe_error(error)}", hint=hint, devices=where)
    if received and received[0] is not inputs[0]:
        _replaced(title, where, kind, shape, inputs[0], received[0])
    if out.shape != truth.shape or not torch.allclose(out, truth, **SAME):
        fail(title, f"with the hook, the model's output for a valid {kind} input of shape {shape} changed",
             hint="a pre-hook that only checks returns None: whatever it returns replaces the input", devices=where)


def _replaced(title, where, kind, shape, given, got):
    __tracebackhide__ = True
    if not isinstance(got, torch.Tensor):
        what = f"a {type(got).__name__}"
    elif got.dtype != given.dtype:
        what = f"a {str(got.dtype).removeprefix('torch.')} tensor"
    else:
        same = got.shape == given.shape and torch.equal(got.detach(), given.detach())
        what = "a copy of it" if same else "another tensor"
    fail(title, f"for a valid {kind} input of shape {shape}, forward got {what}, not the tensor the caller passed",
         hint="a valid input must go on unchanged: return None from the hook (a pre-hook's return value, when not "
              "None, replaces the input: a cast or a copy is a different tensor)", devices=where)


def _validation_hint(wanted, features, ran, bad, error) -> str:
    through = "; your hook let it through, so forward ran" if ran else ""
    if wanted is TypeError:
        if not isinstance(bad, torch.Tensor):
            return ("test isinstance(x, torch.Tensor) before anything else: a list has no .dtype, "
                    "no .is_floating_point() and no .shape" + through)
        if isinstance(error, ValueError):
            return ("check the type first: an input that is not a floating-point tensor is a TypeError whatever its "
                    "size; only a floating-point tensor of the wrong size is a ValueError")
        return ("raise TypeError unless isinstance(x, torch.Tensor) and x.is_floating_point() (integer and bool "
                "tensors are not floating point)" + through)
    return (f"compare x.shape[-1] (the last dimension, whatever the number of dimensions) with {features} and "
            "raise ValueError naming both" + through)


# --- finding the first non-finite output --------------------------------------------------------------

class _PlantedError(Exception):
    """Raised by a module the check planted it in, to see whether the student's finder cleans up."""


@_check("first non-finite module")
def check_finds_first_nonfinite(find: Callable, model, example, *, device):
    """``find(model, *inputs)`` returns the name of the first module (in the order forward hooks fire) whose
    output holds NaN or Inf, or None when every output is finite; it leaves no hook behind, also when the model
    raises, and lets that error through.

    The check plants a NaN or an Inf in the output of several modules in turn, the model itself included, and
    an error in one of them."""
    __tracebackhide__ = True
    title, where = "first non-finite module", str(device)
    name = _name(find, "find")
    inputs = _inputs(example, device)
    order = list(_firing(_build(model, device, title).eval(), inputs))
    cases = [(None, None)]
    picks = [order[0], order[(len(order) - 1) // 2], order[-2] if len(order) > 1 else order[-1], order[-1]]
    for i, target in enumerate(dict.fromkeys(picks)):
        cases.append((target, float("nan") if i % 2 == 0 else float("inf")))
    for target, value in cases:
        m = _build(model, device, title).eval()
        if target is not None:
            _plant(m.get_submodule(target), value)
        before = hook_counts(m)
        try:
            got = find(m, *inputs)
        except Exception as error:  # the student's function: report any failure
            fail(title, f"{name}(model, x) raised {describe_error(error)}", hint=explain_error(error), devices=where)
        _no_hooks_left(title, where, name, m, before, "")
        if got != target:
            _wrong_module(title, where, name, m, order, target, value, got)
    _lets_errors_through(title, where, name, find, model, order, inputs, device)
    planted = len(cases) - 1
    return (f"names the first of {len(order)} modules to output NaN or Inf ({planted} planted), None when all is "
            "finite, no hook left (also when the model raises)"), planted


def _no_hooks_left(title, where, name, model, before, when):
    __tracebackhide__ = True
    left = _leftovers(before, hook_counts(model))
    if left:
        fail(title, f"{name} leaves hooks on the model{when}", left,
             hint="remove every handle before returning, in a finally: block, so that they go also when the model "
                  "raises (try: model(*inputs) / finally: remove them)", devices=where)


def _lets_errors_through(title, where, name, find, model, order, inputs, device):
    """A module in the middle raises: ``find`` must remove its hooks and let the error go on to the caller."""
    __tracebackhide__ = True
    m = _build(model, device, title).eval()
    target = order[(len(order) - 1) // 2]
    _plant(m.get_submodule(target), _PlantedError)
    before = hook_counts(m)
    raised = None
    try:
        got = find(m, *inputs)
    except _PlantedError as error:
        raised = error
    except Exception as error:  # the student's function: report any failure
        fail(title, f"when {_module(target)} raised an error, {name}(model, x) raised {describe_error(error)} instead",
             hint="let the model's error through unchanged: remove your hooks in a finally: block, without except",
             devices=where)
    _no_hooks_left(title, where, name, m, before, f" when the model raises (here {_module(target)} did)")
    if raised is None:
        fail(title, f"when {_module(target)} raised an error, {name} returned {got!r}: the error disappeared",
             hint="let the model's error go on to the caller (try/finally, no except): a finder that hides errors "
                  "hides the bug you are hunting", devices=where)


def _plant(module: nn.Module, value):
    """Make ``module`` output ``value`` in its first element (the module's hooks see it, like any output), or raise
    ``value`` when it is an exception class."""
    forward = module.forward

    def poisoned(*args, **kwargs):
        if isinstance(value, type):
            raise value("planted by the check: this module raises")
        output = forward(*args, **kwargs).clone()
        output.view(-1)[0] = value
        return output

    module.forward = poisoned


def _wrong_module(title, where, name, model, order, target, value, got):
    __tracebackhide__ = True
    bad = "NaN" if value != value else "Inf" if value is not None else None
    if target is None:
        fail(title, f"every output is finite, but {name} returned {got!r}",
             hint="return None when no module outputs NaN or Inf", devices=where)
    label = f"{_module(target)} ({type_name(model.get_submodule(target))})"
    if isinstance(got, nn.Module):
        fail(title, f"{name} returned a module ({type_name(got)}), not its name",
             hint="return the name from model.named_modules(), such as '0' or 'block.fc'", devices=where)
    if got is None:
        hint = ("look for Inf as well as NaN: torch.isfinite(output).all() is False for both"
                if bad == "Inf" else "hook every module of model.named_modules()")
        if target == "":
            hint = ("the model's own forward produced it, after all its children: hook every module of "
                    "model.named_modules(), the model itself (name '') included, and call the model as model(...)")
        fail(title, f"{name} found nothing, but {label} outputs {bad}", hint=hint, devices=where)
    if isinstance(got, str) and got and target.startswith(got + "."):
        fail(title, f"{name} returned {got!r}, which contains {label}, the module that output {bad} first",
             hint="hook every module of model.named_modules(), nested ones included (named_children() lists only "
                  "the top level): a container outputs what its children computed", devices=where)
    if got in order and order.index(got) > order.index(target):
        fail(title, f"{name} returned {got!r}, but {label} output {bad} first; later modules only inherit it",
             [f"forward hooks fired in this order: {order}"],
             hint="keep the first module whose output is not finite and ignore the rest (if first is None: ...)"
                  + ("; and test with torch.isfinite: torch.isnan misses Inf" if bad == "Inf" else ""),
             devices=where)
    fail(title, f"{name} returned {got!r}, but the first module to output {bad} is {label}",
         hint="test each module's output in a forward hook with torch.isfinite(output).all()", devices=where)
