"""Has the code being graded changed what the checks rely on? Fingerprints of trusted state.

The checks trust the grader package, torch and Python's builtins. Code in an answer cell can
monkeypatch any of them (``nn.Module.parameters = ...``, ``grader.checks.fail = ...``,
``builtins.isinstance = ...``, a closure cell of a check, a global forward hook, a
TorchFunctionMode left on the stack...) so that a check passes on a wrong answer. The re-run
(`rerun_child`) takes a `Watch` of that state in its pristine process, before any student code,
and compares the live state with it at every cell boundary: any difference flags the cells graded
from then on.

`Watch.capture` and `Watch.unchanged` are the fast path (C-level identity comparisons over every
watched namespace, a few milliseconds); they use only what was bound when the watch was built,
so later patches to this module cannot change their answer. `Watch.describe` is the slow path that
names the changes for the report.
"""

import functools
import itertools
import operator
import sys
import types

# Modules whose namespaces (and the classes and functions defined in them) the checks rely on.
TRUSTED_MODULES = (
    "builtins", "copy", "functools", "contextlib", "io", "warnings", "collections", "math", "operator", "types",
    "abc", "numbers", "itertools", "weakref", "pathlib", "os", "posixpath", "tempfile", "traceback", "inspect",
    "torch", "torch._tensor", "torch.functional", "torch.random", "torch.serialization", "torch.overrides",
    "torch.types", "torch._C", "torch._C._nn", "torch._C._autograd", "torch.library", "torch.cuda",
    "torch.utils.hooks", "torch._utils",
)
TRUSTED_PACKAGES = ("grader", "torch.nn", "torch.optim", "torch.autograd", "torch.export", "torch.fx")
# Namespace entries that change without anyone patching anything: by name anywhere, or one entry. torch.fx.traceback
# rebinds the current node's metadata to a new dict whenever torch.compile's inductor traces a graph; copyreg caches
# a class's __slotnames__ on it the first time an instance is copied or pickled.
VOLATILE = frozenset({"__warningregistry__", "__loader__", "__spec__", "__builtins__", "__cached__", "next_id",
                      "current_meta", "current_replay_node", "__slotnames__"})
_MISSING = object()


def trusted(name: str) -> bool:
    return name in TRUSTED_MODULES or any(name == p or name.startswith(p + ".") for p in TRUSTED_PACKAGES)


def _global_state():
    """(label, zero-argument C callable) for torch state that lives outside any namespace."""
    import torch

    return (
        ("a TorchFunctionMode on torch's mode stack", torch._C._len_torch_function_stack),
        ("a TorchDispatchMode on torch's mode stack", torch._C._len_torch_dispatch_stack),
        ("default hooks for tensors saved by autograd",
         functools.partial(torch._C._autograd._top_saved_tensors_default_hooks, False)),
    )


