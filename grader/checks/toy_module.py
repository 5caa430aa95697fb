"""Checks that hold a student's toy module up against torch.nn.Module on mirrored trees.

The student builds a small ``ToyModule`` from plain dicts (unit 02). A test cell builds the same
tree twice, once on the toy and once on ``nn.Module`` (same attribute names, same order), and
``check_mirrors_torch`` compares them aspect by aspect: what sits in ``_parameters``, ``_buffers``
and ``_modules``; the names the walking methods yield, and their order; ``state_dict`` and
``load_state_dict`` with its reports and errors; training flags; ``apply``; ``to(dtype)``;
``zero_grad``. Each aspect prints one verdict line or names the first difference, yours beside
torch's. The truth is always torch: nothing here walks a toy tree on its own, it reaches the
toy's parts through the names torch gives and through the student's own methods.
"""

import collections.abc
import traceback

import torch
from torch import nn

from .runner import SEED, _check
from .diagnose import describe_error, type_name
from .report import CheckFailed, fail, plural, quiet, verdict

# The stage of the exercise that each method of the toy belongs to.
STAGES = {
    "__init__": 1, "__setattr__": 1, "__getattr__": 1, "register_buffer": 1,
    "named_children": 2, "children": 2, "named_modules": 2, "modules": 2,
    "named_parameters": 2, "parameters": 2, "named_buffers": 2, "buffers": 2,
    "state_dict": 3, "load_state_dict": 3, "train": 4, "eval": 4, "apply": 5, "to": 5, "zero_grad": 6,
}
ASPECTS = {  # aspect -> (stage, what it compares)
    "registration": (1, "the three dicts"),
    "names": (2, "names and order"),
    "state_dict": (3, "state_dict"),
    "load_state_dict": (3, "load_state_dict"),
    "modes": (4, "train/eval"),
    "apply": (5, "apply"),
    "to": (5, "to(dtype)"),
    "zero_grad": (6, "zero_grad"),
}
REGISTRIES = ("_parameters", "_buffers", "_modules")
_TORCH_INTERNALS = frozenset(vars(nn.Module()))
_MISSING = object()


# --- reaching into the toy -----------------------------------------------------------------

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
        problem = f"building {'your toy' if what == 'yours' else 'the torch reference'} raised {describe_error(error)}"
        fail(title, problem, hint=_explain(error), devices=where)


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


# --- comparing lists of names -----------------------------------------------------------------

def _owner(name: str) -> str:
    return name.rpartition(".")[0]


def _is_ancestor(a: str, b: str) -> bool:
    """Module `a` is a proper ancestor of module `b` ('' is the root)."""
    return a != b and (a == "" or b.startswith(a + "."))


def _depth(name: str) -> int:
    return name.count(".") + (1 if name else 0)


def _name_problems(call: str, yours: list[str], theirs: list[str], kind: str = "parameter") -> tuple[str, str] | None:
    """(problem, hint) for the first way `yours` differs from torch's list of names, or None if equal."""
    if yours == theirs:
        return None
    repeated = [n for i, n in enumerate(yours) if n in yours[:i]]
    if repeated:
        return (f"{call} yields {repeated[0]!r} more than once",
                "torch yields each distinct object once: remember what you have yielded in a set")
    if not all(isinstance(n, str) for n in yours):
        bad = next(n for n in yours if not isinstance(n, str))
        return f"{call} yields the name {bad!r}, which is not a string", "names are dotted strings such as 'block.fc.weight'"
    mine, truth = set(yours), set(theirs)
    missing = [n for n in theirs if n not in mine]
    extra = [n for n in yours if n not in truth]
    if missing or extra:
        shown = ([f"torch has {n!r}, yours does not" for n in missing[:3]]
                 + [f"yours has {n!r}, torch does not" for n in extra[:3]])
        count = (f"gives {plural(len(yours), 'name')}, torch {len(theirs)}" if len(yours) != len(theirs)
                 else "names differ from torch's")
        problem = f"{call} {count}: " + "; ".join(shown)
        if "" in missing and kind == "module":
            return problem, "named_modules() starts with the module itself, under the name ''"
        if any(n.startswith(".") or ".." in n for n in extra):
            return problem, "the root's prefix is '': join prefix and name with '.' only when the prefix is not empty"
        if extra and all(any(t.endswith("." + n) for t in theirs) for n in extra):
            return problem, "a name is the dotted path of the module that owns the item, then '.', then the item's own name"
        if missing and not extra:
            deepest = max((_depth(_owner(n) if kind != "module" else n) for n in yours), default=-1)
            if all(_depth(_owner(n) if kind != "module" else n) > deepest for n in missing):
                return problem, "yours stops too early: recurse into every child, and into the children's children"
        return problem, "use torch's names: each item's dotted path from the root, such as 'block.fc.weight'"
    # Same names, another order.
    i = next(k for k, (a, b) in enumerate(zip(yours, theirs)) if a != b)
    mine_at, theirs_at = yours[i], theirs[i]
    problem = f"{call} order differs at position {i}: yours {mine_at!r}, torch {theirs_at!r}"
    if yours == sorted(yours) and theirs != sorted(theirs):
        return problem, "yours comes out sorted; torch keeps the order of assignment (a dict keeps insertion order)"
    owner_y = mine_at if kind == "module" else _owner(mine_at)
    owner_t = theirs_at if kind == "module" else _owner(theirs_at)
    if kind == "module" and _is_ancestor(owner_t, owner_y):
        return problem, "torch yields a module before everything below it (depth-first, the parent first)"
    if kind != "module" and _is_ancestor(owner_t, owner_y):
        where = f"`{owner_t}`" if owner_t else "the root"
        return problem, (f"torch yields a module's own {kind}s before its children's: {theirs_at!r} belongs to "
                         f"{where}, {mine_at!r} to a module below it")
    by_level = sorted(theirs, key=lambda n: _depth(n if kind == "module" else _owner(n)))
    if yours == by_level:
        return problem, ("yours goes level by level (breadth-first); torch goes depth-first: a child's whole "
                         "subtree before the next child")
    return problem, ("torch walks the tree depth-first in assignment order: a module, its own items, then each "
                     "child's whole subtree in turn")


