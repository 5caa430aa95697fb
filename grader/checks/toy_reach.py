"""Reaching into a student's toy module (unit 02): building it, calling its methods, finding its modules and
tensors through the names torch gives, and explaining its errors by the stage of the exercise they come from.

Nothing here walks a toy tree on its own: the truth is always the torch tree built beside it.
"""

import collections.abc
import traceback

import torch
from torch import nn

from .diagnose import describe_error, type_name
from .report import CheckFailed, GraderError, fail, plural

# The stage of the exercise that each method of the toy belongs to.
STAGES = {
    "__init__": 1, "__setattr__": 1, "__getattr__": 1, "register_buffer": 1,
    "named_children": 2, "children": 2, "named_modules": 2, "modules": 2,
    "named_parameters": 2, "parameters": 2, "named_buffers": 2, "buffers": 2,
    "state_dict": 3, "load_state_dict": 3, "train": 4, "eval": 4, "apply": 5, "to": 5, "zero_grad": 6,
}
REGISTRIES = ("_parameters", "_buffers", "_modules")
_MISSING = object()


def _is_toy(x) -> bool:
    """A toy module: any object (not a torch module or tensor) whose __dict__ holds a `_parameters` dict."""
    if isinstance(x, (nn.Module, torch.Tensor)):
        return False
    try:
        return isinstance(vars(x).get("_parameters"), dict)
    except TypeError:
        return False


def _stub_or_stage(error: BaseException) -> tuple[str, int] | None:
    """The innermost method of the toy base class (and its stage) in the error's traceback.

    A frame counts when it runs the base-most definition of a staged method, so that a subclass's own
    __init__ (a model built on the toy) is not mistaken for ToyModule.__init__.
    """
    found = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        name, me = frame.f_code.co_name, frame.f_locals.get("self")
        if name not in STAGES or me is None:
            continue
        bases = [cls for cls in reversed(type(me).__mro__) if name in vars(cls) and cls is not object]
        if bases and getattr(vars(bases[0])[name], "__code__", None) is frame.f_code:
            found = (name, STAGES[name])
    return found


def _innermost(error: BaseException) -> str:
    """The qualified name of the function that raised, such as 'FixedToyListModel.__init__'."""
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    return frames[-1].f_code.co_qualname if frames else "?"


def _forgot_init(error: BaseException) -> tuple[str, str] | None:
    """(class, attribute) when a toy subclass's __init__ assigned before ToyModule.__init__ had run.

    The mark: an __init__ frame whose `self` has no registries yet calls __setattr__ or register_buffer
    on that same object directly (had it called super().__init__(), the next frame would be that).
    """
    if isinstance(error, NotImplementedError):
        return None
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    for frame, callee in zip(frames, frames[1:]):
        me = frame.f_locals.get("self")
        if (frame.f_code.co_name != "__init__" or me is None or isinstance(me, (nn.Module, torch.Tensor))
                or callee.f_code.co_name not in ("__setattr__", "register_buffer") or callee.f_locals.get("self") is not me):
            continue
        try:
            registries = vars(me)
        except TypeError:
            continue
        if "_parameters" not in registries and "_modules" not in registries:
            return type(me).__name__, callee.f_locals.get("name", "?")
    return None


def _explain(error: BaseException, method: str | None = None) -> str:
    """What a toy's exception means, in the student's terms (`method`: the toy method the check called)."""
    if isinstance(error, RecursionError):
        return ("infinite recursion: a method reads self._parameters (or another registry) through attribute "
                "access, and when the registry is missing __getattr__ runs again. Inside __getattr__ and "
                "__setattr__ read registries with self.__dict__.get('_parameters')")
    where = _stub_or_stage(error) or ((method, STAGES[method]) if method in STAGES else None)
    if isinstance(error, NotImplementedError):
        if where:
            return (f"stage {where[1]}: `{where[0]}` still raises the stub's NotImplementedError: "
                    "replace that line with your code")
        return (f"`{_innermost(error)}` still raises the stub's NotImplementedError: replace that line with "
                "your code")
    if isinstance(error, KeyError) and where and where[0] == "load_state_dict":
        return ("a key the given dict lacks is a missing key: report it (or, with strict=True, raise RuntimeError) "
                "instead of reading state_dict[key] (stage 3)")
    if where:
        return f"the error comes from your `{where[0]}` (stage {where[1]}): read it and the line it points to"
    return "read the error above and the line of your code it points to"


def _build(factory, what: str, title: str, where: str):
    __tracebackhide__ = True
    try:
        return factory()
    except Exception as error:
        forgot = _forgot_init(error)
        if forgot and what == "yours":
            cls, attribute = forgot
            fail(title, f"building your toy raised {describe_error(error)}",
                 [f"`{cls}.__init__` assigns `self.{attribute}` before `super().__init__()` has run, "
                  "so the registries do not exist yet"],
                 hint="call super().__init__() first in __init__, exactly as torch requires", devices=where)
        if what != "yours":  # the torch tree is the test's own code: its failure is the grader's
            raise GraderError("check_mirrors_torch (the torch reference)", error) from None
        fail(title, f"building your toy raised {describe_error(error)}", hint=_explain(error), devices=where)


