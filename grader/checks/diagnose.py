"""Find what registration missed and explain torch errors in the student's terms.

Everything here describes a model; nothing here decides a grade.
"""

import linecache
import os
import sysconfig
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

# Code that is not the student's: the grader, torch and Python's own library. Frames elsewhere in a
# traceback are the student's (or a test cell's, which calls the student's code).
_NOT_STUDENT = tuple(sorted({os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
                             os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
                             *(os.path.realpath(sysconfig.get_paths()[k]) + os.sep
                               for k in ("stdlib", "platstdlib", "purelib", "platlib")),
                             *(sysconfig.get_paths()[k] + os.sep for k in ("stdlib", "platstdlib", "purelib", "platlib"))}))

# Attributes every nn.Module has in its __dict__ (the registries, hook dicts, flags).
_MODULE_INTERNALS = frozenset(vars(nn.Module()))

_CONTAINER_FIX = {
    ("list", "module"): "use nn.ModuleList",
    ("tuple", "module"): "use nn.ModuleList",
    ("dict", "module"): "use nn.ModuleDict",
    ("list", "tensor"): "use nn.ParameterList (or register each as a buffer)",
    ("tuple", "tensor"): "use nn.ParameterList (or register each as a buffer)",
    ("dict", "tensor"): "use nn.ParameterDict (or register each as a buffer)",
}


@dataclass(frozen=True)
class Hidden:
    """Modules or tensors stored on a module where nn.Module cannot see them."""

    where: str  # "self.layers" or "self.block.layers"
    container: str  # "list", "tuple", "dict" or "attribute"
    what: str  # "3 nn.Linear layers"
    numel: int  # parameter elements hidden, trainable or not
    trainable: int  # elements that require grad
    fix: str

    def message(self) -> str:
        if self.container == "attribute":
            return f"{self.what} at `{self.where}` is not registered: {self.fix}"
        return f"{self.what} sit in a plain {self.container} at `{self.where}` and are not registered: {self.fix}"


def type_name(obj) -> str:
    cls = type(obj)
    return f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn") else cls.__name__


def _count_types(items) -> str:
    counts = Counter(type_name(x) for x in items)
    parts = [f"{n} {name}" for name, n in counts.items()]
    noun = "layers" if len(items) > 1 else "layer"
    if all(isinstance(x, torch.Tensor) for x in items):
        return f"{len(items)} tensors" if len(items) > 1 else "1 tensor"
    return (" and ".join(parts) if len(parts) > 1 else parts[0]) + f" {noun}"


def _registered(model: nn.Module) -> tuple[set[int], set[int]]:
    modules = {id(m) for m in model.modules()}
    tensors = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    return modules, tensors


def _elements(items) -> tuple[int, int]:
    tensors = {}
    for x in items:
        found = x.parameters() if isinstance(x, nn.Module) else [x]
        for t in found:
            tensors[id(t)] = t
    total = sum(t.numel() for t in tensors.values())
    trainable = sum(t.numel() for t in tensors.values() if t.requires_grad)
    return total, trainable


def find_hidden(model: nn.Module) -> list[Hidden]:
    """Modules and tensors kept in plain attributes, lists, tuples or dicts of any submodule."""
    registered_modules, registered_tensors = _registered(model)

    def hidden(x) -> bool:
        if isinstance(x, nn.Module):
            return id(x) not in registered_modules
        return isinstance(x, torch.Tensor) and id(x) not in registered_tensors

    found = []
    for prefix, module in model.named_modules():
        owner = f"self.{prefix}." if prefix else "self."
        for attr, value in vars(module).items():
            if attr in _MODULE_INTERNALS:
                continue
            where = owner + attr
            if isinstance(value, (nn.Module, torch.Tensor)):
                if not hidden(value):
                    continue
                total, trainable = _elements([value])
                if isinstance(value, nn.Module):
                    what, fix = f"{type_name(value)} layer", "assign it with `self.name = layer` so __setattr__ registers it"
                else:
                    what = f"a plain tensor (shape {list(value.shape)})"
                    fix = ("wrap it in nn.Parameter if it should be trained, or use self.register_buffer(...) "
                           "if it is state; .to(), state_dict() and the optimizer all skip it")
                found.append(Hidden(where, "attribute", what, total, trainable, fix))
                continue
            if isinstance(value, (list, tuple, dict)):
                items = list(value.values()) if isinstance(value, dict) else list(value)
                items = [x for x in items if hidden(x)]
                if not items:
                    continue
                kind = "module" if any(isinstance(x, nn.Module) for x in items) else "tensor"
                container = "dict" if isinstance(value, dict) else "tuple" if isinstance(value, tuple) else "list"
                total, trainable = _elements(items)
                found.append(Hidden(where, container, _count_types(items), total, trainable,
                                    _CONTAINER_FIX[(container, kind)]))
    return found


