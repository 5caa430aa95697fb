"""Stages 1 and 2 of the toy module (unit 02): what sits in `_parameters`, `_buffers` and `_modules`, and the
names the walking methods yield, in torch's order, compared with torch's tree.
"""

import torch
from torch import nn

from .diagnose import describe_error
from .report import fail, plural
from .toy_reach import (_LIST_FIX, _MISSING, REGISTRIES, _call, _explain, _get, _hidden, _is_toy, _locate_modules,
                        _path, _tensor)

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
    params = len(list(ref.parameters()))
    buffers = len(list(ref.buffers()))  # before the buffers are reassigned, which unties a shared one
    _reassign_buffers(toy, ref, title, where)
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
        value = vars(mine).get(key)
        if registry == "_parameters" and isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            hint = (f"`{key}` was assigned as a plain tensor: wrap it in nn.Parameter(...), which __setattr__ files in "
                    "_parameters")
        elif registry == "_buffers" and isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            hint = (f"make `{key}` with self.register_buffer(name, tensor), which files it in _buffers (stage 1): a "
                    f"plain `self.{key} = tensor` keeps it in the instance __dict__, in torch too")
        if any("plain" in d for d in details):
            hint = _LIST_FIX
        elif registry == "_modules" and not elsewhere and key not in vars(mine):
            found = _children_elsewhere(mine, yours, theirs)
            if found:
                problem, hint = f"{label} {found[0]}", found[1]
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
        truth = theirs[key]
        if expected and isinstance(truth, torch.Tensor) and (value.shape, value.dtype) != (truth.shape, truth.dtype):
            fail(title, f"{label}'s {registry}[{key!r}] is {_layout(value)} in yours, {_layout(truth)} in torch",
                 hint="build it as the torch model does: the same sizes, in the same order, and the same dtype",
                 devices=where)
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


def _children_elsewhere(mine, yours: dict, theirs: dict) -> tuple[str, str] | None:
    """(problem, hint) when a toy module (a container such as a toy ModuleList) holds its children under other
    names than torch's, or keeps them in a plain list, tuple or dict instead of registering them."""
    numbered = all(isinstance(k, str) and k.isdigit() for k in theirs)
    how = ("register each one under str(i), with setattr(self, str(i), module), as nn.ModuleList does" if numbered
           else "register each one under the name torch uses")
    if yours and set(yours) != set(theirs):
        return f"registers its children as {list(yours)}; torch's are named {list(theirs)}", how
    for attribute, value in vars(mine).items():
        if isinstance(value, (list, tuple, dict)):
            items = list(value.values()) if isinstance(value, dict) else list(value)
            toys = [x for x in items if _is_toy(x)]
            if toys:
                container = "dict" if isinstance(value, dict) else type(value).__name__
                return (f"keeps {plural(len(toys), 'module')} in a plain {container} at `self.{attribute}`, where "
                        f"registration never looks; torch registers them as children {list(theirs)}", how)
    return None


def _layout(t: torch.Tensor) -> str:
    dtype = str(t.dtype).removeprefix("torch.")
    return f"{'an' if dtype[0] in 'aeiou' else 'a'} {dtype} tensor of shape {list(t.shape)}"


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

