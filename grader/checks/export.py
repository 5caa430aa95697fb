"""Checks on what ``nn.Module.__call__`` does, and on ``torch.export``.

* ``check_call_pipeline(fn, model, example, parts=PARTS)``: ``fn(module, *args, **kwargs)`` does what
  ``module(*args, **kwargs)`` does. The check wraps the model in a probe module, registers hooks of every
  kind that record what they see (global and module pre-hooks, forward hooks with and without kwargs,
  always_call hooks, backward hooks), runs torch's call and ``fn`` the same way, and names the first
  difference in the order of events, in the values a hook saw, in the output, or in the gradients. It
  removes every hook it registered, also on failure.
* ``check_export_agrees(model, example, batch_sizes)``: ``torch.export.export`` with a dynamic batch
  dimension succeeds, and the exported program agrees with eager ``forward`` for every batch size. Export
  errors (specialised sizes, data-dependent branches, torch.cond mistakes) are explained in the student's
  terms.
"""

import contextlib
import inspect
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from .runner import SEED, _build, _check, _inputs, _loss, _outputs
from .diagnose import describe_error, explain_error, type_name
from .report import fail, plural

PARTS = ("forward", "kwargs", "always_call", "backward")
# The exported graph runs the same kernels as eager, sometimes in another order.
EXPORT_AGREEMENT = {"rtol": 1e-5, "atol": 1e-6}


# --- the call pipeline: a probe module and hooks that record what they see ------------------------

class _ForwardError(Exception):
    """Raised by the probe's forward on purpose, to see what the call does with always_call hooks."""


class _Delegated(BaseException):
    """Raised when the function under test calls module(...) itself (not an Exception: it must not be caught)."""


@dataclass
class _Event:
    kind: str           # "pre-hook", "forward", "forward hook", "backward hook", ...
    name: str           # the hook's name, as the check registered it
    seen: dict = field(default_factory=dict)  # what it received: args, kwargs, output, grad_output, ...

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name

    def label(self) -> str:
        return "forward()" if self.kind == "forward" else f"{self.kind} `{self.name}`"


class _Probe(nn.Module):
    """The module the check calls: ``forward(x, *, scale=1.0)`` records its arguments, then runs the model."""

    def __init__(self, inner: nn.Module, trace: list):
        super().__init__()
        self.inner = inner
        self.trace = trace
        self.explode = False
        self.guarded = False

    def forward(self, x, *, scale=1.0):
        self.trace.append(_Event("forward", "forward", {"args": _copy((x,)), "kwargs": {"scale": scale}}))
        if self.explode:
            raise _ForwardError("raised on purpose by the check's forward, to test always_call hooks")
        return self.inner(x) * scale

    def _call_impl(self, *args, **kwargs):
        if self.guarded:
            raise _Delegated
        return super()._call_impl(*args, **kwargs)


