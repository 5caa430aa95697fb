"""Checks that hold a student's toy module up against torch.nn.Module on mirrored trees.

The student builds a small ``ToyModule`` from plain dicts (unit 02). A test cell builds the same
tree twice, once on the toy and once on ``nn.Module`` (same attribute names, same order), and
``check_mirrors_torch`` compares them aspect by aspect: what sits in ``_parameters``, ``_buffers``
and ``_modules``; the names the walking methods yield, and their order; ``state_dict`` and
``load_state_dict`` with its reports and errors; training flags; ``apply``; ``to(dtype)``;
``zero_grad``; and, for a model built on the toy, what its forward computes. Each aspect prints one verdict line or names the first difference, yours beside
torch's. The truth is always torch: nothing here walks a toy tree on its own, it reaches the
toy's parts through the names torch gives and through the student's own methods.

Three helper modules hold the pieces: `toy_reach` (building the toy, calling its methods, finding its parts
through torch's names), `toy_registry` (stages 1 and 2: the dicts and the walks) and `toy_state` (stages 3, 5 and
6: state_dict, load_state_dict, to, zero_grad). This module holds the checks, stage 4 (train/eval), stage 5's
apply, and the forward of a model built on the toy.
"""

import torch
from torch import nn

from .diagnose import describe_error
from .report import GraderError, fail, own_errors, plural, quiet, verdict
from .runner import SEED, _check
from .reference import _close, _difference
from .toy_reach import STAGES, _MISSING, _build, _call, _explain, _get, _is_toy, _locate_modules, _path, _tensor
from .toy_registry import _depth, _names, _registration
from .toy_state import _load, _state_dict, _to, _zero_grad

ASPECTS = {  # aspect -> (stage, what it compares)
    "registration": (1, "the three dicts"),
    "names": (2, "names and order"),
    "state_dict": (3, "state_dict"),
    "load_state_dict": (3, "load_state_dict"),
    "modes": (4, "train/eval"),
    "apply": (5, "apply"),
    "to": (5, "to(dtype)"),
    "zero_grad": (6, "zero_grad"),
    "forward": (None, "forward and gradients"),  # a model built on the toy: what it computes
}
__all__ = ["ASPECTS", "STAGES", "check_forgotten_init", "check_mirrors_torch", "check_unknown_attribute"]


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



