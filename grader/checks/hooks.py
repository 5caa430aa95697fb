"""Checks on hook utilities that students write, and on models that use hooks.

Each check builds the model itself, runs the student's code on it, and compares with what torch
reports when the check asks it directly: outputs captured by the check's own hooks, ``.grad``
after backward, the hook dicts before and after. Like every check, it prints one verdict line or
raises CheckFailed with a diagnosis.

* ``check_records_activations(recorder, model, example)``: ``with recorder(model) as acts:`` records
  every leaf module's latest output, in firing order, and removes its hooks on exit, even on errors.
* ``check_grad_norms(watch, model, example)``: ``norms, handles = watch(model)``; every backward
  appends each trainable parameter's gradient norm; removing the handles stops it.
* ``check_pre_hook_validates(make_hook, model, features, example)``: the pre-hook ``make_hook(features)``
  passes good inputs through unchanged and rejects bad ones before forward runs.
* ``check_finds_first_nonfinite(find, model, example)``: ``find(model, *inputs)`` names the first module
  whose output holds NaN or Inf (the check plants one at several places), or returns None.
* ``check_no_hook_leak(model, example)``: calling the model does not add hooks.
* ``check_keeps_output(model, example, attribute, module)``: after each call, ``model.<attribute>``
  holds the output of submodule ``module``.
"""

import copy
import functools
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .runner import LEAK_HINT, LEAK_PROBLEM, _build, _check, _inputs, _loss, _outputs, hook_counts, hook_leaks
from .diagnose import describe_error, explain_error, type_name
from .report import CheckFailed, fail, plural

# The check's reference and the student's code run the same float32 arithmetic on the same device.
SAME = {"rtol": 1e-5, "atol": 1e-6}
NORMS = {"rtol": 1e-4, "atol": 1e-6}


class _BodyError(Exception):
    """Raised by the check inside a `with` block, to see what the recorder does on errors."""


# --- helpers ---------------------------------------------------------------------------------

def _name(fn, default: str) -> str:
    return getattr(fn, "__name__", default).replace("<lambda>", default)


def _module(name: str) -> str:
    return f"`{name}`" if name else "the model itself (`''`)"


def _leftovers(before: dict, after: dict) -> list[str]:
    """'`0` still has 1 forward hook' for each hook dict that holds more than before."""
    lines = []
    for key, count in after.items():
        extra = count - before.get(key, 0)
        if extra > 0:
            where, attr, kind = key
            who = "torch's global hook dict" if where == "*" else _module(where)
            home = f"torch.nn.modules.module.{attr}" if where == "*" else f"{where or 'model'}.{attr}"
            lines.append(f"{who} still has {plural(extra, kind)} (in `{home}`)")
    return lines


def _leaves(model: nn.Module) -> dict[str, nn.Module]:
    return {name: sub for name, sub in model.named_modules() if next(sub.children(), None) is None}


def _firing(model: nn.Module, inputs: tuple, names=None) -> dict[str, torch.Tensor]:
    """name -> a copy of the module's output, for the modules in ``names`` (default: all), in the order
    their forward hooks fire; the model is called once, without gradients."""
    fired = {}

    def keep(name, module, args, output):
        fired[name] = _outputs(output).clone()

    handles = [sub.register_forward_hook(functools.partial(keep, name))
               for name, sub in model.named_modules() if names is None or name in names]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return fired


def _other(inputs: tuple) -> tuple:
    """A second batch unlike the first: floating tensors scaled and shifted."""
    return tuple(x * 1.5 - 0.25 if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)


def _calls_model(title, where, model, inputs, context: str = ""):
    __tracebackhide__ = True
    try:
        return model(*inputs)
    except CheckFailed:
        raise
    except Exception as error:  # a student's hook runs inside the call: report any failure
        fail(title, f"calling the model{' ' + context if context else ''} raised {describe_error(error)}",
             hint="the error comes from a hook (yours runs inside every call): " + explain_error(error), devices=where)


# --- recording activations ----------------------------------------------------------------------