def _copy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return tuple(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.device == b.device and torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@dataclass
class _Scenario:
    """Hooks to register on the probe, and how to call it."""

    name: str
    hooks: list[tuple[str, str, Callable]]  # (kind, name, register(probe, trace) -> handle)
    kwargs: dict = field(default_factory=dict)
    explode: bool = False
    input_grad: bool = False
    does: dict = field(default_factory=dict)  # hook name -> what it does, for the diagnosis


def _only(probe, fn):
    """Global hooks fire for every module; record only the probe's calls."""
    def hook(module, *rest):
        if module is probe:
            return fn(module, *rest)
    return _named(hook, fn.__name__)


def _named(hook, name: str):
    """Give a hook the name the diagnosis uses, so that torch's own TypeErrors name it too."""
    hook.__name__ = hook.__qualname__ = name
    return hook


def _forward_scenario() -> _Scenario:
    def glob_pre(probe, trace):
        def hook(module, args):
            trace.append(_Event("global pre-hook", "global_pre", {"args": _copy(args)}))
        return torch_module.register_module_forward_pre_hook(_only(probe, _named(hook, "forward")))

    def pre_scale(probe, trace):
        def hook(module, args):
            trace.append(_Event("pre-hook", "pre_scale", {"args": _copy(args)}))
            return args[0] * 2  # a single value: torch wraps it in a tuple
        return probe.register_forward_pre_hook(_named(hook, "pre_scale"))

    def pre_look(probe, trace):
        def hook(module, args):
            trace.append(_Event("pre-hook", "pre_look", {"args": _copy(args)}))
        return probe.register_forward_pre_hook(_named(hook, "pre_look"))

    def pre_first(probe, trace):
        def hook(module, args):
            trace.append(_Event("pre-hook", "pre_first", {"args": _copy(args)}))
            return (args[0] - 1,)
        return probe.register_forward_pre_hook(_named(hook, "pre_first"), prepend=True)

    def glob_post(probe, trace):
        def hook(module, args, output):
            trace.append(_Event("global forward hook", "global_post", {"args": _copy(args), "output": _copy(output)}))
        return torch_module.register_module_forward_hook(_only(probe, _named(hook, "global_post")))

    def post_shift(probe, trace):
        def hook(module, args, output):
            trace.append(_Event("forward hook", "post_shift", {"args": _copy(args), "output": _copy(output)}))
            return output + 1
        return probe.register_forward_hook(_named(hook, "post_shift"))

    def post_look(probe, trace):
        def hook(module, args, output):
            trace.append(_Event("forward hook", "post_look", {"args": _copy(args), "output": _copy(output)}))
        return probe.register_forward_hook(_named(hook, "post_look"))

    return _Scenario("forward", [
        ("global pre-hook", "global_pre", glob_pre), ("pre-hook", "pre_scale", pre_scale),
        ("pre-hook", "pre_look", pre_look), ("pre-hook", "pre_first", pre_first),
        ("global forward hook", "global_post", glob_post), ("forward hook", "post_shift", post_shift),
        ("forward hook", "post_look", post_look),
    ], does={
        "global_pre": "registered with torch.nn.modules.module.register_module_forward_pre_hook; returns None",
        "pre_first": "registered last, with prepend=True; returns (args[0] - 1,)",
        "pre_scale": "returns args[0] * 2, a single tensor, not a tuple",
        "pre_look": "returns None",
        "global_post": "registered with register_module_forward_hook; returns None",
        "post_shift": "returns output + 1",
        "post_look": "returns None",
    })


def _kwargs_scenario() -> _Scenario:
    def pre_kwargs(probe, trace):
        def hook(module, args, kwargs):
            trace.append(_Event("pre-hook", "pre_kwargs", {"args": _copy(args), "kwargs": dict(kwargs)}))
            return args, {**kwargs, "scale": kwargs.get("scale", 1.0) * 3}
        return probe.register_forward_pre_hook(_named(hook, "pre_kwargs"), with_kwargs=True)

    def pre_plain(probe, trace):
        def hook(module, args):
            trace.append(_Event("pre-hook", "pre_plain", {"args": _copy(args)}))
        return probe.register_forward_pre_hook(_named(hook, "pre_plain"))

    def post_kwargs(probe, trace):
        def hook(module, args, kwargs, output):
            trace.append(_Event("forward hook", "post_kwargs",
                                {"args": _copy(args), "kwargs": dict(kwargs), "output": _copy(output)}))
            return output - 0.5
        return probe.register_forward_hook(_named(hook, "post_kwargs"), with_kwargs=True)

    def glob_kwargs(probe, trace):
        def hook(module, args, kwargs, output):
            trace.append(_Event("global forward hook", "global_kwargs",
                                {"args": _copy(args), "kwargs": dict(kwargs), "output": _copy(output)}))
        return torch_module.register_module_forward_hook(_only(probe, _named(hook, "global_kwargs")), with_kwargs=True)

    def post_plain(probe, trace):
        def hook(module, args, output):
            trace.append(_Event("forward hook", "post_plain", {"args": _copy(args), "output": _copy(output)}))
        return probe.register_forward_hook(_named(hook, "post_plain"))

    return _Scenario("kwargs", [
        ("pre-hook", "pre_kwargs", pre_kwargs), ("pre-hook", "pre_plain", pre_plain),
        ("global forward hook", "global_kwargs", glob_kwargs),
        ("forward hook", "post_kwargs", post_kwargs), ("forward hook", "post_plain", post_plain),
    ], kwargs={"scale": 0.5}, does={
        "pre_kwargs": "with_kwargs=True; returns (args, kwargs with scale tripled)",
        "pre_plain": "returns None",
        "global_kwargs": "register_module_forward_hook(..., with_kwargs=True); returns None",
        "post_kwargs": "with_kwargs=True; returns output - 0.5",
        "post_plain": "returns None",
    })


def _always_call_scenario() -> _Scenario:
    def pre_look(probe, trace):
        def hook(module, args):
            trace.append(_Event("pre-hook", "pre_look", {"args": _copy(args)}))
        return probe.register_forward_pre_hook(_named(hook, "pre_look"))

    def post_plain(probe, trace):
        def hook(module, args, output):
            trace.append(_Event("forward hook", "post_plain", {"output": _copy(output)}))
        return probe.register_forward_hook(_named(hook, "post_plain"))

    def post_always(probe, trace):
        def hook(module, args, output):
            trace.append(_Event("forward hook", "post_always", {"args": _copy(args), "output": _copy(output)}))
        return probe.register_forward_hook(_named(hook, "post_always"), always_call=True)

    def post_always_kwargs(probe, trace):
        def hook(module, args, kwargs, output):
            trace.append(_Event("forward hook", "post_always_kwargs",
                                {"args": _copy(args), "kwargs": dict(kwargs), "output": _copy(output)}))
        return probe.register_forward_hook(_named(hook, "post_always_kwargs"), always_call=True, with_kwargs=True)

    def glob_always(probe, trace):
        def hook(module, args, output):
            trace.append(_Event("global forward hook", "global_always", {"args": _copy(args), "output": _copy(output)}))
        return torch_module.register_module_forward_hook(_only(probe, _named(hook, "global_always")), always_call=True)

    return _Scenario("always_call", [
        ("pre-hook", "pre_look", pre_look), ("forward hook", "post_plain", post_plain),
        ("forward hook", "post_always", post_always), ("forward hook", "post_always_kwargs", post_always_kwargs),
        ("global forward hook", "global_always", glob_always),
    ], explode=True, does={
        "pre_look": "returns None",
        "post_plain": "an ordinary forward hook",
        "post_always": "registered with always_call=True",
        "post_always_kwargs": "registered with always_call=True and with_kwargs=True",
        "global_always": "register_module_forward_hook(..., always_call=True)",
    })


def _backward_scenario() -> _Scenario:
    def pre_scale(probe, trace):
        def hook(module, args):
            trace.append(_Event("pre-hook", "pre_scale", {"args": _copy(args)}))
            return (args[0] * 2,)
        return probe.register_forward_pre_hook(_named(hook, "pre_scale"))

    def post_double(probe, trace):
        def hook(module, args, output):
            trace.append(_Event("forward hook", "post_double", {"output": _copy(output)}))
            return output * 2
        return probe.register_forward_hook(_named(hook, "post_double"))

    def backward_pre(probe, trace):
        def hook(module, grad_output):
            trace.append(_Event("backward pre-hook", "backward_pre", {"grad_output": _copy(grad_output)}))
        return probe.register_full_backward_pre_hook(_named(hook, "backward_pre"))

    def glob_backward_pre(probe, trace):
        def hook(module, grad_output):
            trace.append(_Event("global backward pre-hook", "global_backward_pre", {"grad_output": _copy(grad_output)}))
        return torch_module.register_module_full_backward_pre_hook(_only(probe, _named(hook, "global_backward_pre")))

    def backward_hook(probe, trace):
        def hook(module, grad_input, grad_output):
            trace.append(_Event("backward hook", "backward_hook",
                                {"grad_input": _copy(grad_input), "grad_output": _copy(grad_output)}))
        return probe.register_full_backward_hook(_named(hook, "backward_hook"))

    return _Scenario("backward", [
        ("pre-hook", "pre_scale", pre_scale), ("forward hook", "post_double", post_double),
        ("global backward pre-hook", "global_backward_pre", glob_backward_pre),
        ("backward pre-hook", "backward_pre", backward_pre), ("backward hook", "backward_hook", backward_hook),
    ], input_grad=True, does={
        "pre_scale": "returns (args[0] * 2,)",
        "post_double": "returns output * 2",
        "global_backward_pre": "register_module_full_backward_pre_hook; records grad_output",
        "backward_pre": "register_full_backward_pre_hook; records grad_output",
        "backward_hook": "register_full_backward_hook; records grad_input and grad_output",
    })


_SCENARIOS = {"forward": _forward_scenario, "kwargs": _kwargs_scenario, "always_call": _always_call_scenario,
              "backward": _backward_scenario}


@dataclass
class _Run:
    trace: list
    output: object = None
    error: BaseException | None = None
    grads: dict = field(default_factory=dict)


def _run(call: Callable, probe: _Probe, x: torch.Tensor, scenario: _Scenario, trace: list, guarded: bool) -> _Run:
    """One call of the probe through ``call``; then backward through the output (hook events land in the trace)."""
    trace.clear()
    probe.zero_grad(set_to_none=True)
    probe.explode = scenario.explode
    x = x.detach().clone().requires_grad_(scenario.input_grad)
    probe.guarded = guarded
    try:
        output = call(probe, x, **scenario.kwargs)
    except _Delegated:
        raise
    except Exception as error:  # torch's call, or the student's function: both are compared
        return _Run(list(trace), error=error)
    finally:
        probe.guarded = False
    run = _Run(list(trace), output=_copy(output))
    loss = _loss(output) if isinstance(output, torch.Tensor) else None
    if loss is not None and loss.requires_grad:
        try:
            loss.backward()
        except Exception as error:  # the student's wiring of backward hooks runs here
            run.error = error
            run.trace = list(trace)
            return run
        run.trace = list(trace)
        run.grads = {n: _copy(p.grad) for n, p in probe.named_parameters()}
        if scenario.input_grad:
            run.grads["the input x"] = _copy(x.grad)
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
_ALWAYS_HINT = ("when forward raises, run the forward hooks registered with always_call=True (their ids are keys of "
                "torch.nn.modules.module._global_forward_hooks_always_called and module._forward_hooks_always_called; "
                "global ones first) that have not run yet, with output=None (a module hook registered "
                "with_kwargs=True as hook(module, args, kwargs, None)), then re-raise the error (`raise`)")


def _hint_for(kind: str, scenario: _Scenario) -> str:
    if "backward" in kind:
        return _BACKWARD_HINT
    if scenario.explode and kind in ("forward hook", "global forward hook"):
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
    ended = f", then raised {describe_error(yours.error)}" if yours.error is not None and not scenario.explode else ""
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
        fail(title, f"{name} ran {labels[extra]} after {after}, which torch does not", details,
             hint=_hint_for(extra[0], scenario), devices=where)
    expected, ran = want[i], got[i]
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
               "when forward raised, always_call hooks get output=None"),
    "grad_output": ("grad_output is the gradient of the output the caller gets: wrap the output with "
                    "bw.setup_output_hook(result) after the forward hooks have run, not before"),
    "grad_input": ("grad_input is the gradient of the args forward gets: wrap them with bw.setup_input_hook(args) "
                   "after the pre-hooks have run, just before forward"),
}