# --- the aspects -----------------------------------------------------------------------------------

def _registration(toy, ref, title, where):
    """The three dicts of every module hold torch's keys, in torch's order, and nothing else."""
    __tracebackhide__ = True
    nodes = [("", toy, ref)]
    count = 0
    while nodes:
        name, mine, truth = nodes.pop(0)
        count += 1
        label = f"`{name}`" if name else "the root"
        own = vars(mine)
        for registry in REGISTRIES:
            if not isinstance(own.get(registry), dict):
                fail(title, f"{label} has no `{registry}` dict in its __dict__",
                     hint="ToyModule.__init__ must create _parameters, _buffers and _modules as plain dicts, "
                          "with object.__setattr__ (or self.__dict__) so that __setattr__ is not involved (stage 1)",
                     devices=where)
        for registry in REGISTRIES:
            _compare_registry(name, label, mine, truth, registry, title, where)
        for attribute, value in vars(truth).items():
            if isinstance(value, torch.Tensor) and attribute not in own:
                fail(title, f"torch keeps the plain tensor `{attribute}` of {label} in the instance __dict__; "
                            "yours does not",
                     hint="values that are not an nn.Parameter or a toy module go to object.__setattr__ (stage 1)",
                     devices=where)
        for child_name, child_truth in truth._modules.items():
            nodes.append((f"{name}.{child_name}" if name else child_name, own["_modules"][child_name], child_truth))
    _reassign_buffers(toy, ref, title, where)
    params = len(list(ref.parameters()))
    buffers = len(list(ref.buffers()))
    return (f"{plural(params, 'parameter')}, {plural(buffers, 'buffer')} and the submodules of "
            f"{plural(count, 'module')} sit in the same dicts, in the same order, as torch's; __getattr__ finds them"), count


def _compare_registry(name, label, mine, truth, registry, title, where):
    __tracebackhide__ = True
    yours, theirs = vars(mine)[registry], getattr(truth, registry)
    what = {"_parameters": "parameter", "_buffers": "buffer", "_modules": "submodule"}[registry]
    for key in theirs:
        if key in yours:
            continue
        elsewhere = [r for r in REGISTRIES if r != registry and key in vars(mine)[r]]
        details = _hidden(mine, key, theirs[key]) if registry == "_modules" else []
        if elsewhere:
            problem = f"`{key}` of {label} is in {registry} in torch, in {elsewhere[0]} in yours"
        elif key in vars(mine):
            problem = (f"`{key}` of {label} is in {registry} in torch; yours keeps it in the instance __dict__, "
                       "where no method of the module looks")
        else:
            problem = f"torch has {what} `{key}` in {label}'s {registry}; yours has no `{key}` anywhere"
        hint = {"_parameters": "__setattr__ files an nn.Parameter in _parameters",
                "_buffers": "register_buffer(name, tensor) files the tensor in _buffers",
                "_modules": "__setattr__ files a toy module in _modules"}[registry]
        hint += " (stage 1)"
        if any("plain" in d for d in details):
            hint = _LIST_FIX
        fail(title, problem, details, hint=hint, devices=where)
    for key in yours:
        if key not in theirs:
            place = next((r for r in REGISTRIES if key in getattr(truth, r)), None)
            where_torch = f"in {place}" if place else "in the instance __dict__ (it is not registered)"
            fail(title, f"yours has `{key}` in {label}'s {registry}; torch keeps it {where_torch}",
                 hint="__setattr__ routes by type: nn.Parameter to _parameters, a toy module to _modules, a tensor "
                      "to _buffers only for a name that register_buffer made a buffer, anything else to the "
                      "instance __dict__ (stage 1)", devices=where)
    if list(yours) != list(theirs):
        fail(title, f"{label}'s {registry} keys are {list(yours)} in yours, {list(theirs)} in torch",
             hint="keep the order of assignment: add entries to the dict as they are assigned (stage 1)", devices=where)
    for key, value in yours.items():
        expected = {"_parameters": (nn.Parameter, "an nn.Parameter"), "_buffers": (torch.Tensor, "a tensor")}.get(registry)
        if expected and not isinstance(value, expected[0]):
            fail(title, f"{label}'s {registry}[{key!r}] is a {type(value).__name__} in yours; torch holds "
                        f"{expected[1]}", hint="store the object that was assigned, unchanged (stage 1)", devices=where)
        if registry == "_modules" and not _is_toy(value):
            fail(title, f"{label}'s _modules[{key!r}] is a {type(value).__name__}, not a toy module",
                 hint="store the module that was assigned (stage 1)", devices=where)
        if key in vars(mine):
            fail(title, f"`{key}` of {label} is in {registry} and also in the instance __dict__",
                 hint="torch keeps a registered name only in its registry and finds it through __getattr__; a copy "
                      "in __dict__ goes stale at the next assignment (stage 1)", devices=where)
        got, error = _get(mine, key)
        if error is not None or got is not value:
            shown = describe_error(error) if error else ("an AttributeError" if got is _MISSING else
                                                         f"a different object ({type(got).__name__})")
            fail(title, f"`{_path(name, key)}` gives {shown}; it should be {registry}[{key!r}]",
                 hint="__getattr__ looks the name up in _parameters, _buffers and _modules, in that order, "
                      "and returns what it finds (stage 1)", devices=where)