@_check("activation recorder")
def check_records_activations(recorder: Callable, model, example, *, device):
    """``with recorder(model) as acts:`` fills ``acts`` with {leaf name: a detached copy of its latest
    output}, in the order the leaves fire; no hook is left after the block, also when the block raises."""
    __tracebackhide__ = True
    title, where = "activation recorder", str(device)
    name = _name(recorder, "recorder")
    m = _build(model, device, title).eval()
    first = _inputs(example, device)
    second = _other(first)
    leaves = _leaves(m)
    truth_first = _firing(copy.deepcopy(m), first, leaves)
    truth = _firing(copy.deepcopy(m), second, leaves)

    before = hook_counts(m)
    manager = _enter(title, where, name, recorder, m)
    try:
        with manager as acts:
            _calls_model(title, where, m, first, f"inside `with {name}(model)`")
            _calls_model(title, where, m, second, f"inside `with {name}(model)`")
    except CheckFailed:
        raise
    except Exception as error:  # __enter__ or __exit__ of the student's recorder
        fail(title, f"`with {name}(model) as acts:` raised {describe_error(error)}", hint=explain_error(error),
             devices=where)
    left = _leftovers(before, hook_counts(m))
    if left:
        fail(title, f"after the `with {name}(model)` block, hooks are still registered", left,
             hint="keep every handle that register_forward_hook returns and call handle.remove() on each when the "
                  "block ends (after the yield, in a finally: block)", devices=where)
    _compare_records(title, where, name, m, acts, truth, truth_first)

    again = _build(model, device, title).eval()
    before = hook_counts(again)
    manager = _enter(title, where, name, recorder, again)
    try:
        with manager:
            _calls_model(title, where, again, first, f"inside `with {name}(model)`")
            raise _BodyError("raised by the check inside the with block")
    except _BodyError:
        pass
    except CheckFailed:
        raise
    except Exception as error:
        fail(title, f"when the body of `with {name}(model)` raised an error, the recorder raised "
                    f"{describe_error(error)} instead", hint="clean up, then let the body's error through",
             devices=where)
    else:
        fail(title, f"an error raised inside `with {name}(model)` disappeared: the recorder swallowed it",
             hint="let errors through: do not catch them around the yield (try/finally, no except), and do not "
                  "return True from __exit__", devices=where)
    left = _leftovers(before, hook_counts(again))
    if left:
        fail(title, f"when the body of `with {name}(model)` raises, its hooks stay registered", left,
             hint="an error inside the block skips the code after the yield: remove the handles in a finally: block "
                  "(try: yield records / finally: remove them), or in __exit__, which runs on errors too",
             devices=where)
    values = torch.cat([v for v in truth.values()]) if truth else torch.zeros(0)
    return (f"records {plural(len(truth), 'leaf module')} in firing order and removes every hook, "
            f"also when the block raises"), values


def _enter(title, where, name, recorder, model):
    __tracebackhide__ = True
    try:
        manager = recorder(model)
    except Exception as error:  # the student's function: report any failure
        fail(title, f"{name}(model) raised {describe_error(error)}", hint=explain_error(error), devices=where)
    if not (hasattr(manager, "__enter__") and hasattr(manager, "__exit__")):
        fail(title, f"{name}(model) returned {type(manager).__name__}, not a context manager",
             hint="decorate a generator function with @contextlib.contextmanager (it yields the records), "
                  "or return an object with __enter__ and __exit__", devices=where)
    return manager