def _compare_values(title, where, name, scenario, theirs: _Run, yours: _Run):
    __tracebackhide__ = True
    for want, got in zip(theirs.trace, yours.trace):
        for what, value in want.seen.items():
            if not _same(value, got.seen.get(what)):
                fail(title, f"with {name}, {want.label()} got other {what} than torch gives it",
                     [f"`{hook}`: {does}" for hook, does in scenario.does.items()],
                     hint=_VALUE_HINTS[what], devices=where)


def _compare_results(title, where, name, scenario, theirs: _Run, yours: _Run):
    __tracebackhide__ = True
    if not _same(theirs.output, yours.output):
        fail(title, f"{name} returns another output than torch's module(...)",
             [f"`{hook}`: {does}" for hook, does in scenario.does.items()],
             hint="return the output as the last forward hook left it: a hook's return value, when not None, "
                  "replaces it", devices=where)
    for param, grad in theirs.grads.items():
        if not _same(grad, yours.grads.get(param)):
            fail(title, f"after backward through {name}'s output, `{param}` has another gradient than with "
                        "torch's call", hint=_BACKWARD_HINT if scenario.name == "backward" else
                 "the output must be computed by forward (and the hooks) from the call's tensors, so that "
                 "autograd records the same graph", devices=where)


def _compare_errors(title, where, name, scenario, theirs: _Run, yours: _Run):
    __tracebackhide__ = True
    if scenario.explode:
        if yours.error is None:
            fail(title, f"forward raised an error, but {name} returned normally",
                 hint="the caller must get forward's error: run the always_call hooks, then re-raise it (`raise`)",
                 devices=where)
        if not isinstance(yours.error, _ForwardError):
            fail(title, f"forward raised _ForwardError, but {name} raised {describe_error(yours.error)} instead",
                 hint=_error_hint(yours.error), devices=where)
        return
    if yours.error is not None:
        fail(title, f"{name}(module, x{', scale=0.5' if scenario.kwargs else ''}) raised "
                    f"{describe_error(yours.error)}; torch's call does not",
             [f"`{hook}`: {does}" for hook, does in scenario.does.items()],
             hint=_error_hint(yours.error), devices=where)


