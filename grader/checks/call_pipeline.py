"""Checks on what ``nn.Module.__call__`` does: a function that runs the call pipeline by hand (unit 06).

``check_call_pipeline(fn, model, example, parts=PARTS)``: ``fn(module, *args, **kwargs)`` does what
``module(*args, **kwargs)`` does. The check wraps the model in a probe module, registers hooks of every
kind that record what they see (global and module pre-hooks, forward hooks with and without kwargs,
always_call hooks, backward hooks), runs torch's call and ``fn`` the same way, and names the first
difference in the order of events, in the values a hook saw, in the output, or in the gradients. It
removes every hook it registered, also on failure.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn.modules import module as torch_module

from .runner import _build, _check, _inputs, _loss, _outputs
from .diagnose import describe_error, explain_error
from .report import fail, plural
from .pipeline_probe import PARTS, SCENARIOS, Delegated, Probe, Scenario, copy_values, same_values

__all__ = ["PARTS", "check_call_pipeline"]


@dataclass
class _Run:
    trace: list
    output: object = None
    error: BaseException | None = None
    grads: dict = field(default_factory=dict)


def _run(call: Callable, probe: Probe, x: torch.Tensor, scenario: Scenario, trace: list, guarded: bool) -> _Run:
    """One call of the probe through ``call``; then backward through the output (hook events land in the trace)."""
    trace.clear()
    probe.zero_grad(set_to_none=True)
    probe.explode = scenario.explode
    x = x.detach().clone().requires_grad_(scenario.input_grad)
    probe.guarded = guarded
    try:
        output = call(probe, x, **scenario.kwargs)
    except Delegated:
        raise
    except Exception as error:  # torch's call, or the student's function: both are compared
        return _Run(list(trace), error=error)
    finally:
        probe.guarded = False
    run = _Run(list(trace), output=copy_values(output))
    loss = _loss(output) if isinstance(output, torch.Tensor) else None
    if loss is not None and loss.requires_grad:
        try:
            loss.backward()
        except Exception as error:  # the student's wiring of backward hooks runs here
            run.error = error
            run.trace = list(trace)
            return run
        run.trace = list(trace)
        run.grads = {n: copy_values(p.grad) for n, p in probe.named_parameters()}
        if scenario.input_grad:
            run.grads["the input x"] = copy_values(x.grad)
    return run


def _torch_call(module, *args, **kwargs):
    return module(*args, **kwargs)


# Where to look, for each kind of event the student's call got wrong.
_ORDER_HINTS = {
    "global pre-hook": "global pre-hooks (torch.nn.modules.module._global_forward_pre_hooks) run first, before the "
                       "module's own pre-hooks",
    "pre-hook": "run every hook in module._forward_pre_hooks, in the dict's order (prepend=True puts a hook first in "
                "the dict), after the global ones and before forward",
    "forward": "call module.forward(*args, **kwargs) once, after every pre-hook",
    "global forward hook": "after forward, run the global forward hooks "
                           "(torch.nn.modules.module._global_forward_hooks) first, then the module's own "
                           "(module._forward_hooks)",
    "forward hook": "after forward, run every hook in module._forward_hooks, in the dict's order, after the global "
                    "ones",
}
_BACKWARD_HINT = ("backward hooks are wired during the call: after the pre-hooks, "
                  "full, _ = module._get_backward_hooks() and pre = module._get_backward_pre_hooks(); if either is "
                  "non-empty, bw = "
                  "torch.utils.hooks.BackwardHook(module, full, pre) and args = bw.setup_input_hook(args); after the "
                  "forward hooks, result = bw.setup_output_hook(result)")
_ALWAYS_HINT = ("when forward or a hook raises, run the forward hooks registered with always_call=True (their ids "
                "are keys of torch.nn.modules.module._global_forward_hooks_always_called and "
                "module._forward_hooks_always_called; global ones first) that have not run yet, with the result so far "
                "(None if forward raised; a module hook registered with_kwargs=True as hook(module, args, kwargs, "
                "result)), then re-raise the error (`raise`)")
_TWICE_HINT = ("torch runs each hook at most once per call: note every always_call hook as it starts in the normal "
               "path (a set of hook ids), and when an error sends you to the always_call step, skip the ones that "
               "already ran")


def _hint_for(kind: str, scenario: Scenario) -> str:
    if "backward" in kind:
        return _BACKWARD_HINT
    if scenario.error is not None and kind in ("forward hook", "global forward hook"):
        return _ALWAYS_HINT
    return _ORDER_HINTS.get(kind, "")


def _arrow(trace) -> str:
    return " → ".join(e.label() for e in trace) or "(nothing)"


def _out_of_order(theirs: _Run, yours: _Run) -> bool:
    """Did the student's call run something torch does not run at that point (before it stopped)?"""
    want, got = [e.key for e in theirs.trace], [e.key for e in yours.trace]
    return got != want[:len(got)]


