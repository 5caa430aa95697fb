"""Checks on models that use hooks themselves (unit 05).

* ``check_no_hook_leak(model, example)``: calling the model does not add hooks.
* ``check_keeps_output(model, example, attribute, module)``: after each call, ``model.<attribute>`` holds that
  call's output of submodule ``module``, detached from autograd; the submodule must be called as
  ``module(...)``, so that hooks (the model's and anyone else's) see it.
"""

import torch
from torch import nn

from .hooks import SAME, _calls_model, _leftovers, _other
from .runner import (LEAK_HINT, LEAK_PROBLEM, _build, _check, _graph_leaves, _inputs, _outputs, _watching_calls,
                     hook_counts, hook_leaks)
from .report import fail, plural


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


def _ran_without_hooks(target: nn.Module, called: set, output) -> bool:
    """Did ``target`` take part in the call without being called as target(...)? Its children were called, or its
    own parameters are in the output's graph."""
    children = any(id(sub) in called for sub in target.modules() if sub is not target)
    used = _graph_leaves(output)
    return children or any(id(p) in used for p in target.parameters(recurse=False))


@_check("kept output")
def check_keeps_output(model, example, attribute: str, module: str, *, detached: bool = True, device):
    """After each call, ``model.<attribute>`` holds the output of the submodule named ``module`` in that call
    (with ``detached``, a tensor that no longer requires grad). The submodule must run as ``module(...)``."""
    __tracebackhide__ = True
    title, where = "kept output", str(device)
    m = _build(model, device, title).eval()
    try:
        target = m.get_submodule(module)
    except AttributeError:
        raise ValueError(f"the model has no submodule {module!r}") from None
    inputs = _inputs(example, device)
    for k, batch in enumerate((inputs, _other(inputs)), start=1):
        seen, called = [], set()
        handle = target.register_forward_hook(lambda mod, args, output: seen.append(_outputs(output)))
        try:
            with _watching_calls(called):
                output = _calls_model(title, where, m, batch, f"(call {k})")
        finally:
            handle.remove()
        if not seen:
            if _ran_without_hooks(target, called, output):
                fail(title, f"in call {k}, `{module}` ran without its hooks: it was never called as "
                            f"`self.{module}(...)`", [f"model.{attribute} is {type(getattr(m, attribute, None)).__name__}"],
                     hint=f"call the submodule as self.{module}(x): self.{module}.forward(x) skips every hook "
                          f"registered on it, the one that keeps its output included", devices=where)
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
        if detached and (kept.requires_grad or kept.grad_fn is not None):
            fail(title, f"after call {k}, model.{attribute} is still attached to the autograd graph "
                        f"(requires_grad=True)",
                 hint=f"store output.detach(): a kept tensor attached to the graph holds on to the whole graph of "
                      f"its call (every activation autograd saved) until the next call replaces it", devices=where)
    state = ", detached" if detached else ""
    return f"model.{attribute} holds each call's output of `{module}`{state}", seen[-1]