class Watch:
    """The namespaces, closures and global state to compare, and their pristine contents.

    `data` is a plain tuple: the re-run copies it before any student code runs and passes it to
    `capture` and `unchanged`, so nothing reachable from other modules decides what is compared.
    """

    def __init__(self, modules=None):
        modules = modules if modules is not None else {n: m for n, m in list(sys.modules.items())
                                                           if m is not None and trusted(n)}
        names = tuple(sorted(modules))
        spaces, classes, cells, ids = [], [], [], set()
        seen_classes: set = set()
        for name in names:
            module = modules[name]
            ids.add(id(module))
            namespace = vars(module)
            spaces.append((name, namespace, "module"))
            for key, value in list(namespace.items()):
                if isinstance(value, dict) and key.startswith("_global_"):
                    spaces.append((f"{name}.{key}", value, "registry"))  # global hooks
                if isinstance(value, type) and getattr(value, "__module__", None) == name \
                        and id(value) not in seen_classes:
                    seen_classes.add(id(value))
                    classes.append(value)
        for cls in classes:
            ids.add(id(cls))
            spaces.append((f"{cls.__module__}.{cls.__qualname__}", type.__dict__["__dict__"].__get__(cls), "class"))
        for label, namespace, kind in spaces:
            for key, value in list(namespace.items()):
                function = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
                if isinstance(function, types.FunctionType):
                    ids.add(id(function))
                    for i, cell in enumerate(function.__closure__ or ()):
                        try:
                            cell.cell_contents
                        except ValueError:
                            continue  # an empty cell: nothing to compare
                        cells.append((f"{label}.{key} (closure variable {function.__code__.co_freevars[i]})", cell))
        self.labels = (tuple(label for label, _, _ in spaces), tuple(label for label, _ in cells),
                       tuple(label for label, _ in _global_state()))
        self.data = (tuple(ns for _, ns, _ in spaces), tuple(kind for _, _, kind in spaces),
                     tuple(cell for _, cell in cells), tuple(classes), names, tuple(modules[n] for n in names),
                     tuple(f for _, f in _global_state()))
        self.trusted_ids = frozenset(ids)
        self.pristine = capture(self.data)

    def describe(self, data, before, limit: int = 6) -> list[str]:
        """What changed since `before` (a capture of `data`), in words, at most `limit` items."""
        namespaces, kinds, cells, classes, names, modules, state = data
        spaces, contents, mros, entries, module_types, values = before
        space_labels, cell_labels, state_labels = self.labels
        found = []
        for label, namespace, kind, (keys, old_values, _) in zip(space_labels, namespaces, kinds, spaces):
            old = dict(zip(keys, old_values))
            for key in keys:
                if key in VOLATILE:
                    continue
                if key not in namespace:
                    found.append(f"`{label}.{key}` was deleted")
                elif namespace[key] is not old[key]:
                    found.append(f"`{label}.{key}` was replaced" if kind != "registry"
                                 else f"a global hook in `{label}` was replaced")
            if kind != "module":
                for key in namespace:
                    if key not in old and not (kind == "class" and key in VOLATILE):
                        found.append(f"`{label}.{key}` was added" if kind == "class"
                                     else f"a global hook was registered in `{label}`")
        for label, cell, value in zip(cell_labels, cells, contents):
            try:
                if cell.cell_contents is not value:
                    found.append(f"`{label}` was replaced")
            except ValueError:
                found.append(f"`{label}` was emptied")
        for cls, mro in zip(classes, mros):
            if cls.__mro__ is not mro:
                found.append(f"the base classes of `{cls.__module__}.{cls.__qualname__}` were changed")
        for name, module, entry, kind in zip(names, modules, entries, module_types):
            if sys.modules.get(name) is not entry:
                found.append(f"`sys.modules[{name!r}]` was replaced")
            elif type(module) is not kind:
                found.append(f"the class of module `{name}` was changed")
        for label, f, value in zip(state_labels, state, values):
            if f() != value:
                found.append(f"{label} was left active")
        if len(found) > limit:
            found = found[:limit] + [f"and {len(found) - limit} more"]
        return found or ["the grader's or torch's state changed"]


def capture(data, _tuple=tuple, _map=map, _len=len, _type=type, _modules=sys.modules,
            _cell=operator.attrgetter("cell_contents"), _mro=operator.attrgetter("__mro__")):
    """The watched state now: per namespace (keys, values, size), closure contents, MROs, sys.modules entries,
    module classes, global state."""
    namespaces, kinds, cells, classes, names, modules, state = data
    return (_tuple((_tuple(ns), _tuple(ns.values()), _len(ns)) for ns in namespaces), _tuple(_map(_cell, cells)),
            _tuple(_map(_mro, classes)), _tuple(_map(_modules.get, names)), _tuple(_map(_type, modules)),
            _tuple(f() for f in state))


def unchanged(data, before, _tuple=tuple, _map=map, _all=all, _zip=zip, _len=len, _is=operator.is_,
              _eq=operator.eq, _repeat=itertools.repeat, _missing=_MISSING, _volatile=VOLATILE,
              _cell=operator.attrgetter("cell_contents"), _mro=operator.attrgetter("__mro__"), _type=type,
              _modules=sys.modules, _ValueError=ValueError):
    """True when nothing in `data` changed since `before` (a capture); new module attributes are allowed."""
    namespaces, kinds, cells, classes, names, modules, state = data
    spaces, contents, mros, entries, module_types, values = before
    for namespace, kind, (keys, old, size) in _zip(namespaces, kinds, spaces):
        if kind != "module" and _len(namespace) != size and (kind != "class" or _len(namespace) < size or not _all(
                key in _volatile for key in _tuple(namespace) if key not in keys)):
            return False  # an attribute added to a class (but a cache such as copyreg's), or a global hook registered
        now = _tuple(_map(namespace.get, keys, _repeat(_missing)))
        if not _all(_map(_is, now, old)):
            for key, a, b in _zip(keys, old, now):
                if a is not b and key not in _volatile:
                    return False
    try:
        if not _all(_map(_is, _map(_cell, cells), contents)):
            return False
    except _ValueError:
        return False  # a closure cell was emptied
    return (_all(_map(_is, _map(_mro, classes), mros)) and _all(_map(_is, _map(_modules.get, names), entries))
            and _all(_map(_is, _map(_type, modules), module_types)) and _all(_map(_eq, (f() for f in state), values)))