def _compare_records(title, where, name, model, acts, truth, truth_first):
    __tracebackhide__ = True
    if not isinstance(acts, Mapping):
        fail(title, f"`with {name}(model) as acts:` gave acts = {type(acts).__name__}, not a dict",
             hint="yield the dict your hooks fill (with @contextmanager), or return it from __enter__", devices=where)
    modules = dict(model.named_modules())
    missing = [n for n in truth if n not in acts]
    extra = [n for n in acts if n not in truth]
    details = [f"no record for {_module(n)} ({type_name(modules[n])})" for n in missing]
    for n in extra:
        if n in modules:
            details.append(f"recorded {_module(n)} ({type_name(modules[n])}), which has children: "
                           "record leaf modules only")
        else:
            details.append(f"recorded {n!r}, which is not a name from model.named_modules()")
    if details:
        fail(title, f"acts holds {plural(len(acts), 'record')}; the model has {plural(len(truth), 'leaf module')}",
             details, hint="a leaf module has no children (next(module.children(), None) is None); record every "
                           "one, with or without parameters, under its name from named_modules()", devices=where)
    order, fired = list(acts), list(truth)
    if order != fired:
        fail(title, "the records are not in the order the modules ran",
             [f"acts: {order}", f"ran:  {fired}"],
             hint="add a record when its hook fires (a dict keeps insertion order); do not fill the dict in advance "
                  "from named_modules(), whose order is the order of registration", devices=where)
    for n, expected in truth.items():
        record = acts[n]
        if not isinstance(record, torch.Tensor):
            fail(title, f"acts[{n!r}] is {type(record).__name__}, not a tensor",
                 hint="store one tensor per module: the output of the latest call", devices=where)
        if record.requires_grad or record.grad_fn is not None:
            fail(title, f"acts[{n!r}] is still attached to the autograd graph (requires_grad=True)",
                 hint="store output.detach().clone(): a record attached to the graph keeps the whole graph of its "
                      "call alive", devices=where)
        got = _outputs(record)
        if got.shape == expected.shape and torch.allclose(got, expected, **SAME):
            continue
        if got.shape == truth_first[n].shape and torch.allclose(got, truth_first[n], **SAME):
            fail(title, f"acts[{n!r}] holds the output of the first call, not the latest",
                 hint="overwrite the record each time the hook fires: acts[name] = ...", devices=where)
        inplace = [m for m, sub in model.named_modules() if getattr(sub, "inplace", False)]
        if got.shape == expected.shape and inplace:
            fail(title, f"acts[{n!r}] differs from the output of {_module(n)}: a later in-place operation wrote "
                        "into the tensor you stored",
                 [f"{_module(m)} ({type_name(model.get_submodule(m))}) works in place (inplace=True)" for m in inplace],
                 hint="store a copy: output.detach().clone() (detach() alone shares the memory)", devices=where)
        shape = f"shape {list(record.shape)}" if got.shape != expected.shape else "other values"
        fail(title, f"acts[{n!r}] does not hold the output of {_module(n)} ({shape})",
             hint="in a forward hook hook(module, args, output), store output (detached and cloned), not args",
             devices=where)


# --- gradient norms -------------------------------------------------------------------------------

@_check("gradient norms")
def check_grad_norms(watch: Callable, model, example, *, steps: int = 3, device):
    """``norms, handles = watch(model)``; after each backward, ``norms[name]`` has one more entry: the L2 norm
    of that trainable parameter's gradient. After ``handle.remove()`` on every handle, nothing is added."""
    __tracebackhide__ = True
    title, where = "gradient norms", str(device)
    name = _name(watch, "watch")
    m = _build(model, device, title).train()
    names = [n for n, _ in m.named_parameters()]
    before = hook_counts(m)
    try:
        made = watch(m)
    except Exception as error:  # the student's function: report any failure
        hint = ("register hooks only on parameters that require grad: skip frozen ones"
                if "doesn't require gradient" in str(error) else explain_error(error))
        fail(title, f"{name}(model) raised {describe_error(error)}", hint=hint, devices=where)
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], Mapping)
            and all(hasattr(h, "remove") for h in made[1])):
        fail(title, f"{name}(model) returned {type(made).__name__}, not (norms, handles)",
             hint="return the dict the hooks fill and the list of handles that the register_... calls return",
             devices=where)
    norms, handles = made
    inputs = _inputs(example, device)
    history = []
    for step in range(steps):
        m.zero_grad(set_to_none=True)
        batch = tuple(x * (1 + step) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)
        _backward(title, where, m, batch, f"step {step + 1} (forward, then backward)")
        truth = {n: torch.linalg.vector_norm(p.grad.detach().double()).item()
                 for n, p in m.named_parameters() if p.requires_grad and p.grad is not None}
        history.append(truth)
        _compare_norms(title, where, name, norms, history, names)
    _backward(title, where, m, inputs, "a step after removing the handles", before_remove=handles)
    grew = [n for n in norms if len(norms[n]) > steps]
    left = _leftovers(before, hook_counts(m))
    if grew or left:
        fail(title, f"after handle.remove() on every handle {name} returned, its hooks still run",
             [f"norms[{n!r}] got another entry" for n in grew] + left,
             hint="return every handle: handles.append(p.register_hook(...)) for each parameter", devices=where)
    tracked = list(history[0])
    return (f"{plural(len(tracked), 'trainable tensor')} tracked over {plural(steps, 'backward pass', 'backward passes')}, "
            f"hooks removed with the handles"), torch.tensor([[h[n] for n in tracked] for h in history])