def _reassign_buffers(toy, ref, title, where):
    """Assigning a tensor to a buffer's name replaces the buffer, as in torch."""
    __tracebackhide__ = True
    truths = dict(ref.named_modules(remove_duplicate=False))
    located = _locate_modules(toy, ref, title, where)
    for name, truth in truths.items():
        for key, buffer in list(truth._buffers.items()):
            if buffer is None:
                continue
            mine = located[name]
            new_truth, new_mine = buffer.clone(), buffer.clone()
            setattr(truth, key, new_truth)
            try:
                setattr(mine, key, new_mine)
            except Exception as error:
                fail(title, f"`{_path(name, key)} = tensor` raised {describe_error(error)}", hint=_explain(error),
                     devices=where)
            if vars(mine)["_buffers"].get(key) is not new_mine:
                fail(title, f"after `{_path(name, key)} = tensor`, yours' _buffers[{key!r}] still holds the old "
                            "buffer; torch replaces the buffer",
                     hint="in __setattr__, a tensor assigned to a name that is already in _buffers goes to _buffers "
                          "(a registered name keeps its slot) (stage 1)", devices=where)


def _names(toy, ref, title, where):
    """named_modules / modules, named_children / children, named_parameters / parameters, named_buffers / buffers."""
    __tracebackhide__ = True
    located = _locate_modules(toy, ref, title, where)
    checks = [
        ("named_modules", "modules", "module", [n for n, _ in ref.named_modules()],
         lambda n: located[n]),
        ("named_children", "children", "module", [n for n, _ in ref.named_children()],
         lambda n: located[n]),
        ("named_parameters", "parameters", "parameter", [n for n, _ in ref.named_parameters()],
         lambda n: _tensor(located, n, title, where)),
        ("named_buffers", "buffers", "buffer", [n for n, _ in ref.named_buffers()],
         lambda n: _tensor(located, n, title, where)),
    ]
    for named, plain, kind, theirs, lookup in checks:
        pairs = _call(toy, named, title=title, where=where, listed=True)
        if not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
            bad = next(p for p in pairs if not (isinstance(p, tuple) and len(p) == 2))
            fail(title, f"{named}() yields {bad!r}; torch yields (name, object) pairs",
                 hint="yield name, obj (stage 2)", devices=where)
        _no_repeats(named, pairs, title, where)
        yours = [n for n, _ in pairs]
        found = _name_problems(f"{named}()", yours, theirs, kind if named != "named_children" else "module")
        if named == "named_children" and found and any("." in n for n in yours if isinstance(n, str)):
            found = (found[0], "named_children() yields only the direct children, with their own names (no dots)")
        if found:
            fail(title, found[0], hint=found[1] + " (stage 2)", devices=where)
        for n, obj in pairs:
            if obj is not lookup(n):
                fail(title, f"{named}() yields, for {n!r}, an object that is not `{_path(*n.rpartition('.')[::2]) if n else 'model'}`",
                     hint="yield the registered objects themselves, not copies (stage 2)", devices=where)
        objects = _call(toy, plain, title=title, where=where, listed=True)
        expected = [obj for _, obj in pairs]
        if len(objects) != len(expected) or any(a is not b for a, b in zip(objects, expected)):
            fail(title, f"{plain}() does not yield the same objects as {named}(), in the same order "
                        f"({plural(len(objects), 'item')} against {len(expected)})",
                 hint=f"{plain}() yields the objects of {named}() without the names (stage 2)", devices=where)
    counts = (len(checks[0][3]), len(checks[2][3]), len(checks[3][3]))
    return (f"named_modules, named_children, named_parameters, named_buffers and their unnamed twins agree on "
            f"{plural(counts[0], 'module')}, {plural(counts[1], 'parameter')} and {plural(counts[2], 'buffer')}, "
            "in torch's order"), sum(counts)


def _no_repeats(named, pairs, title, where):
    """The same object yielded under two names: torch yields it once, under the first."""
    __tracebackhide__ = True
    first = {}
    for name, obj in pairs:
        if id(obj) in first and first[id(obj)] != name:
            fail(title, f"{named}() yields one object twice, as {first[id(obj)]!r} and as {name!r}",
                 hint="torch yields a module (or tensor) registered under two names once, under the first name it "
                      "meets: remember the ids of what you have yielded (stage 2)", devices=where)
        first.setdefault(id(obj), name)


def _fill(located, ref, generator, title, where) -> dict:
    """Write the same random values into both trees, by torch's state_dict names."""
    __tracebackhide__ = True
    values = {}
    with torch.no_grad():
        for key, truth in ref.state_dict(keep_vars=True).items():
            value = _random_like(truth, generator)
            truth.copy_(value)
            _tensor(located, key, title, where).copy_(value)
            values[key] = value
    return values