def _compare_order(title, where, name, scenario, theirs: _Run, yours: _Run):
    __tracebackhide__ = True
    want, got = [e.key for e in theirs.trace], [e.key for e in yours.trace]
    if want == got:
        return
    labels = {e.key: e.label() for e in theirs.trace + yours.trace}
    i = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    ended = f", then raised {describe_error(yours.error)}" if yours.error is not None and scenario.error is None else ""
    details = [f"torch: {_arrow(theirs.trace)}", f"yours: {_arrow(yours.trace)}{ended}"]
    details += [f"`{hook}`: {what}" for hook, what in scenario.does.items()]
    if i == len(got):  # yours stopped early
        missing = want[i]
        problem = (f"{name} never ran {labels[missing]}" if missing not in got else
                   f"{name} stopped after {labels[got[-1]]}; torch then runs {labels[missing]}")
        fail(title, problem, details, hint=_hint_for(missing[0], scenario), devices=where)
    if i == len(want):  # yours ran more
        extra = got[i]
        after = labels[want[-1]] if want else "the call"
        if extra in want:
            fail(title, f"{name} ran {labels[extra]} a second time, after {after}; torch runs it once", details,
                 hint=_TWICE_HINT if scenario.error is not None else _hint_for(extra[0], scenario), devices=where)
        fail(title, f"{name} ran {labels[extra]} after {after}, which torch does not", details,
             hint=_hint_for(extra[0], scenario), devices=where)
    expected, ran = want[i], got[i]
    if ran in got[:i] and want.count(ran) < got.count(ran):
        fail(title, f"{name} ran {labels[ran]} a second time, after {labels[got[i - 1]]}; torch runs it once",
             details, hint=_TWICE_HINT if scenario.error is not None else _hint_for(ran[0], scenario),
             devices=where)
    if ran not in want:
        fail(title, f"{name} ran {labels[ran]}, which torch does not run here ({labels[expected]} comes next)",
             details, hint=_hint_for(ran[0], scenario), devices=where)
    if expected not in got and not ended:  # a call that went to its end without it
        fail(title, f"{name} never ran {labels[expected]}", details, hint=_hint_for(expected[0], scenario),
             devices=where)
    fail(title, f"{name} ran {labels[ran]} before {labels[expected]}", details,
         hint=_hint_for(expected[0], scenario), devices=where)


_VALUE_HINTS = {
    "args": ("a pre-hook that returns something replaces args for everything after it: a tuple as is, any other "
             "value wrapped as (value,); forward and the forward hooks get those final args"),
    "kwargs": ("a pre-hook registered with_kwargs=True is called as hook(module, args, kwargs) and may return a new "
               "(args, kwargs) pair; forward and the with_kwargs forward hooks get the final kwargs"),
    "output": ("a forward hook that returns something replaces the output, for the hooks after it and for the caller; "
               "after an error, always_call hooks get the result so far (None when forward itself raised)"),
    "grad_output": ("grad_output is the gradient of the output the caller gets: wrap the output with "
                    "bw.setup_output_hook(result) after the forward hooks have run, not before"),
    "grad_input": ("grad_input is the gradient of the args forward gets: wrap them with bw.setup_input_hook(args) "
                   "after the pre-hooks have run, just before forward"),
}


def _compare_values(title, where, name, scenario, theirs: _Run, yours: _Run):
    __tracebackhide__ = True
    for want, got in zip(theirs.trace, yours.trace):
        for what, value in want.seen.items():
            if not same_values(value, got.seen.get(what)):
                fail(title, f"with {name}, {want.label()} got other {what} than torch gives it",
                     [f"`{hook}`: {does}" for hook, does in scenario.does.items()],
                     hint=_VALUE_HINTS[what], devices=where)


def _compare_results(title, where, name, scenario, theirs: _Run, yours: _Run):
    __tracebackhide__ = True
    if not same_values(theirs.output, yours.output):
        fail(title, f"{name} returns another output than torch's module(...)",
             [f"`{hook}`: {does}" for hook, does in scenario.does.items()],
             hint="return the output as the last forward hook left it: a hook's return value, when not None, "
                  "replaces it", devices=where)
    for param, grad in theirs.grads.items():
        if not same_values(grad, yours.grads.get(param)):
            fail(title, f"after backward through {name}'s output, `{param}` has another gradient than with "
                        "torch's call", hint=_BACKWARD_HINT if scenario.name == "backward" else
                 "the output must be computed by forward (and the hooks) from the call's tensors, so that "
                 "autograd records the same graph", devices=where)