def _error_hint(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, TypeError) and text.startswith("_Probe.forward()"):
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
    unknown = [p for p in parts if p not in _SCENARIOS]
    if unknown:
        raise ValueError(f"check_call_pipeline: unknown parts {unknown}; choose from {list(PARTS)}")
    x = _inputs(example, device)[0]
    hooks = 0
    fingerprint = None
    for part in ("plain", *parts):
        scenario = _Scenario("plain", []) if part == "plain" else _SCENARIOS[part]()
        trace: list = []
        probe = _Probe(_build(model, device, title), trace).to(device)
        handles = []
        try:
            for _, _, register in scenario.hooks:
                handles.append(register(probe, trace))
            theirs = _run(_torch_call, probe, x, scenario, trace, guarded=False)
            try:
                yours = _run(fn, probe, x, scenario, trace, guarded=True)
            except _Delegated:
                fail(title, f"{name} calls module(...) itself, which runs torch's own pipeline",
                     hint="do its work instead: run the hooks from the hook dicts and call module.forward(*args, "
                          "**kwargs)", devices=where)
        finally:
            for handle in handles:
                handle.remove()
                # torch 2.13's handle of a global with_kwargs forward hook leaves its flag behind: take it out too
                torch_module._global_forward_hooks_with_kwargs.pop(handle.id, None)
        if theirs.error is not None and not scenario.explode:
            raise RuntimeError(f"check_call_pipeline: torch's own call raised {describe_error(theirs.error)}; "
                               "the model and example do not fit") from theirs.error
        if isinstance(yours.error, NotImplementedError):
            fail(title, f"{name} raised NotImplementedError", hint=explain_error(yours.error), devices=where)
        if yours.error is not None and not scenario.explode and _out_of_order(theirs, yours):
            _compare_order(title, where, name, scenario, theirs, yours)  # the order explains the error
        _compare_errors(title, where, name, scenario, theirs, yours)
        _compare_order(title, where, name, scenario, theirs, yours)
        _compare_values(title, where, name, scenario, theirs, yours)
        _compare_results(title, where, name, scenario, theirs, yours)
        hooks += len(scenario.hooks)
        if part == "plain":
            fingerprint = _outputs(theirs.output)
    covered = ", ".join(parts)
    return (f"{name} matches module(...) with {plural(hooks, 'hook')} ({covered}): order, values, output and "
            f"gradients"), fingerprint


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
    import time (quiet() cannot redirect them): mute them while the check exports."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
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
                "export runs forward once on the example and records what Python did; code that needs the exact batch "
                "size (an `if` or a loop on len(x) or x.shape[0], a reshape to the example's size) turns the dynamic "
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
    if "cond" in text.lower():
        return (f"torch.export.export failed inside torch.cond ({first})",
                "torch.cond(pred, true_fn, false_fn, operands): both branches take the operands and return tensors "
                "of the same shape and dtype")
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
