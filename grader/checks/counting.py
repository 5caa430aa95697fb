"""Checks on functions students write to count and to find: formulas against torch's own count,
names against the truth. Used by units 01, 03 and 04."""

import contextlib
import numbers
import operator
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from .diagnose import describe_error, explain_error, type_name
from .report import fail, own_errors, plural, quiet, verdict

_COUNTERS = {
    "trainable parameters": lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad),
    "parameters": lambda m: sum(p.numel() for p in m.parameters()),
    "buffer elements": lambda m: sum(b.numel() for b in m.buffers()),
    "state_dict elements": lambda m: sum(t.numel() for t in m.state_dict().values()),
}


# What to print to see the tensors each count adds up (named_parameters() would hide buffers, and de-duplicates
# tied tensors that state_dict() lists under every name).
_LISTINGS = {
    "trainable parameters": "model.named_parameters() if t.requires_grad",
    "parameters": "model.named_parameters()",
    "buffer elements": "model.named_buffers()",
    "state_dict elements": "model.state_dict().items()",
}


def check_counting(fn: Callable, build: Callable, cases, counts: str = "trainable parameters", *,
                   formula: bool = False):
    """``fn(*case)`` equals what torch counts on ``build(*case)``, for every case.

    ``formula=True``: the exercise asks for a formula of the sizes. torch's count then comes from ``build`` on the
    meta device (no memory, so cases may be far too large to build), and ``fn`` fails if it builds a layer.
    """
    __tracebackhide__ = True
    title = f"counting {counts}"
    if counts not in _COUNTERS:
        raise ValueError(f"counts must be one of {sorted(_COUNTERS)}, not {counts!r}")
    with quiet(), own_errors("check_counting"):
        cases = [case if isinstance(case, tuple) else (case,) for case in cases]
        # torch's counts first, before any code of the student's runs (it could change how torch counts)
        truths = [(_COUNTERS[counts](built), type_name(built)) for built in (_torch_model(build, case, formula)
                                                                              for case in cases)]
        wrong = []
        for case, (truth, built) in zip(cases, truths):
            call = f"{fn.__name__}({', '.join(map(repr, case))})"
            layers = []
            try:
                with _watching_construction(layers) if formula else contextlib.nullcontext():
                    got = fn(*case)
            except Exception as error:
                fail(title, f"{call} raised {describe_error(error)}", hint=_too_large(error) or explain_error(error))
            if layers:
                module, name = layers[0]
                fail(title, f"{call} builds a layer to count: {type_name(module)} registered `{name}` while it ran",
                     hint="write the count as a formula of the sizes, without building anything: a layer built to be "
                          "counted cannot count sizes too large to allocate, and hides what is inside it")
            if _exact_count(got) != truth:  # compared as a plain int: an object that "equals everything" fails
                wrong.append(f"{call} returned {got!r}, but {built} built with {case} has {truth:,} {counts}")
        if wrong:
            fail(title, f"{plural(len(wrong), 'case')} of {len(cases)} wrong", wrong,
                 hint=f"count each tensor's elements: print([(n, tuple(t.shape)) for n, t in {_LISTINGS[counts]}]) "
                      "and compare with your formula")
    verdict(title, f"{fn.__name__} matches torch on {plural(len(cases), 'case')}")


def _torch_model(build: Callable, case: tuple, on_meta: bool) -> nn.Module:
    """``build(*case)``; on the meta device (shapes without memory) when asked and possible."""
    if on_meta:
        try:
            with torch.device("meta"):
                return build(*case)
        except Exception:  # a model that cannot live on meta: build it for real
            pass
    return build(*case)


@contextlib.contextmanager
def _watching_construction(found: list):
    """Record (module, name) for every parameter, buffer or submodule registered while the block runs."""
    record = lambda module, name, value: found.append((module, name))  # noqa: E731
    handles = [torch_module.register_module_parameter_registration_hook(record),
               torch_module.register_module_buffer_registration_hook(record),
               torch_module.register_module_module_registration_hook(record)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _too_large(error: BaseException) -> str:
    """The hint for an allocation that no machine could make, or ""."""
    if isinstance(error, MemoryError) or "can't allocate memory" in str(error):
        return ("these sizes are too large for any machine to allocate: compute the count from the sizes alone, "
                "without building a layer or a tensor")
    return ""


def _exact_count(value):
    """`value` as a plain int (numpy's integers included) or float; None for anything else, which equals no count."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            return None
    return value if type(value) is float else None


def check_names(fn: Callable, model: nn.Module, expected, what: str = "names"):
    """``fn(model)`` returns exactly the names in ``expected`` (any order, no repeats)."""
    __tracebackhide__ = True
    title = f"{fn.__name__}"
    with quiet(), own_errors("check_names"):
        try:
            got = fn(model)
        except Exception as error:
            fail(title, f"{fn.__name__}(model) raised {describe_error(error)}", hint=explain_error(error))
        if got is None or isinstance(got, str) or not hasattr(got, "__iter__"):
            fail(title, f"{fn.__name__}(model) returned {got!r}, not a list of {what}",
                 hint="return a list of strings, such as ['self.layers[0]']")
        got = list(got)
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        repeated = sorted({n for n in got if got.count(n) > 1})
        details = ([f"missed {n!r}" for n in missing] + [f"reported {n!r}, which it should not" for n in extra]
                   + [f"reported {n!r} more than once" for n in repeated])
        if details:
            fail(title, f"wrong {what} for this {type(model).__name__}", details, hint=_names_hint(missing, extra, repeated))
    found = f"finds all {plural(len(expected), 'name')}" if expected else "finds nothing, as it should,"
    verdict(title, f"{found} in {type(model).__name__}")


def _names_hint(missing: list[str], extra: list[str], repeated: list[str]) -> str:
    """What to look at, by the kind of mistake: names spelled another way, places not searched, registered
    objects reported, or places reported twice."""
    stem = lambda name: name.split("[", 1)[0]  # noqa: E731 - 'self.heads' of "self.heads['cls']"
    if missing and extra and {stem(n) for n in extra} & {stem(n) for n in missing}:
        return ("name each place as the exercise shows: `self.` and the dotted module path, the attribute, then "
                "`[index]` for a list or tuple item and `[repr(key)]` for a dict item, one name per item")
    if missing and not extra:
        return ("look further: every submodule (named_modules()), every attribute in vars(module), private names "
                "too, and inside lists, tuples and dicts at any depth")
    if extra and not missing:
        return ("report only what registration missed: an object that is itself one of model.modules(), "
                "model.parameters() or model.buffers() (compare objects by identity) is registered, wherever else "
                "it is also kept")
    if repeated and not (missing or extra):
        return "report each place once"
    return "walk every submodule with named_modules() and look at each attribute in vars(module)"