def _compare_errors(title, where, name, scenario, theirs: _Run, yours: _Run):
    __tracebackhide__ = True
    if scenario.error is not None:
        source = "forward" if scenario.explode else "a forward hook"
        if yours.error is None:
            fail(title, f"{source} raised an error, but {name} returned normally",
                 hint=f"the caller must get the error of {source}: run the always_call hooks, then re-raise it "
                      "(`raise`)", devices=where)
        if not isinstance(yours.error, scenario.error):
            fail(title, f"{source} raised {scenario.error.__name__}, but {name} raised {describe_error(yours.error)} "
                        "instead", hint=_error_hint(yours.error), devices=where)
        return
    if yours.error is not None:
        fail(title, f"{name}(module, x{', scale=0.5' if scenario.kwargs else ''}) raised "
                    f"{describe_error(yours.error)}; torch's call does not",
             [f"`{hook}`: {does}" for hook, does in scenario.does.items()],
             hint=_error_hint(yours.error), devices=where)


def _error_hint(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, TypeError) and text.startswith("Probe.forward()"):
        return ("forward got the wrong arguments: a pre-hook that returns a single value (not a tuple) replaces args "
                "with (value,); a tuple replaces args as it is. Then call module.forward(*args, **kwargs)")
    if isinstance(error, TypeError) and "positional argument" in text:
        return ("a hook registered with with_kwargs=True is called as hook(module, args, kwargs) (a pre-hook) or "
                "hook(module, args, kwargs, output) (a forward hook); the others without kwargs. Its id is a key of "
                "module._forward_pre_hooks_with_kwargs or module._forward_hooks_with_kwargs (and, for global forward "
                "hooks, torch.nn.modules.module._global_forward_hooks_with_kwargs)")
    if "setup_output_hook" in text or "setup_input_hook" in text or "BackwardHook" in text:
        return _BACKWARD_HINT
    return explain_error(error)


@_check("call pipeline")
def check_call_pipeline(fn: Callable, model, example, *, parts=PARTS, device):
    """``fn(module, *args, **kwargs)`` runs the same hooks, in the same order, with the same values, as
    ``module(*args, **kwargs)``, and returns the same output with the same gradients."""
    __tracebackhide__ = True
    title, where = "call pipeline", str(device)
    name = getattr(fn, "__name__", "your function")
    unknown = [p for p in parts if p not in SCENARIOS]
    if unknown:
        raise ValueError(f"check_call_pipeline: unknown parts {unknown}; choose from {list(PARTS)}")
    x = _inputs(example, device)[0]
    hooks = 0
    fingerprint = None
    scenarios = [lambda: Scenario("plain", [])] + [make for part in parts for make in SCENARIOS[part]]
    for make in scenarios:
        scenario = make()
        trace: list = []
        probe = Probe(_build(model, device, title), trace).to(device)
        handles = []
        try:
            for _, _, register in scenario.hooks:
                handles.append(register(probe, trace))
            theirs = _run(_torch_call, probe, x, scenario, trace, guarded=False)
            try:
                yours = _run(fn, probe, x, scenario, trace, guarded=True)
            except Delegated:
                fail(title, f"{name} calls module(...) itself, which runs torch's own pipeline",
                     hint="do its work instead: run the hooks from the hook dicts and call module.forward(*args, "
                          "**kwargs)", devices=where)
        finally:
            for handle in handles:
                handle.remove()
                # torch 2.13's handle of a global with_kwargs forward hook leaves its flag behind: take it out too
                torch_module._global_forward_hooks_with_kwargs.pop(handle.id, None)
                torch_module._global_forward_hooks_always_called.pop(handle.id, None)
        if theirs.error is not None and not isinstance(theirs.error, scenario.error or ()):
            raise RuntimeError(f"check_call_pipeline: torch's own call raised {describe_error(theirs.error)}; "
                               "the model and example do not fit") from theirs.error
        if isinstance(yours.error, NotImplementedError):
            fail(title, f"{name} raised NotImplementedError", hint=explain_error(yours.error), devices=where)
        if yours.error is not None and scenario.error is None and _out_of_order(theirs, yours):
            _compare_order(title, where, name, scenario, theirs, yours)  # the order explains the error
        _compare_errors(title, where, name, scenario, theirs, yours)
        _compare_order(title, where, name, scenario, theirs, yours)
        _compare_values(title, where, name, scenario, theirs, yours)
        _compare_results(title, where, name, scenario, theirs, yours)
        hooks += len(scenario.hooks)
        if scenario.name == "plain":
            fingerprint = _outputs(theirs.output)
    covered = ", ".join(parts)
    return (f"{name} matches module(...) with {plural(hooks, 'hook')} ({covered}): order, values, output and "
            f"gradients"), fingerprint