def _state_dict(toy, ref, title, where):
    """state_dict(): torch's keys in torch's order, detached values that share memory with the tensors."""
    __tracebackhide__ = True
    located = _locate_modules(toy, ref, title, where)
    _fill(located, ref, torch.Generator().manual_seed(SEED + 20), title, where)
    truth = ref.state_dict()
    mine = _call(toy, "state_dict", title=title, where=where)
    if not isinstance(mine, collections.abc.Mapping):
        fail(title, f"state_dict() returned a {type(mine).__name__}; torch returns a dict of name -> tensor",
             hint="return a dict (stage 3)", devices=where)
    yours, theirs = list(mine), list(truth)
    flat = [n for n, _ in ref.named_parameters()] + [n for n, _ in ref.named_buffers()]
    if yours != theirs:
        items = list(ref.state_dict(keep_vars=True).items())
        repeats = [k for i, (k, t) in enumerate(items) if any(t is u for _, u in items[:i])]
        missing = [k for k in theirs if k not in mine]
        if repeats and set(missing) == set(repeats) and set(yours) <= set(theirs):
            fail(title, f"state_dict() leaves out {', '.join(f'`{k}`' for k in missing)}",
                 hint="state_dict() does not skip repeats: a module registered under two names appears under both, "
                      "each with its own keys (named_parameters() yields it once): recurse through _modules (stage 3)",
                 devices=where)
        if yours == flat and flat != theirs:
            fail(title, f"state_dict() keys are {yours}; torch's are {theirs}",
                 hint="yours lists every parameter, then every buffer; torch goes module by module: a module's own "
                      "parameters, then its own buffers, then each child's state_dict (stage 3)", devices=where)
        buffers = {n for n, _ in ref.named_buffers()}
        if missing and set(missing) <= buffers and set(yours) <= set(theirs):
            fail(title, f"state_dict() leaves out {plural(len(missing), 'buffer')}: " + ", ".join(f"`{k}`" for k in missing),
                 hint="state_dict() saves parameters and buffers: a checkpoint without the running statistics or "
                      "counters cannot restore the model (stage 3)", devices=where)
        found = _name_problems("state_dict()", yours, theirs, "key")
        fail(title, found[0], hint=found[1] + " (stage 3)", devices=where)
    for key in theirs:
        value, tensor = mine[key], _tensor(located, key, title, where)
        if not isinstance(value, torch.Tensor):
            fail(title, f"state_dict()[{key!r}] is a {type(value).__name__}, not a tensor", devices=where,
                 hint="map each name to its tensor (stage 3)")
        if value.requires_grad:
            fail(title, f"state_dict()[{key!r}] requires grad; torch's value is `tensor.detach()`",
                 hint="store tensor.detach(): the same memory, without autograd (stage 3)", devices=where)
        if value.dtype != truth[key].dtype or not torch.equal(value.cpu(), truth[key].cpu()):
            fail(title, f"state_dict()[{key!r}] holds other values than `{_path(*key.rpartition('.')[::2])}`",
                 hint="map each name to the tensor registered under it (stage 3)", devices=where)
        if value.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
            fail(title, f"state_dict()[{key!r}] is a copy; torch's shares memory with the tensor",
                 hint="use tensor.detach(), not .clone(): torch's state_dict() is a view of the live tensors "
                      "(which is why a saved-aside state_dict changes as training goes on) (stage 3)", devices=where)
    return f"{plural(len(theirs), 'key')} in torch's order, detached values that share memory", len(theirs)


