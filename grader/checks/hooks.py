"""Checks on hook utilities that students write (unit 05), and the helpers the other hook checks share.

Each check builds the model itself, runs the student's code on it, and compares with what torch
reports when the check asks it directly: outputs captured by the check's own hooks, ``.grad``
after backward, the hook dicts before and after. Like every check, it prints one verdict line or
raises CheckFailed with a diagnosis.

* ``check_records_activations(recorder, model, example)``: ``with recorder(model) as acts:`` records
  every leaf module's latest output, in firing order, and removes its hooks on exit, even on errors.
* ``check_grad_norms(watch, model, example)``: ``norms, handles = watch(model)``; every backward
  appends each trainable parameter's gradient norm, as a Python float; removing the handles stops it.

hook_guards holds the checks on a validating pre-hook and on a NaN hunter; hooked_models the checks on
models that use hooks (no leak, a kept output).
"""

import copy
import functools
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .runner import _build, _check, _inputs, _loss, _outputs, hook_counts
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
        hint = ("a leaf module has no children (next(module.children(), None) is None); record every one, with or "
                "without parameters, under its name from named_modules()")
        registered = [n for n in modules if n in truth]
        if len(truth) > 1 and list(acts) == registered[-1:]:
            hint = ("acts holds only the last leaf's name: a hook made in a loop (a lambda or a def) that reads the "
                    "loop variable sees its last value when it runs; bind it now: lambda module, args, output, "
                    "name=name: ..., or functools.partial(keep, name)")
        fail(title, f"acts holds {plural(len(acts), 'record')}; the model has {plural(len(truth), 'leaf module')}",
             details, hint=hint, devices=where)
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
    grew = [n for n, v in norms.items() if isinstance(v, list) and len(v) > steps]
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
        if isinstance(error, AttributeError) and "'NoneType'" in str(error):
            hint = ("the error comes from a hook (yours run inside backward). If it reads p.grad: a tensor hook "
                    "(p.register_hook) runs before p.grad is set, so use the gradient it receives as its argument, "
                    "or p.register_post_accumulate_grad_hook, which runs once p.grad is set")
        fail(title, f"{label} raised {describe_error(error)}", hint=hint, devices=where)


def _compare_norms(title, where, name, norms, history, names):
    """``history``: one {name: norm of .grad} per backward so far, for the parameters that got a gradient."""
    __tracebackhide__ = True
    for n, value in norms.items():
        if not isinstance(value, list):
            fail(title, f"norms[{n!r}] is {type(value).__name__}, not a list of norms",
                 hint="give each parameter an empty list and append one norm per backward (norms[name].append(...)): "
                      "assigning norms[name] = ... keeps only the latest", devices=where)
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
        odd = [v for v in entries if not isinstance(v, float)]
        if odd:
            attached = any(isinstance(v, torch.Tensor) and (v.requires_grad or v.grad_fn is not None) for v in odd)
            kind = "torch.Tensor" if isinstance(odd[0], torch.Tensor) else type(odd[0]).__name__
            fail(title, f"norms[{n!r}] holds {kind} values, not Python floats"
                        + (", attached to the autograd graph" if attached else ""),
                 hint="append grad.norm().item(): .item() turns a one-element tensor into a Python float. A tensor kept "
                      "in a list holds its memory (on the GPU too)" + (", and one attached to the graph holds the whole "
                      "graph of its backward" if attached else ""), devices=where)
        got = list(entries)
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