def _method(toy, name: str, title: str, where: str):
    """The toy's bound method `name`, or a failure that names the stage it belongs to."""
    __tracebackhide__ = True
    stage = STAGES.get(name, "?")
    try:
        method = getattr(toy, name)
    except AttributeError:
        fail(title, f"your toy has no method `{name}`", hint=f"write `{name}` in ToyModule (stage {stage})", devices=where)
    except Exception as error:
        fail(title, f"looking up `{name}` on your toy raised {describe_error(error)}", hint=_explain(error), devices=where)
    if not callable(method):
        fail(title, f"`model.{name}` is {method!r}, not a method",
             hint=f"write `{name}` in ToyModule (stage {stage})" + (
                 "; your __getattr__ returned None for a name it does not know instead of raising AttributeError"
                 if method is None else ""), devices=where)
    return method


def _call(toy, name: str, *args, title: str, where: str, listed: bool = False, shown: str = "", **kwargs):
    """Call a toy method; with listed=True, also drain the iterator it returns."""
    __tracebackhide__ = True
    method = _method(toy, name, title, where)
    call = shown or f"{name}()"
    try:
        result = method(*args, **kwargs)
        if listed:
            if result is None or not isinstance(result, collections.abc.Iterable):
                fail(title, f"{call} returned {result!r}, not an iterable",
                     hint=f"`{name}` should yield its items (a generator) or return a list "
                          f"(stage {STAGES.get(name, '?')})", devices=where)
            result = list(result)
    except CheckFailed:
        raise
    except Exception as error:
        fail(title, f"{call} raised {describe_error(error)}", hint=_explain(error, name), devices=where)
    return result


def _get(obj, attribute: str):
    """getattr that tells a missing attribute from one whose lookup raised something else."""
    try:
        return getattr(obj, attribute), None
    except AttributeError:
        return _MISSING, None
    except Exception as error:
        return _MISSING, error


def _hidden(parent, attribute: str, truth) -> list[str]:
    """Why torch's submodule `attribute` is not registered in the toy `parent`."""
    value = vars(parent).get(attribute, _MISSING)
    theirs = type_name(truth)
    theirs = ("an " if theirs[0].lower() in "aeiou" or theirs.startswith("nn.") else "a ") + theirs
    if value is _MISSING:
        return []
    if _is_toy(value):
        return [f"a {type(value).__name__} sits in the instance __dict__ at `self.{attribute}`, not in _modules: "
                "__setattr__ must file a toy module in _modules"]
    if isinstance(value, (list, tuple, dict)):
        items = list(value.values()) if isinstance(value, dict) else list(value)
        toys = [x for x in items if _is_toy(x)]
        if toys:
            kinds = sorted({type(x).__name__ for x in toys})
            container = "dict" if isinstance(value, dict) else type(value).__name__
            names = ", ".join(f"'{n}'" for n in list(truth._modules)[:4])
            return [f"{plural(len(toys), ' and '.join(kinds) + ' layer')} sit in a plain {container} at "
                    f"`self.{attribute}` and are not registered: __setattr__ files a toy module, not a "
                    f"{container}; torch's `{attribute}` is {theirs} whose children are named {names}"]
    return [f"`self.{attribute}` is a plain {type(value).__name__} in yours; torch registers {theirs} there"]


_LIST_FIX = ("register the layers: make `layers` a toy module that registers each item under str(i) "
             "(setattr(self, str(i), layer)), which is what nn.ModuleList does")


def _locate_modules(toy, ref, title: str, where: str) -> dict[str, object]:
    """Every module name torch has (shared ones under each name), mapped to the toy's module, via getattr."""
    __tracebackhide__ = True
    located = {"": toy}
    for name, truth in ref.named_modules(remove_duplicate=False):
        if not name:
            continue
        owner, _, leaf = name.rpartition(".")
        parent = located[owner]
        child, error = _get(parent, leaf)
        if error is not None:
            fail(title, f"`{_path(owner, leaf)}` raised {describe_error(error)}",
                 hint="__getattr__ must return the registered module, or raise AttributeError", devices=where)
        if child is _MISSING or not _is_toy(child):
            details = _hidden(parent, leaf, truth)
            got = "nothing" if child is _MISSING else f"a {type(child).__name__}"
            fail(title, f"torch's tree has a submodule `{name}` ({type_name(truth)}); in yours "
                        f"`{_path(owner, leaf)}` gives {got}", details,
                 hint=_LIST_FIX if any("plain" in d for d in details) else
                 "register submodules in _modules (stage 1) and find them in __getattr__", devices=where)
        located[name] = child
    return located


def _path(owner: str, leaf: str) -> str:
    return "model." + (f"{owner}.{leaf}" if owner else leaf)


def _tensor(located, name: str, title: str, where: str):
    __tracebackhide__ = True
    owner, _, leaf = name.rpartition(".")
    value, error = _get(located[owner], leaf)
    if error is not None or value is _MISSING or not isinstance(value, torch.Tensor):
        got = describe_error(error) if error else ("nothing" if value is _MISSING else repr(value))
        fail(title, f"torch's tree has a tensor `{name}`; `{_path(owner, leaf)}` gives {got} in yours",
             hint="register it (stage 1), then check this stage again", devices=where)
    return value


def _random_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Fresh values for a tensor's shape and dtype, drawn on the CPU (the same on every device)."""
    if t.is_floating_point():
        made = torch.randn(t.shape, generator=generator, dtype=torch.float64)
    else:
        made = torch.randint(1, 100, t.shape, generator=generator)
    return made.to(dtype=t.dtype, device=t.device)