def _load(toy, ref, title, where):
    """load_state_dict(): in-place copies, missing and unexpected reports, strict errors, size mismatches."""
    __tracebackhide__ = True
    located = _locate_modules(toy, ref, title, where)
    generator = torch.Generator().manual_seed(SEED + 30)
    _fill(located, ref, generator, title, where)
    keys = list(ref.state_dict())
    before = {k: _tensor(located, k, title, where) for k in keys}
    source = {k: _random_like(t, generator) for k, t in ref.state_dict().items()}

    # 1. A complete state_dict: everything copied in place, nothing reported.
    result = _load_call(toy, dict(source), True, title, where)
    _compare_report(result, ref.load_state_dict(dict(source)), "a complete state_dict", title, where)
    loaded = ref.state_dict()  # a tensor shared under two names keeps the value loaded last, in torch too
    for key in keys:
        now = _tensor(located, key, title, where)
        if now is not before[key]:
            fail(title, f"load_state_dict replaced the tensor at `{key}` with a new object",
                 hint="torch copies into the existing tensor (tensor.copy_(value) under torch.no_grad()), so an "
                      "optimizer built before the load still holds the model's parameters (stage 3)", devices=where)
        if not torch.equal(now.detach().cpu(), loaded[key].cpu()):
            fail(title, f"after load_state_dict, `{key}` does not hold the loaded value",
                 hint="copy each value into the tensor of the same name (stage 3)", devices=where)

    # 2. Keys missing: reported with strict=False, an error with strict=True.
    if keys:
        dropped = [keys[0]] + ([keys[-1]] if len(keys) > 1 else [])
        partial = {k: v for k, v in source.items() if k not in dropped}
        result = _load_call(toy, dict(partial), False, title, where)
        _compare_report(result, ref.load_state_dict(dict(partial), strict=False),
                        f"a state_dict without {', '.join(repr(k) for k in dropped)} (strict=False)", title, where)
        _strict_raises(toy, ref, dict(partial), dropped, "missing", title, where)

    # 3. Keys unexpected: reported with strict=False, an error with strict=True.
    children = [n for n, _ in ref.named_children()]
    extra = ["no_such_key"] + ([f"{children[0]}.no_such_key"] if children else [])
    bigger = dict(source) | {k: torch.zeros(1) for k in extra}
    result = _load_call(toy, dict(bigger), False, title, where)
    _compare_report(result, ref.load_state_dict(dict(bigger), strict=False),
                    f"a state_dict with extra keys {', '.join(repr(k) for k in extra)} (strict=False)", title, where)
    _strict_raises(toy, ref, dict(bigger), extra, "unexpected", title, where)

    # 4. A shape that does not fit: an error even with strict=False.
    if keys:
        key = keys[0]
        wrong = dict(source) | {key: torch.zeros(source[key].numel() + 1, dtype=source[key].dtype)}
        try:
            ref.load_state_dict(dict(wrong), strict=False)
            torch_message = None
        except RuntimeError as error:
            torch_message = str(error).splitlines()[-1].strip()
        raised = _load_raises(toy, dict(wrong), False, title, where)
        if raised is None:
            fail(title, f"load_state_dict(strict=False) accepted `{key}` with shape {list(wrong[key].shape)}, where "
                        f"the model's is {list(source[key].shape)}",
                 [f"torch raises RuntimeError: {torch_message}"],
                 hint="a size mismatch is an error even with strict=False: check shapes before copying (stage 3)",
                 devices=where)
        if key not in str(raised):
            fail(title, f"your size-mismatch error does not name `{key}`: {describe_error(raised)}",
                 [f"torch says: {torch_message}"], hint="name the key whose shape does not fit (stage 3)", devices=where)
    return "in-place copies; missing and unexpected keys reported as torch does; strict and size errors raised", len(keys)


def _load_call(toy, state_dict, strict, title, where):
    __tracebackhide__ = True
    return _call(toy, "load_state_dict", state_dict, strict=strict, title=title, where=where,
                 shown=f"load_state_dict(..., strict={strict})")


def _load_raises(toy, state_dict, strict, title, where):
    """The exception load_state_dict raised, or None."""
    __tracebackhide__ = True
    method = _method(toy, "load_state_dict", title, where)
    try:
        method(state_dict, strict=strict)
    except Exception as error:
        if not isinstance(error, RuntimeError):
            fail(title, f"load_state_dict(..., strict={strict}) raised {describe_error(error)}; torch raises RuntimeError",
                 hint="collect every problem first, then raise one RuntimeError that names them all (stage 3)"
                 if not isinstance(error, NotImplementedError) else _explain(error), devices=where)
        return error
    return None


def _compare_report(result, truth, case, title, where):
    __tracebackhide__ = True
    try:
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except Exception:
        fail(title, f"load_state_dict on {case} returned {result!r}",
             hint="return IncompatibleKeys(missing_keys, unexpected_keys), as torch does (stage 3)", devices=where)
    if missing != list(truth.missing_keys):
        found = _name_problems("missing_keys", missing, list(truth.missing_keys), "key")
        fail(title, f"on {case}, missing_keys is {missing}; torch reports {list(truth.missing_keys)}",
             hint=("missing keys are the model's state_dict keys absent from the given dict, in the model's "
                   "state_dict order" + (f": {found[1]}" if found and "order" in found[0] else "") + " (stage 3)"),
             devices=where)
    if sorted(unexpected) != sorted(truth.unexpected_keys) or len(unexpected) != len(truth.unexpected_keys):
        fail(title, f"on {case}, unexpected_keys is {unexpected}; torch reports {list(truth.unexpected_keys)}",
             hint="unexpected keys are the given dict's keys that the model's state_dict does not have; "
                  "report them even with strict=False (stage 3)", devices=where)


def _strict_raises(toy, ref, state_dict, keys, kind, title, where):
    __tracebackhide__ = True
    try:
        ref.load_state_dict(dict(state_dict))
        torch_message = "nothing"
    except RuntimeError as error:
        torch_message = " ".join(str(error).split())
    raised = _load_raises(toy, dict(state_dict), True, title, where)
    if raised is None:
        fail(title, f"load_state_dict(strict=True) accepted a state_dict with {plural(len(keys), kind + ' key')} "
                    f"({', '.join(repr(k) for k in keys)})",
             [f"torch raises RuntimeError: {torch_message}"],
             hint="with strict=True, missing or unexpected keys are an error: raise RuntimeError naming them; "
                  "strict=False only reports them (stage 3)", devices=where)
    unnamed = [k for k in keys if k not in str(raised)]
    if unnamed:
        fail(title, f"your strict error does not name the {kind} key {unnamed[0]!r}: {describe_error(raised)}",
             [f"torch says: {torch_message}"], hint="name every missing and unexpected key (stage 3)", devices=where)


