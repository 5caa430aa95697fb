"""What check_call_pipeline registers and calls: a probe module, and hooks of every kind that record what they see.

A scenario is a set of hooks to register on the probe (each records its event and what it received, and
some change args, kwargs or the output), how to call it, and which error the call must end with, if any.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules import module as torch_module

PARTS = ("forward", "kwargs", "always_call", "backward")


class ForwardError(Exception):
    """Raised by the probe's forward on purpose, to see what the call does with always_call hooks."""


class HookError(Exception):
    """Raised by one of the probe's forward hooks on purpose, after some always_call hooks have run."""


class Delegated(BaseException):
    """Raised when the function under test calls module(...) itself (not an Exception: it must not be caught)."""


@dataclass
class Event:
    kind: str           # "pre-hook", "forward", "forward hook", "backward hook", ...
    name: str           # the hook's name, as the check registered it
    seen: dict = field(default_factory=dict)  # what it received: args, kwargs, output, grad_output, ...

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name

    def label(self) -> str:
        return "forward()" if self.kind == "forward" else f"{self.kind} `{self.name}`"


class Probe(nn.Module):
    """The module the check calls: ``forward(x, *, scale=1.0)`` records its arguments, then runs the model."""

    def __init__(self, inner: nn.Module, trace: list):
        super().__init__()
        self.inner = inner
        self.trace = trace
        self.explode = False
        self.guarded = False

    def forward(self, x, *, scale=1.0):
        self.trace.append(Event("forward", "forward", {"args": copy_values((x,)), "kwargs": {"scale": scale}}))
        if self.explode:
            raise ForwardError("raised on purpose by the check's forward, to test always_call hooks")
        return self.inner(x) * scale

    def _call_impl(self, *args, **kwargs):
        if self.guarded:
            raise Delegated
        return super()._call_impl(*args, **kwargs)