def _backward(title, where, model, inputs, label, before_remove=None):
    __tracebackhide__ = True
    if before_remove is not None:
        for handle in before_remove:
            handle.remove()
    try:
        output = model(*inputs)
        _loss(output).backward()
    except Exception as error:  # the student's hooks run inside backward
        hint = ("a module with a full backward hook hands its output through a view that an in-place operation "
                "after it (such as nn.ReLU(inplace=True)) may not change: hook the parameters instead "
                "(p.register_hook)" if "BackwardHookFunction" in str(error) else
                "the error comes from a hook (yours run inside backward): " + explain_error(error))
        fail(title, f"{label} raised {describe_error(error)}", hint=hint, devices=where)


def _compare_norms(title, where, name, norms, history, names):
    """``history``: one {name: norm of .grad} per backward so far, for the parameters that got a gradient."""
    __tracebackhide__ = True
    k, trainable = len(history), list(history[0])
    missing = [n for n in trainable if n not in norms or len(norms[n]) == 0]
    extra = [n for n in norms if n not in trainable and (n not in names or len(norms[n]))]  # frozen: empty is fine
    crowded = [n for n in trainable if n in norms and len(norms[n]) > k]
    if missing and crowded:
        fail(title, f"after {plural(k, 'backward')}, some parameters have no norms and others have too many",
             [f"norms[{n!r}] has {len(norms[n])} entries" for n in crowded] + [f"no norms for `{n}`" for n in missing],
             hint="a lambda defined in a loop sees the loop variable's last value when it runs: bind it now, "
                  "lambda grad, name=name: ...", devices=where)
    if missing or extra:
        fail(title, f"norms has {plural(len(norms), 'name')}; the model has {plural(len(trainable), 'trainable parameter')}",
             [f"no norms for `{n}`" for n in missing] + [f"norms[{n!r}]: not a trainable parameter" for n in extra],
             hint="hook every parameter that requires grad, under its name from model.named_parameters()",
             devices=where)
    for n in trainable:
        entries = list(norms[n])
        if len(entries) != k:
            fail(title, f"after {plural(k, 'backward')}, norms[{n!r}] has {plural(len(entries), 'entry', 'entries')}",
                 hint="one hook per parameter, appending one norm per backward", devices=where)
        try:
            got = [float(v) for v in entries]
        except (TypeError, ValueError, RuntimeError):
            fail(title, f"norms[{n!r}] holds {type(entries[0]).__name__}, not numbers",
                 hint="append grad.norm().item(), a Python float", devices=where)
        want = [h[n] for h in history]
        close = functools.partial(torch.allclose, **NORMS)
        if close(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)):
            continue
        squared = close(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64) ** 2)
        fail(title, f"norms[{n!r}] is {_few(got)}, but the L2 norms of `{n}`.grad are {_few(want)}",
             hint=("those are squared norms: take grad.norm() (the square root of the sum of squares)" if squared else
                   "append the L2 norm of the gradient the hook receives: grad.norm().item() in a tensor hook "
                   "(p.register_hook), or p.grad.norm().item() in p.register_post_accumulate_grad_hook"),
             devices=where)