def _modes(toy, ref, title, where):
    """train() / eval() on the root and on a subtree: every flag as in torch; both return the module."""
    __tracebackhide__ = True
    located = _locate_modules(toy, ref, title, where)
    names = [n for n, _ in ref.named_modules()]
    truths = dict(ref.named_modules())
    _compare_flags(located, truths, names, "on a fresh model", title, where,
                   hint="a module starts in training mode: set self.training = True in __init__ (stage 1)")
    children = [n for n, _ in ref.named_children()]
    steps = [("model.eval()", "", "eval", ()), ("model.train()", "", "train", ()),
             ("model.train(False)", "", "train", (False,)), ("model.train(True)", "", "train", (True,))]
    if children:
        steps.insert(2, (f"model.{children[0]}.eval()", children[0], "eval", ()))
    for shown, target, method, args in steps:
        mine = _call(located[target], method, *args, title=title, where=where, shown=shown)
        if mine is not located[target]:
            fail(title, f"{shown} returned {mine!r}; torch returns the module itself",
                 hint="return self, so that `model = model.eval()` keeps working (stage 4)", devices=where)
        getattr(truths[target], method)(*args)
        _compare_flags(located, truths, names, f"after {shown}", title, where, target=target)
    return f"training flags of {plural(len(names), 'module')} follow torch through {len(steps)} calls", len(names)


def _compare_flags(located, truths, names, when, title, where, hint=None, target=""):
    __tracebackhide__ = True
    for name in names:
        mine, error = _get(located[name], "training")
        theirs = truths[name].training
        if error is not None or mine is _MISSING:
            fail(title, f"`{name or 'the root'}` has no `training` attribute {when}",
                 hint="set self.training = True in __init__ (stage 1)", devices=where)
        if mine != theirs:
            label = f"`{name}`" if name else "the root"
            problem = f"{when}, {label} has training={mine!r} in yours, {theirs!r} in torch"
            if hint is None:
                below = name != target and (target == "" or name.startswith(target + "."))
                if below and _depth(name) > _depth(target) + 1:
                    hint = ("the direct children follow but their children do not: each child must call train(mode) "
                            "on its own children (recursion) (stage 4)")
                elif below:
                    hint = ("train(mode) sets self.training and then calls train(mode) on every child, so the whole "
                            "subtree follows (stage 4)")
                elif name == target:
                    hint = "train(mode) sets self.training = mode on the module it is called on (stage 4)"
                else:
                    hint = ("only the module it is called on and its descendants change: the parent and the "
                            "siblings keep their flags (stage 4)")
            fail(title, problem, hint=hint, devices=where)


def _apply(toy, ref, title, where):
    """apply(fn): torch's visiting order (children first, the root last); returns the module."""
    __tracebackhide__ = True
    located = _locate_modules(toy, ref, title, where)
    first_name = {}
    for name, module in located.items():
        first_name.setdefault(id(module), name)
    theirs, visited = [], []
    ref_names = {}
    for name, module in ref.named_modules(remove_duplicate=False):
        ref_names.setdefault(id(module), name)
    ref.apply(lambda m: theirs.append(ref_names[id(m)]))
    result = _call(toy, "apply", visited.append, title=title, where=where, shown="apply(fn)")
    if result is not toy:
        fail(title, f"apply(fn) returned {result!r}; torch returns the module itself",
             hint="return self (stage 5)", devices=where)
    strangers = [m for m in visited if id(m) not in first_name]
    if strangers:
        fail(title, f"apply(fn) called fn on a {type(strangers[0]).__name__}, which is not a module of the tree",
             hint="call fn on modules only: each child's apply(fn), then fn(self) (stage 5)", devices=where)
    yours = [first_name[id(m)] for m in visited]
    if yours != theirs:
        shown = lambda names: [n or "(root)" for n in names]  # noqa: E731
        details = [f"yours: {shown(yours)}", f"torch: {shown(theirs)}"]
        pre = [n for n, _ in ref.named_modules()]
        if yours == pre:
            hint = ("yours calls fn on a module before its children; torch calls it after them: each child's "
                    "apply(fn) first, then fn(self), so the root comes last")
        elif yours == pre[::-1]:
            hint = ("yours reverses named_modules(); torch recurses: each child's whole subtree (child.apply(fn)) "
                    "in assignment order, then fn(self)")
        elif len(yours) < len(theirs):
            hint = "reach every module: call child.apply(fn) for each child, which recurses, then fn(self)"
        else:
            hint = "torch's apply: for each child in children(), child.apply(fn); then fn(self)"
        fail(title, "apply(fn) visits the modules in another order than torch", details, hint=hint + " (stage 5)",
             devices=where)
    return f"visits {plural(len(theirs), 'module')} in torch's order (children first, the root last)", len(theirs)