def _forward(toy, ref, title, where, example):
    """A model built on the toy computes what the torch model computes from the same values: the output, the
    gradient with respect to the input, every parameter's gradient, and the buffers the call updates."""
    __tracebackhide__ = True
    located = _locate_modules(toy, ref, title, where)
    tensors = ref.state_dict(keep_vars=True)  # tied tensors under each name
    mine = {name: _tensor(located, name, title, where) for name in tensors}
    for name, truth in tensors.items():
        if mine[name].shape != truth.shape:
            fail(title, f"`{_path(*name.rpartition('.')[::2])}` has shape {list(mine[name].shape)} in yours, "
                        f"{list(truth.shape)} in torch", hint="build the layers with the sizes torch's model uses",
                 devices=where)
    with torch.no_grad():  # torch's model holds your values, so only the computation can differ
        for name, truth in tensors.items():
            truth.copy_(mine[name])
    generator = torch.Generator().manual_seed(SEED + 50)
    x = torch.randn(tuple(example), generator=generator).to(where)
    x_mine, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    try:
        out = toy(x_mine)
    except Exception as error:
        fail(title, f"calling your model raised {describe_error(error)}", hint=_explain(error), devices=where)
    try:
        expected = ref(x_ref)
    except Exception as error:  # the torch model is the test's own code
        raise GraderError("check_mirrors_torch (the torch reference)", error) from None
    if not isinstance(out, torch.Tensor) or out.shape != expected.shape:
        got = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        fail(title, f"your model returns {got}; torch's returns shape {list(expected.shape)}",
             hint="keep the forward the exercise gives, and the layer sizes", devices=where)
    if not _close(out, expected):
        fail(title, "with the same values and input, your model's output differs from torch's",
             _difference("output", out, expected), hint="compare your forward with the torch model's, line by line",
             devices=where)
    for name, truth in ref.named_buffers():
        if not torch.equal(mine[name].detach().cpu(), truth.detach().cpu()):
            fail(title, f"after a call, buffer `{name}` holds {mine[name].tolist()} in yours, {truth.tolist()} in torch",
                 hint="update the buffer in forward as torch's model does", devices=where)
    if not out.requires_grad:
        fail(title, "your model's output carries no autograd graph; torch's does",
             hint="keep every operation in torch, on the registered parameters (no .detach(), .data or no_grad)",
             devices=where)
    weights = torch.randn(expected.shape, generator=generator).to(where)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    pairs = [("the input", x_mine.grad, x_ref.grad)] + [(f"`{name}`", mine[name].grad, truth.grad)
                                                        for name, truth in ref.named_parameters()]
    for label, grad, truth in pairs:
        if truth is None:
            continue
        if grad is None or not _close(grad, truth):
            problem = (f"your outputs match, but no gradient reaches {label}" if grad is None else
                       f"your outputs match, but the gradient of {label} differs from torch's")
            fail(title, problem, [] if grad is None else _difference("grad", grad, truth),
                 hint="every parameter must take part in the output through autograd, as in torch's model",
                 devices=where)
    params = len(list(ref.parameters()))
    return (f"output, input gradient and {plural(params, 'parameter gradient')} agree with torch's on a batch of "
            f"{example[0]}"), out.detach().double().flatten().cpu()


_RUN = {"registration": _registration, "names": _names, "state_dict": _state_dict, "load_state_dict": _load,
        "modes": _modes, "apply": _apply, "to": _to, "zero_grad": _zero_grad}


# --- the checks --------------------------------------------------------------------------------

def check_mirrors_torch(toy, reference, aspects=tuple(a for a in ASPECTS if a != "forward"), *,
                        dtype=torch.float64, example=None):
    """The toy tree built by ``toy()`` behaves like the torch tree built by ``reference()``.

    ``toy`` and ``reference`` are zero-argument factories that build the same tree (same attribute
    names, assigned in the same order), one on the student's ToyModule and one on nn.Module.
    ``aspects`` picks what to compare (see ASPECTS); each prints one verdict line. ``dtype`` is the
    target of the ``to`` aspect; ``example``, the input shape (batch first) of the ``forward`` aspect.
    """
    __tracebackhide__ = True
    aspects = [aspects] if isinstance(aspects, str) else list(aspects)
    unknown = [a for a in aspects if a not in ASPECTS]
    if unknown:
        raise ValueError(f"unknown aspect(s) {unknown}; choose from {list(ASPECTS)}")
    if "forward" in aspects and example is None:
        raise ValueError("the forward aspect needs an example input shape, such as example=(3, 4)")
    with quiet():
        try:
            root = type(reference()).__name__
        except Exception as error:  # the torch tree is the test's own code
            raise GraderError("check_mirrors_torch (the torch reference)", error) from None
    for aspect in aspects:
        stage, what = ASPECTS[aspect]
        title = f"stage {stage}, {what} vs torch's {root}" if stage else f"{what} vs torch's {root}"

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
            if aspect == "forward":
                return _forward(mine, truth, title, where, example)
            return _RUN[aspect](mine, truth, title, where)

        per_device.__name__ = "check_mirrors_torch"
        _check(title)(per_device)()


def check_unknown_attribute(toy, names=("no_such_attribute", "weigth")):
    """Reading an attribute the toy does not have raises AttributeError that names it, as torch does."""
    __tracebackhide__ = True
    title = "stage 1, unknown attributes"
    with quiet(), own_errors("check_unknown_attribute"):
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
    with quiet(), own_errors("check_forgotten_init"):
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