def _few(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


# --- validating inputs with a pre-hook ------------------------------------------------------------

@_check("input-validating pre-hook")
def check_pre_hook_validates(make_hook: Callable, model, features: int, example, *, device):
    """``make_hook(features)`` is a forward pre-hook: registered on the model, it leaves valid inputs alone,
    raises ValueError naming both sizes when the last dimension is not ``features``, and TypeError when the
    input is not a floating-point tensor; in both cases before forward runs."""
    __tracebackhide__ = True
    title, where = "input-validating pre-hook", str(device)
    name = _name(make_hook, "make_hook")
    m = _build(model, device, title).eval()
    try:
        hook = make_hook(features)
    except Exception as error:  # the student's function: report any failure
        fail(title, f"{name}({features}) raised {describe_error(error)}", hint=explain_error(error), devices=where)
    if not callable(hook):
        fail(title, f"{name}({features}) returned {type(hook).__name__}, not a hook",
             hint="define the hook inside and return it: def hook(module, args): ...", devices=where)
    good = _inputs(example, device)
    if not good or not isinstance(good[0], torch.Tensor) or good[0].shape[-1] != features:
        raise ValueError(f"the example's last dimension must be {features}")
    with torch.no_grad():
        truth = _outputs(copy.deepcopy(m)(*good))
    ran = []
    m.register_forward_pre_hook(hook)
    m.register_forward_pre_hook(lambda module, args: ran.append(True))  # runs after the student's hook
    shape = list(good[0].shape)
    try:
        with torch.no_grad():
            out = _outputs(m(*good))
    except Exception as error:  # the student's hook on a valid input
        fail(title, f"a valid input of shape {shape} raised {describe_error(error)}",
             hint="raise only for a wrong last dimension or a tensor that is not floating point", devices=where)
    if out.shape != truth.shape or not torch.allclose(out, truth, **SAME):
        fail(title, f"with the hook, the model's output for a valid input of shape {shape} changed",
             hint="a pre-hook that only checks returns None: whatever it returns replaces the input", devices=where)

    x = good[0]
    cases = [(x.new_zeros(*x.shape[:-1], size), size, ValueError) for size in sorted({features + 1, max(1, features - 1)})
             if size != features]
    cases.append((torch.ones(x.shape, dtype=torch.long, device=x.device), None, TypeError))
    for bad, size, wanted in cases:
        what = (f"an input of shape {list(bad.shape)} ({size} features, not {features})" if size else
                f"an input of dtype {bad.dtype}")
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
                 hint=_validation_hint(wanted, features, ran), devices=where)
        else:
            fail(title, f"{what} went through without an error",
                 hint=_validation_hint(wanted, features, ran), devices=where)
        if ran:
            fail(title, f"for {what}, the {wanted.__name__} came from forward, not from your hook",
                 hint=_validation_hint(wanted, features, ran), devices=where)
    return "passes valid inputs unchanged; rejects wrong sizes (ValueError) and dtypes (TypeError)", len(cases)


def _validation_hint(wanted, features, ran) -> str:
    if wanted is TypeError:
        return ("check the dtype first: raise TypeError unless isinstance(x, torch.Tensor) and x.is_floating_point()"
                + ("; your hook let it through, so forward ran and failed on its own" if ran else ""))
    return (f"compare x.shape[-1] (the last dimension, whatever the number of dimensions) with {features} and "
            "raise ValueError naming both" + ("; your hook let it through, so forward ran" if ran else ""))


# --- finding the first non-finite output --------------------------------------------------------------