def _to(toy, ref, title, where, dtype=torch.float64):
    """to(dtype): floating tensors cast, integer ones kept, Parameters kept as the same objects; returns the module."""
    __tracebackhide__ = True
    located = _locate_modules(toy, ref, title, where)
    names = [n for n, _ in ref.named_parameters()] + [n for n, _ in ref.named_buffers()]
    params = {n for n, _ in ref.named_parameters()}
    before = {n: _tensor(located, n, title, where) for n in names}
    values = {n: t.detach().clone() for n, t in before.items()}
    grads = {n: before[n].requires_grad for n in names}
    result = _call(toy, "to", dtype, title=title, where=where, shown=f"to({dtype})")
    if result is not toy:
        fail(title, f"to({dtype}) returned {result!r}; torch returns the module itself",
             hint="return self, so that `model = model.to(dtype)` keeps working (stage 5)", devices=where)
    ref.to(dtype)
    truths = dict(ref.named_parameters()) | dict(ref.named_buffers())
    for name in names:
        now = _tensor(located, name, title, where)
        kind = "parameter" if name in params else "buffer"
        if now.dtype != truths[name].dtype:
            if not values[name].is_floating_point():
                hint = (".to(dtype) casts only floating-point tensors; integer buffers such as counters keep "
                        "their dtype")
            elif now.dtype == values[name].dtype:
                hint = (f"cast every floating-point {kind} of every module"
                        + (": buffers too" if kind == "buffer" else ""))
            else:
                hint = "cast to the dtype you are given"
            fail(title, f"after to({dtype}), {kind} `{name}` is {now.dtype} in yours, {truths[name].dtype} in torch",
                 hint=hint + " (stage 5)", devices=where)
        if name in params:
            if now is not before[name]:
                fail(title, f"to({dtype}) replaced the Parameter at `{name}` with a new object",
                     hint="torch keeps the same Parameter and swaps its data (p.data = p.data.to(dtype)), so an "
                          "optimizer built before .to() still holds the model's parameters (stage 5)", devices=where)
            if not isinstance(now, nn.Parameter) or now.requires_grad != grads[name]:
                fail(title, f"after to({dtype}), `{name}` is no longer a trainable nn.Parameter",
                     hint="change p.data, not p itself (stage 5)", devices=where)
        if not torch.equal(now.detach().cpu(), values[name].to(now.dtype).cpu()):
            fail(title, f"after to({dtype}), `{name}` holds other values", hint="cast the values, nothing else (stage 5)",
                 devices=where)
    return f"{plural(len(names), 'tensor')} cast like torch's, Parameters kept", len(names)


def _zero_grad(toy, ref, title, where):
    """zero_grad(): every .grad set to None; zero_grad(set_to_none=False): zeroed in place."""
    __tracebackhide__ = True
    located = _locate_modules(toy, ref, title, where)
    names = [n for n, _ in ref.named_parameters()]
    generator = torch.Generator().manual_seed(SEED + 40)
    without = names[-1:]  # one parameter never gets a gradient

    def give_grads():
        kept = {}
        for name in names:
            mine, theirs = _tensor(located, name, title, where), ref.get_parameter(name)
            grad = None if name in without else _random_like(theirs, generator)
            mine.grad = None if grad is None else grad.clone()
            theirs.grad = None if grad is None else grad.clone()
            kept[name] = mine.grad
        return kept

    for args, shown in (((), "zero_grad()"), ((False,), "zero_grad(set_to_none=False)")):
        kept = give_grads()
        kwargs = {"set_to_none": args[0]} if args else {}
        _call(toy, "zero_grad", title=title, where=where, shown=shown, **kwargs)
        ref.zero_grad(**kwargs)
        for name in names:
            mine, theirs = _tensor(located, name, title, where).grad, ref.get_parameter(name).grad
            if theirs is None and mine is not None:
                filled = isinstance(mine, torch.Tensor) and not mine.any()
                if name in without:
                    hint = "a parameter that had no gradient keeps None"
                elif filled:
                    hint = ("torch's zero_grad() sets .grad to None by default (set_to_none=True): it uses less "
                            "memory, and torch's optimizers skip a parameter whose grad is None")
                else:
                    hint = "reach every parameter of the tree: self.parameters()"
                fail(title, f"after {shown}, `{name}.grad` is "
                            f"{'a tensor of zeros' if filled else 'still a tensor'} in yours, None in torch",
                     hint=hint + " (stage 6)", devices=where)
            if theirs is not None:
                if mine is None:
                    fail(title, f"after {shown}, `{name}.grad` is None in yours; torch zeroes it in place",
                         hint="with set_to_none=False, keep the tensor and fill it with zeros: p.grad.zero_() (stage 6)",
                         devices=where)
                if mine.any():
                    fail(title, f"after {shown}, `{name}.grad` still holds non-zero values",
                         hint="reach every parameter of the tree: self.parameters() (stage 6)", devices=where)
                if mine is not kept[name]:
                    fail(title, f"after {shown}, `{name}.grad` is a new tensor; torch zeroes the old one in place",
                         hint="use p.grad.zero_() rather than assigning a new tensor (stage 6)", devices=where)
    return f"{plural(len(names), 'gradient')} set to None, or zeroed in place with set_to_none=False", len(names)


_RUN = {"registration": _registration, "names": _names, "state_dict": _state_dict, "load_state_dict": _load,
        "modes": _modes, "apply": _apply, "to": _to, "zero_grad": _zero_grad}


# --- the checks --------------------------------------------------------------------------------