def shared_modules(model: nn.Module) -> list[list[str]]:
    """Groups of names under which one module (with parameters) is registered more than once.

    Only the outermost shared module is named: in ``nn.ModuleList([block] * 3)`` that is `0`, `1`, `2`,
    not every layer inside the block.
    """
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if any(True for _ in module.parameters()):
            names.setdefault(id(module), []).append(name or "(the model itself)")
    groups = [group for group in names.values() if len(group) > 1]
    outer = [name for group in groups for name in group]
    return [group for group in groups
            if not all(any(name.startswith(o + ".") for o in outer) for name in group)]


def own_parameters_totalling(model: nn.Module, surplus: int) -> list[str]:
    """Trainable parameters set directly on one of your own (non-torch) modules whose sizes add up to ``surplus``.

    A count that is too high by exactly these is the mark of constants or statistics stored
    as nn.Parameter where a buffer belongs. torch's own layers are left out: their parameters
    are not yours to turn into buffers.
    """
    for prefix, module in model.named_modules():
        if type(module).__module__.startswith("torch.nn"):
            continue
        own = [(f"{prefix}.{n}" if prefix else n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        singles = [name for name, p in own if p.numel() == surplus]
        if singles:
            return singles[:1]
        if own and sum(p.numel() for _, p in own) == surplus:
            return [name for name, _ in own]
    return []


def empty_slots(model: nn.Module) -> list[str]:
    """Plain attributes set to None, such as `self.head = None`: often a layer meant to be built later (in forward)."""
    return [f"self.{prefix}.{attr}" if prefix else f"self.{attr}"
            for prefix, module in model.named_modules() for attr, value in vars(module).items()
            if value is None and attr not in _MODULE_INTERNALS]


def dotted_children(model: nn.Module) -> list[str]:
    """Modules registered under a name with a dot: `setattr(model, "body.0", layer)` adds a new child called
    "body.0" (one that forward never calls) instead of replacing `body[0]`."""
    return [f"`{name}.{child}`" if name else f"`{child}`"
            for name, module in model.named_modules() for child in module._modules if "." in child]


def frozen_parameters(model: nn.Module) -> list[tuple[str, int]]:
    return [(name, p.numel()) for name, p in model.named_parameters() if not p.requires_grad]


def graph_leaves(output) -> list[torch.Tensor]:
    """Leaf tensors that autograd would accumulate a gradient into, for this output."""
    roots = [t.grad_fn for t in _tensors_in(output) if t.grad_fn is not None]
    seen, leaves, stack = set(), [], roots
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.append(fn.variable)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return leaves


def unregistered_leaves(model: nn.Module, output) -> list[torch.Tensor]:
    """Trainable tensors that the output depends on but model.parameters() does not list."""
    registered = {id(p) for p in model.parameters()}
    return [t for t in graph_leaves(output) if t.requires_grad and id(t) not in registered]


def _tensors_in(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v)


# Torch error messages, matched by fragment, and what they mean for the student.
_KNOWN_ERRORS = [
    ("before Module.__init__() call",
     "__init__ assigns a layer or parameter before `super().__init__()` has run: make `super().__init__()` the first line of __init__"),
    ("Can't call numpy() on Tensor that requires grad",
     "forward calls .numpy(), which leaves autograd: keep the whole forward in torch operations"),
    ("optimizer got an empty parameter list",
     "model.parameters() is empty, so an optimizer has nothing to train: no layer is registered"),
    ("Expected more than 1 value per channel when training",
     "a BatchNorm layer in train mode got a batch of one sample: it needs at least 2 samples, or eval mode"),
    ("must have the same dtype",
     "a tensor did not follow .to(dtype): a plain tensor attribute, or a tensor created inside forward without dtype=x.dtype"),
    ("same dtype",
     "a tensor did not follow .to(dtype): a plain tensor attribute, or a tensor created inside forward without dtype=x.dtype"),
    ("Cannot copy out of meta tensor",
     "the model's tensors are on the meta device, which holds shapes but no data, so .to() has nothing to copy: "
     "model.to_empty(device=...) allocates the memory, then each layer's reset_parameters() initialises it"),
    ("Tensor on device meta",
     "a tensor on the meta device (shapes, no data) took part in the computation: the model, or part of it, was "
     "never materialised (to_empty, or load_state_dict(..., assign=True))"),
    ("is not on the expected device",
     "a tensor did not follow .to(device): a plain tensor attribute, or a tensor created inside forward without device=x.device"),
    ("Expected all tensors to be on the same device",
     "a tensor did not follow .to(device): a plain tensor attribute, or a tensor created inside forward without device=x.device"),
    ("as child module",
     "that attribute holds a registered module, so torch accepts only another nn.Module (or None) there: add to the "
     "container you have (`container[key] = layer`, `.append(layer)`) instead of replacing it with a plain dict or list"),
    ("shapes cannot be multiplied",
     "two layers do not chain: one layer's out_features must equal the next one's in_features"),
    ("does not require grad and does not have a grad_fn",
     "the output is cut off from autograd (.detach(), .numpy(), .data or torch.no_grad() in forward)"),
    ("support the deepcopy protocol",
     "the model keeps a tensor that is still attached to an autograd graph (a log, a statistic, a cache), and "
     "copy.deepcopy refuses it: a value a module keeps between calls must let go of the graph (.item() or .detach())"),
    ("modified by an inplace operation",
     "a tensor autograd still needs was changed in place (an `x += ...`, `x[...] = ...` or a method ending in `_`): use the out-of-place form"),
]


def explain_error(error: BaseException) -> str:
    """One sentence on what a torch error means for the student's code."""
    text = str(error)
    for fragment, meaning in _KNOWN_ERRORS:
        if fragment in text:
            return meaning
    if isinstance(error, NotImplementedError):  # after the known errors: torch raises some NotImplementedErrors too
        return "the answer cell still runs the stub's `raise NotImplementedError(...)`: replace that line with your code"
    return "read the error message: the line of your code named in it is where the error came from"


def describe_error(error: BaseException) -> str:
    """"ValueError: the message's first line (in `forward`, line 3: `x = self.fc(x)`)"."""
    first_line = (str(error).strip().splitlines() or [""])[0].split(" Hint: enable anomaly detection")[0]
    text = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    return text + student_line(error)


def student_line(error: BaseException) -> str:
    """Where the student's code was when `error` was raised: the innermost frame outside the grader, torch and
    Python's library, as " (in `forward`, line 3: `x = self.fc(x)`)"; "" when there is none."""
    try:
        tb, frames = error.__traceback__, []
        while tb is not None:
            code = tb.tb_frame.f_code
            name = code.co_filename
            if not name.startswith(_NOT_STUDENT) and not name.startswith("<frozen"):
                frames.append((code.co_name, name, tb.tb_lineno))
            tb = tb.tb_next
    except (ValueError, RuntimeError):  # frames refused (the grader's re-run guards them)
        return ""
    if not frames:
        return ""
    # the innermost frame; for endless recursion, the line that keeps calling (the innermost one is arbitrary)
    found = Counter(frames).most_common(1)[0][0] if isinstance(error, RecursionError) else frames[-1]
    function, filename, lineno = found
    where = "your cell" if function == "<module>" else f"`{function}`"
    line = linecache.getline(filename, lineno).strip()
    return f" (in {where}, line {lineno}" + (f": `{line[:80]}`)" if line else ")")