@_check("first non-finite module")
def check_finds_first_nonfinite(find: Callable, model, example, *, device):
    """``find(model, *inputs)`` returns the name of the first module (in the order forward hooks fire) whose
    output holds NaN or Inf, or None when every output is finite; it leaves no hook behind.

    The check plants a NaN or an Inf in the output of several modules in turn, the model itself included."""
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
        left = _leftovers(before, hook_counts(m))
        if left:
            fail(title, f"{name} leaves hooks on the model", left,
                 hint="remove every handle before returning, in a finally: block", devices=where)
        if got != target:
            _wrong_module(title, where, name, m, order, target, value, got)
    planted = len(cases) - 1
    return (f"names the first of {len(order)} modules to output NaN or Inf ({planted} planted), None when all is "
            "finite, no hook left"), planted


def _plant(module: nn.Module, value: float):
    """Make ``module`` output ``value`` in its first element (the module's hooks see it, like any output)."""
    forward = module.forward

    def poisoned(*args, **kwargs):
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
                    "model.named_modules(), the model itself (name '') included")
        fail(title, f"{name} found nothing, but {label} outputs {bad}", hint=hint, devices=where)
    if got in order and order.index(got) > order.index(target):
        fail(title, f"{name} returned {got!r}, but {label} output {bad} first; later modules only inherit it",
             [f"forward hooks fired in this order: {order}"],
             hint="keep the first module whose output is not finite and ignore the rest (if first is None: ...)"
                  + ("; and test with torch.isfinite: torch.isnan misses Inf" if bad == "Inf" else ""),
             devices=where)
    fail(title, f"{name} returned {got!r}, but the first module to output {bad} is {label}",
         hint="test each module's output in a forward hook with torch.isfinite(output).all()", devices=where)


# --- models that use hooks ----------------------------------------------------------------------------

@_check("no hook leak")
def check_no_hook_leak(model, example, *, calls: int = 3, device):
    """Calling the model ``calls`` times adds no hook anywhere in its tree."""
    __tracebackhide__ = True
    title, where = "no hook leak", str(device)
    m = _build(model, device, title)
    inputs = _inputs(example, device)
    start = hook_counts(m)
    _calls_model(title, where, m, inputs)
    leaks = hook_leaks(m, lambda: m(*inputs), start, hook_counts(m), calls=calls)
    left = _leftovers(start, hook_counts(m))
    if leaks:
        fail(title, LEAK_PROBLEM, leaks, hint=LEAK_HINT, devices=where)
    total = sum(n for (w, _, _), n in hook_counts(m).items() if w != "*")
    summary = f"{plural(calls, 'call')} add no hook ({total} registered)"
    if left:
        summary = f"its hooks are registered on the first call only ({plural(calls, 'call')})"
    return summary, total


@_check("kept output")
def check_keeps_output(model, example, attribute: str, module: str, *, device):
    """After each call, ``model.<attribute>`` holds the output of the submodule named ``module`` in that call."""
    __tracebackhide__ = True
    title, where = "kept output", str(device)
    m = _build(model, device, title).eval()
    try:
        target = m.get_submodule(module)
    except AttributeError:
        raise ValueError(f"the model has no submodule {module!r}") from None
    inputs = _inputs(example, device)
    for k, batch in enumerate((inputs, _other(inputs)), start=1):
        seen = []
        handle = target.register_forward_hook(lambda mod, args, output: seen.append(_outputs(output)))
        try:
            _calls_model(title, where, m, batch, f"(call {k})")
        finally:
            handle.remove()
        if not seen:
            raise ValueError(f"submodule {module!r} does not run in forward")
        kept = getattr(m, attribute, None)
        if not isinstance(kept, torch.Tensor):
            fail(title, f"after call {k}, model.{attribute} is {type(kept).__name__}, not the output of `{module}`",
                 hint=f"store the output of `{module}` in self.{attribute} on every call (a forward hook registered "
                      "once in __init__ can do it)", devices=where)
        got = _outputs(kept)
        if got.shape != seen[-1].shape or not torch.allclose(got, seen[-1], **SAME):
            fail(title, f"after call {k}, model.{attribute} does not hold that call's output of `{module}`",
                 hint=f"store it on every call: self.{attribute} = output.detach()", devices=where)
    return f"model.{attribute} holds each call's output of `{module}`", seen[-1]