def check_mirrors_torch(toy, reference, aspects=tuple(ASPECTS), *, dtype=torch.float64):
    """The toy tree built by ``toy()`` behaves like the torch tree built by ``reference()``.

    ``toy`` and ``reference`` are zero-argument factories that build the same tree (same attribute
    names, assigned in the same order), one on the student's ToyModule and one on nn.Module.
    ``aspects`` picks what to compare (see ASPECTS); each prints one verdict line. ``dtype`` is the
    target of the ``to`` aspect.
    """
    __tracebackhide__ = True
    aspects = [aspects] if isinstance(aspects, str) else list(aspects)
    unknown = [a for a in aspects if a not in ASPECTS]
    if unknown:
        raise ValueError(f"unknown aspect(s) {unknown}; choose from {list(ASPECTS)}")
    with quiet():
        root = type(reference()).__name__
    for aspect in aspects:
        stage, what = ASPECTS[aspect]
        title = f"stage {stage}, {what} vs torch's {root}"

        def per_device(*, device, aspect=aspect, title=title):
            __tracebackhide__ = True
            where = str(device)
            with device:
                torch.manual_seed(SEED + 7)
                mine = _build(toy, "yours", title, where)
                torch.manual_seed(SEED + 7)
                truth = _build(reference, "torch", title, where)
            if not _is_toy(mine):
                fail(title, f"the toy factory built a {type(mine).__name__}, not a toy module",
                     hint="ToyModule.__init__ must create self._parameters, _buffers and _modules (stage 1)"
                     if not isinstance(mine, nn.Module) else "build the tree on ToyModule, not nn.Module",
                     devices=where)
            if aspect == "to":
                return _to(mine, truth, title, where, dtype)
            return _RUN[aspect](mine, truth, title, where)

        per_device.__name__ = "check_mirrors_torch"
        _check(title)(per_device)()


def check_unknown_attribute(toy, names=("no_such_attribute", "weigth")):
    """Reading an attribute the toy does not have raises AttributeError that names it, as torch does."""
    __tracebackhide__ = True
    title = "stage 1, unknown attributes"
    with quiet():
        model = _build(toy, "yours", title, "")
        for name in names:
            try:
                got = getattr(model, name)
            except AttributeError as error:
                if name not in str(error):
                    fail(title, f"`model.{name}` raised AttributeError({str(error)!r}), which does not name "
                                f"`{name}`",
                         [f"torch says: '{type(model).__name__}' object has no attribute '{name}'"],
                         hint="put the attribute's name in the message, as torch does (stage 1)")
                continue
            except RecursionError as error:
                fail(title, f"`model.{name}` raised {describe_error(error)}", hint=_explain(error))
            except Exception as error:
                fail(title, f"`model.{name}` raised {describe_error(error)}; torch raises AttributeError",
                     [f"torch says: AttributeError: '{type(model).__name__}' object has no attribute '{name}'"],
                     hint="__getattr__ must raise AttributeError for a name it cannot find: hasattr() and "
                          "getattr(obj, name, default) rely on it (stage 1)" if not isinstance(error, NotImplementedError)
                     else _explain(error))
            fail(title, f"`model.{name}` returned {got!r}; torch raises AttributeError: "
                        f"'{type(model).__name__}' object has no attribute '{name}'",
                 ["a typo such as `self.weigth` then passes silently as None" if got is None else
                  "a name the module does not have must not produce a value"],
                 hint="end __getattr__ with raise AttributeError(...) instead of returning None (stage 1)")
        if hasattr(model, names[0]):
            fail(title, f"hasattr(model, {names[0]!r}) is True", hint="raise AttributeError (stage 1)")
    verdict(title, f"{', '.join(f'model.{n}' for n in names)} raise AttributeError naming the attribute, as in torch")


def check_forgotten_init(toy_class):
    """A subclass that forgets super().__init__() fails at its first assignment, clearly, as in torch."""
    __tracebackhide__ = True
    title = "stage 1, forgotten super().__init__()"
    cases = [
        ("a parameter", "weight", lambda self: setattr(self, "weight", nn.Parameter(torch.zeros(2)))),
        ("a submodule", "block", lambda self: setattr(self, "block", toy_class())),
        ("a buffer", "steps", lambda self: self.register_buffer("steps", torch.zeros(()))),
    ]
    torch_cases = [lambda self: setattr(self, "weight", nn.Parameter(torch.zeros(2))),
                   lambda self: setattr(self, "block", nn.Linear(1, 1)),
                   lambda self: self.register_buffer("steps", torch.zeros(()))]
    with quiet():
        for (what, attribute, body), torch_body in zip(cases, torch_cases):
            torch_says = "AttributeError: cannot assign ... before Module.__init__() call"
            shown = f"self.register_buffer('{attribute}', ...)" if what == "a buffer" else f"self.{attribute} = ..."
            try:
                type("Forgetful", (nn.Module,), {"__init__": torch_body})()
            except AttributeError as error:
                torch_says = f"AttributeError: {error}"
            try:
                type("Forgetful", (toy_class,), {"__init__": body})()
            except AttributeError as error:
                if "__init__" not in str(error):
                    fail(title, f"assigning {what} before super().__init__() raised AttributeError: {error}",
                         [f"torch says: {torch_says}"],
                         hint="that message does not say what went wrong: when the registry is missing, raise "
                              "an AttributeError that names __init__, like torch's (stage 1)")
                continue
            except Exception as error:
                fail(title, f"assigning {what} before super().__init__() raised {describe_error(error)}",
                     [f"torch says: {torch_says}"],
                     hint=_explain(error) if isinstance(error, (RecursionError, NotImplementedError)) else
                     "raise AttributeError naming __init__ when self.__dict__ has no registry yet (stage 1)")
            fail(title, f"a subclass that forgets super().__init__() assigned {what} (`{shown}`) without complaint",
                 [f"torch says: {torch_says}", f"yours filed `{attribute}` somewhere no registry will ever see it"],
                 hint="in __setattr__ and register_buffer, raise AttributeError when self.__dict__ has no registry "
                      "yet (stage 1)")
    verdict(title, "assigning a parameter, a submodule or a buffer first raises AttributeError naming __init__, "
                   "as in torch")