def copy_values(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return tuple(copy_values(v) for v in value)
    if isinstance(value, dict):
        return {k: copy_values(v) for k, v in value.items()}
    return value


def same_values(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.device == b.device and torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@dataclass
class Scenario:
    """Hooks to register on the probe, and how to call it."""

    name: str
    hooks: list[tuple[str, str, Callable]]  # (kind, name, register(probe, trace) -> handle)
    kwargs: dict = field(default_factory=dict)
    explode: bool = False  # the probe's forward raises ForwardError
    error: type | None = None  # the error the call ends with (torch's and the student's alike)
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


def _forward_scenario() -> Scenario:
    def glob_pre(probe, trace):
        def hook(module, args):
            trace.append(Event("global pre-hook", "global_pre", {"args": copy_values(args)}))
        return torch_module.register_module_forward_pre_hook(_only(probe, _named(hook, "global_pre")))

    def pre_scale(probe, trace):
        def hook(module, args):
            trace.append(Event("pre-hook", "pre_scale", {"args": copy_values(args)}))
            return args[0] * 2  # a single value: torch wraps it in a tuple
        return probe.register_forward_pre_hook(_named(hook, "pre_scale"))

    def pre_look(probe, trace):
        def hook(module, args):
            trace.append(Event("pre-hook", "pre_look", {"args": copy_values(args)}))
        return probe.register_forward_pre_hook(_named(hook, "pre_look"))

    def pre_first(probe, trace):
        def hook(module, args):
            trace.append(Event("pre-hook", "pre_first", {"args": copy_values(args)}))
            return (args[0] - 1,)
        return probe.register_forward_pre_hook(_named(hook, "pre_first"), prepend=True)

    def glob_post(probe, trace):
        def hook(module, args, output):
            trace.append(Event("global forward hook", "global_post", {"args": copy_values(args), "output": copy_values(output)}))
        return torch_module.register_module_forward_hook(_only(probe, _named(hook, "global_post")))

    def post_shift(probe, trace):
        def hook(module, args, output):
            trace.append(Event("forward hook", "post_shift", {"args": copy_values(args), "output": copy_values(output)}))
            return output + 1
        return probe.register_forward_hook(_named(hook, "post_shift"))

    def post_look(probe, trace):
        def hook(module, args, output):
            trace.append(Event("forward hook", "post_look", {"args": copy_values(args), "output": copy_values(output)}))
        return probe.register_forward_hook(_named(hook, "post_look"))

    return Scenario("forward", [
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


def _kwargs_scenario() -> Scenario:
    def pre_kwargs(probe, trace):
        def hook(module, args, kwargs):
            trace.append(Event("pre-hook", "pre_kwargs", {"args": copy_values(args), "kwargs": dict(kwargs)}))
            return args, {**kwargs, "scale": kwargs.get("scale", 1.0) * 3}
        return probe.register_forward_pre_hook(_named(hook, "pre_kwargs"), with_kwargs=True)

    def pre_plain(probe, trace):
        def hook(module, args):
            trace.append(Event("pre-hook", "pre_plain", {"args": copy_values(args)}))
        return probe.register_forward_pre_hook(_named(hook, "pre_plain"))

    def post_kwargs(probe, trace):
        def hook(module, args, kwargs, output):
            trace.append(Event("forward hook", "post_kwargs",
                                {"args": copy_values(args), "kwargs": dict(kwargs), "output": copy_values(output)}))
            return output - 0.5
        return probe.register_forward_hook(_named(hook, "post_kwargs"), with_kwargs=True)

    def glob_kwargs(probe, trace):
        def hook(module, args, kwargs, output):
            trace.append(Event("global forward hook", "global_kwargs",
                                {"args": copy_values(args), "kwargs": dict(kwargs), "output": copy_values(output)}))
        return torch_module.register_module_forward_hook(_only(probe, _named(hook, "global_kwargs")), with_kwargs=True)

    def post_plain(probe, trace):
        def hook(module, args, output):
            trace.append(Event("forward hook", "post_plain", {"args": copy_values(args), "output": copy_values(output)}))
        return probe.register_forward_hook(_named(hook, "post_plain"))

    return Scenario("kwargs", [
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


def _always_call_scenario() -> Scenario:
    def pre_look(probe, trace):
        def hook(module, args):
            trace.append(Event("pre-hook", "pre_look", {"args": copy_values(args)}))
        return probe.register_forward_pre_hook(_named(hook, "pre_look"))

    def post_plain(probe, trace):
        def hook(module, args, output):
            trace.append(Event("forward hook", "post_plain", {"output": copy_values(output)}))
        return probe.register_forward_hook(_named(hook, "post_plain"))

    def post_always(probe, trace):
        def hook(module, args, output):
            trace.append(Event("forward hook", "post_always", {"args": copy_values(args), "output": copy_values(output)}))
        return probe.register_forward_hook(_named(hook, "post_always"), always_call=True)

    def post_always_kwargs(probe, trace):
        def hook(module, args, kwargs, output):
            trace.append(Event("forward hook", "post_always_kwargs",
                                {"args": copy_values(args), "kwargs": dict(kwargs), "output": copy_values(output)}))
        return probe.register_forward_hook(_named(hook, "post_always_kwargs"), always_call=True, with_kwargs=True)

    def glob_always(probe, trace):
        def hook(module, args, output):
            trace.append(Event("global forward hook", "global_always", {"args": copy_values(args), "output": copy_values(output)}))
        return torch_module.register_module_forward_hook(_only(probe, _named(hook, "global_always")), always_call=True)

    return Scenario("always_call", [
        ("pre-hook", "pre_look", pre_look), ("forward hook", "post_plain", post_plain),
        ("forward hook", "post_always", post_always), ("forward hook", "post_always_kwargs", post_always_kwargs),
        ("global forward hook", "global_always", glob_always),
    ], explode=True, error=ForwardError, does={
        "pre_look": "returns None",
        "post_plain": "an ordinary forward hook",
        "post_always": "registered with always_call=True",
        "post_always_kwargs": "registered with always_call=True and with_kwargs=True",
        "global_always": "register_module_forward_hook(..., always_call=True)",
    })


def _backward_scenario() -> Scenario:
    def pre_scale(probe, trace):
        def hook(module, args):
            trace.append(Event("pre-hook", "pre_scale", {"args": copy_values(args)}))
            return (args[0] * 2,)
        return probe.register_forward_pre_hook(_named(hook, "pre_scale"))

    def post_double(probe, trace):
        def hook(module, args, output):
            trace.append(Event("forward hook", "post_double", {"output": copy_values(output)}))
            return output * 2
        return probe.register_forward_hook(_named(hook, "post_double"))

    def backward_pre(probe, trace):
        def hook(module, grad_output):
            trace.append(Event("backward pre-hook", "backward_pre", {"grad_output": copy_values(grad_output)}))
        return probe.register_full_backward_pre_hook(_named(hook, "backward_pre"))

    def glob_backward_pre(probe, trace):
        def hook(module, grad_output):
            trace.append(Event("global backward pre-hook", "global_backward_pre", {"grad_output": copy_values(grad_output)}))
        return torch_module.register_module_full_backward_pre_hook(_only(probe, _named(hook, "global_backward_pre")))

    def backward_hook(probe, trace):
        def hook(module, grad_input, grad_output):
            trace.append(Event("backward hook", "backward_hook",
                                {"grad_input": copy_values(grad_input), "grad_output": copy_values(grad_output)}))
        return probe.register_full_backward_hook(_named(hook, "backward_hook"))

    return Scenario("backward", [
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


def _hook_raises_scenario() -> Scenario:
    """A forward hook raises after two always_call hooks ran: those two must not run again; the later ones must, each
    with the result the one before it left."""
    def glob_always(probe, trace):
        def hook(module, args, output):
            trace.append(Event("global forward hook", "global_always", {"output": copy_values(output)}))
        return torch_module.register_module_forward_hook(_only(probe, _named(hook, "global_always")), always_call=True)

    def post_always(probe, trace):
        def hook(module, args, output):
            trace.append(Event("forward hook", "post_always", {"output": copy_values(output)}))
            return output * 2
        return probe.register_forward_hook(_named(hook, "post_always"), always_call=True)

    def post_raise(probe, trace):
        def hook(module, args, output):
            trace.append(Event("forward hook", "post_raise", {"output": copy_values(output)}))
            raise HookError("raised on purpose by the check's forward hook `post_raise`, to test always_call hooks")
        return probe.register_forward_hook(_named(hook, "post_raise"))

    def post_always_late(probe, trace):
        def hook(module, args, output):
            trace.append(Event("forward hook", "post_always_late", {"args": copy_values(args),
                                                                    "output": copy_values(output)}))
            return output * 3
        return probe.register_forward_hook(_named(hook, "post_always_late"), always_call=True)

    def post_always_last(probe, trace):
        def hook(module, args, output):
            trace.append(Event("forward hook", "post_always_last", {"output": copy_values(output)}))
        return probe.register_forward_hook(_named(hook, "post_always_last"), always_call=True)

    def post_plain_late(probe, trace):
        def hook(module, args, output):
            trace.append(Event("forward hook", "post_plain_late", {"output": copy_values(output)}))
        return probe.register_forward_hook(_named(hook, "post_plain_late"))

    return Scenario("always_call", [
        ("global forward hook", "global_always", glob_always), ("forward hook", "post_always", post_always),
        ("forward hook", "post_raise", post_raise), ("forward hook", "post_always_late", post_always_late),
        ("forward hook", "post_plain_late", post_plain_late), ("forward hook", "post_always_last", post_always_last),
    ], error=HookError, does={
        "global_always": "register_module_forward_hook(..., always_call=True); returns None",
        "post_always": "registered with always_call=True; returns output * 2",
        "post_raise": "an ordinary forward hook that raises HookError",
        "post_always_late": "registered with always_call=True, after `post_raise`; returns output * 3",
        "post_plain_late": "an ordinary forward hook, after `post_raise`",
        "post_always_last": "registered with always_call=True, last",
    })


# part -> its scenarios, run in this order
SCENARIOS = {"forward": (_forward_scenario,), "kwargs": (_kwargs_scenario,),
             "always_call": (_always_call_scenario, _hook_raises_scenario), "backward": (_backward_scenario,)}
