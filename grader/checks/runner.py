"""How every check runs: over the device matrix, on a model built fresh, with seeded inputs.

A check takes the model (an nn.Module, which is deep-copied, or a zero-argument factory such
as a class or lambda) and, where it runs the model, an ``example``: a shape such as ``(8, 20)``
for a seeded random batch, a tensor, or a function ``device -> input`` (return a tuple for
several positional inputs).

`_check` runs the decorated per-device function on every device of the matrix (see
grader.checks.devices), prints one verdict line when all is well, and otherwise lets the
CheckFailed diagnosis through. Where a check computes numbers on several devices, they must
agree with the CPU's within AGREEMENT (loose enough for TF32 matmuls and cuDNN convolutions).
"""

import contextlib
import copy
import functools
from collections.abc import Callable

import torch
from torch import nn

from . import devices
from .diagnose import describe_error, explain_error, find_hidden, type_name
from .report import fail, own_errors, quiet, verdict

AGREEMENT = {"rtol": 1e-3, "atol": 1e-4}
SEED = 0


# --- running a check over the device matrix -------------------------------------------

def _check(title: str):
    """Run the decorated per-device function on every device, then print the verdict.

    The function returns (summary, fingerprint); fingerprints (numbers or tensors)
    must agree across devices.
    """
    def decorate(per_device):
        @functools.wraps(per_device)
        def run(*args, **kwargs):
            __tracebackhide__ = True
            matrix = devices.selected()
            cuda = [d.index or 0 for d in matrix if d.type == "cuda"]
            results = []
            with quiet(), torch.random.fork_rng(devices=cuda), own_errors(per_device.__name__):
                for device in matrix:
                    torch.manual_seed(SEED)
                    results.append(per_device(*args, device=device, **kwargs))
                _agree(title, matrix, [fingerprint for _, fingerprint in results])
            verdict(title, results[0][0], devices.label(matrix))
        return run
    return decorate


def _agree(title, matrix, fingerprints):
    __tracebackhide__ = True
    reference = fingerprints[0]
    for device, value in zip(matrix[1:], fingerprints[1:]):
        if reference is None or value is None:  # nothing comparable (say, a random draw)
            continue
        a = torch.as_tensor(reference, dtype=torch.float64).cpu()
        b = torch.as_tensor(value, dtype=torch.float64).cpu()
        if a.shape != b.shape or not torch.allclose(a, b, **AGREEMENT, equal_nan=True):
            gap = (a - b).abs().max().item() if a.shape == b.shape else f"shapes {list(a.shape)} vs {list(b.shape)}"
            fail(title, f"results on {device} differ from {matrix[0]} (largest gap {gap})",
                 hint=f"the model should compute the same thing on every device (tolerance {AGREEMENT}); "
                      "look for code that depends on the device, such as tensors created on the CPU inside forward",
                 devices=devices.label(matrix))


def _build(model, device: torch.device, title: str) -> nn.Module:
    __tracebackhide__ = True
    try:
        built = copy.deepcopy(model) if isinstance(model, nn.Module) else model()
    except Exception as error:  # the student's constructor: report any failure
        fail(title, f"building the model raised {describe_error(error)}", hint=explain_error(error), devices=str(device))
    if not isinstance(built, nn.Module):
        fail(title, f"expected an nn.Module, got {type(built).__name__}",
             hint=("a function that should hand back the model ends without `return model`" if built is None else
                   "pass the model, its class, or a function that returns a new model"), devices=str(device))
    try:
        return built.to(device)
    except Exception as error:
        fail(title, f"model.to({str(device)!r}) raised {describe_error(error)}", hint=explain_error(error), devices=str(device))


def _inputs(example, device: torch.device, dtype=None) -> tuple:
    if callable(example):
        made = example(device)
        inputs = made if isinstance(made, tuple) else (made,)
    elif isinstance(example, torch.Tensor):
        inputs = (example,)
    else:
        generator = torch.Generator().manual_seed(SEED + 1)
        inputs = (torch.randn(tuple(example), generator=generator),)
    return tuple(x.to(device=device, dtype=dtype if (dtype and x.is_floating_point()) else x.dtype)
                 if isinstance(x, torch.Tensor) else x for x in inputs)


def _forward(model, inputs, title: str, device):
    """Call the model; fail with a diagnosis if it raises, if the call changes what is registered, or if it
    skips a layer's hooks."""
    __tracebackhide__ = True
    held = list(model.named_parameters())  # held, so that no id is reused; pairs, since a dotted child repeats names
    before = {(name, id(p)) for name, p in held}
    hooks = hook_counts(model)
    called: set[int] = set()
    try:
        with _watching_calls(called):
            output = model(*inputs)
    except Exception as error:
        fail(title, f"calling the model raised {describe_error(error)}", _hidden_details(model),
             hint=explain_error(error), devices=str(device))
    skipped = skipped_hooks(model, output, called)
    if skipped:
        fail(title, "a layer took part in forward without being called, so its hooks never ran",
             [f"`{name}` ({kind}): its parameters are in the output's graph, but `{name}(...)` was never called"
              for name, kind in skipped[:4]],
             hint="call a layer as `self.layer(x)`, not `self.layer.forward(x)` and not through its weights "
                  "(F.linear(x, self.layer.weight, ...)): only a call runs the layer's hooks, which profilers, "
                  "pruning, quantisation and this grader rely on", devices=str(device))
    if hook_counts(model) != hooks:  # more calls tell a hook registered once from one registered every time
        leaks = hook_leaks(model, lambda: model(*inputs), hooks, first=hook_counts(model))
        if leaks:
            fail(title, LEAK_PROBLEM, leaks, hint=LEAK_HINT, devices=str(device))
    rebuilt = [n for n, p in model.named_parameters() if (n, id(p)) not in before]
    if rebuilt:
        owners = sorted({n.rpartition(".")[0] or n for n in rebuilt})
        fail(title, "calling the model registers new parameters, so an optimizer built before it holds stale ones",
             [f"`{n}` is a new tensor after forward" for n in rebuilt],
             hint=f"{', '.join(f'`self.{o}`' for o in owners)} is assigned inside forward: build it once in __init__",
             devices=str(device))
    return output


# --- hooks: the ones a forward skips, the ones it leaves behind, the ones that change outputs in place ----

@contextlib.contextmanager
def _watching_calls(called: set):
    """Note the id of every module called through `module(...)` (a global forward pre-hook) while inside."""
    handle = nn.modules.module.register_module_forward_pre_hook(lambda module, args: called.add(id(module)))
    try:
        yield
    finally:
        handle.remove()


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def _graph_leaves(output) -> set[int]:
    """ids of the leaf tensors (parameters) that the output's autograd graph accumulates into."""
    found, seen = set(), set()
    todo = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None:
            found.add(id(variable))
        todo.extend(next_node for next_node, _ in node.next_functions)
    return found


def skipped_hooks(model: nn.Module, output, called: set[int]) -> list[tuple[str, str]]:
    """(name, type) of the layers whose own parameters the output depends on, though neither they nor any
    other module holding the same parameters was called: `self.fc.forward(x)`, or its weights used directly;
    and the student's own modules whose children ran though they were not called (`self.block.forward(x)`).

    Only layers whose caller is the student's code count: children of torch's own modules (the out_proj of
    nn.MultiheadAttention is used through its weights by design) and of containers owned by them are left alone.
    """
    used = _graph_leaves(output)
    if not used:
        return []
    owners: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(module)
    torch_owned = set()
    for module in model.modules():
        if type(module).__module__.startswith("torch.") and not isinstance(module, _CONTAINERS):
            torch_owned.update(id(sub) for sub in module.modules() if sub is not module)
    skipped = []
    for name, module in model.named_modules():
        if not name or id(module) in torch_owned or id(module) in called:
            continue
        own = [p for p in module._parameters.values() if p is not None and id(p) in used]
        if own and not any(id(owner) in called for p in own for owner in owners[id(p)]):
            skipped.append((name, type_name(module)))
        elif not own and not type(module).__module__.startswith("torch.") and any(
                id(sub) in called for sub in module.modules() if sub is not module):
            skipped.append((name, type_name(module)))  # a module of the student's, bypassed with .forward(...)
    return skipped


# Hook dicts and the student's word for each (the _with_kwargs and _always_called dicts only
# flag entries of _forward_hooks and _forward_pre_hooks, so they are not counted).
_MODULE_HOOKS = {
    "_forward_pre_hooks": "forward pre-hook", "_forward_hooks": "forward hook",
    "_backward_pre_hooks": "backward pre-hook", "_backward_hooks": "backward hook",
    "_state_dict_pre_hooks": "state_dict pre-hook", "_state_dict_hooks": "state_dict hook",
    "_load_state_dict_pre_hooks": "load_state_dict pre-hook", "_load_state_dict_post_hooks": "load_state_dict post-hook",
}
_TENSOR_HOOKS = {"_backward_hooks": "tensor hook", "_post_accumulate_grad_hooks": "post-accumulate-grad hook"}
_GLOBAL_HOOKS = {"_global_forward_pre_hooks": "global forward pre-hook", "_global_forward_hooks": "global forward hook",
                 "_global_backward_pre_hooks": "global backward pre-hook", "_global_backward_hooks": "global backward hook"}

LEAK_PROBLEM = "calling the model leaves hooks behind: every call registers more, and none is removed"
LEAK_HINT = ("register a hook once (in __init__, or before training), not in forward; for a hook you need only for a "
             "while, keep the handle that register_..._hook returns and call handle.remove(). A leaked hook runs on "
             "every later call and keeps alive whatever it holds")


def hook_counts(model: nn.Module) -> dict[tuple[str, str, str], int]:
    """Hooks in each hook dict of the model's tree: (module or parameter name, dict, kind) -> count.

    Tensor hooks on parameters count too (they outlive a call), and so do torch's global module hooks.
    """
    counts = {(name, attr, kind): len(getattr(module, attr, None) or ())
              for name, module in model.named_modules() for attr, kind in _MODULE_HOOKS.items()}
    counts |= {(name, attr, kind): len(getattr(p, attr, None) or ())
               for name, p in model.named_parameters() for attr, kind in _TENSOR_HOOKS.items()}
    counts |= {("*", attr, kind): len(getattr(nn.modules.module, attr)) for attr, kind in _GLOBAL_HOOKS.items()}
    return counts


def hook_leaks(model: nn.Module, call: Callable, start: dict, first: dict, calls: int = 3) -> list[str]:
    """One line per hook dict that grows on every call, or nothing. ``start`` and ``first`` are the counts
    before and after a first call; ``call`` runs the model again until ``calls`` calls are done."""
    history = [start, first]
    while len(history) <= calls:
        try:
            call()
        except Exception:  # the first call ran; what it left is the evidence
            break
        history.append(hook_counts(model))
    leaks = []
    for key in history[-1]:
        gains = [after.get(key, 0) - before.get(key, 0) for before, after in zip(history, history[1:])]
        if len(gains) > 1 and all(g > 0 for g in gains):
            leaks.append(describe_leak(key, gains))
    return leaks


def describe_leak(key: tuple[str, str, str], gains: list[int]) -> str:
    """"`fc1` gains a forward hook on every call (3 after 3 calls, in `fc1._forward_hooks`)"."""
    where, attr, kind = key
    who = {"*": "torch's global hook dict", "": "the model itself"}.get(where, f"`{where}`")
    home = f"torch.nn.modules.module.{attr}" if where == "*" else f"{where or 'model'}.{attr}"
    per = gains[0] if len(set(gains)) == 1 else 0
    step = f"a {kind}" if per == 1 else f"{per} {kind}s" if per else f"{kind}s"
    return f"{who} gains {step} on every call ({sum(gains)} after {len(gains)} calls, in `{home}`)"


def _hook_name(hook) -> str:
    return getattr(hook, "__qualname__", None) or getattr(hook, "__name__", None) or type(hook).__name__


def backward_failure(model: nn.Module, error: BaseException) -> tuple[list[str], str]:
    """Details and hint for an error from backward(); when a tensor was changed in place and the model has
    forward hooks, the hooks are the first suspects."""
    hint = explain_error(error)
    if "modified by an inplace operation" not in str(error):
        return [], hint
    hooked = [f"{f'`{name}`' if name else 'the model itself'} ({type_name(sub)}) has a forward hook `{_hook_name(hook)}`"
              for name, sub in model.named_modules() for hook in sub._forward_hooks.values()]
    if not hooked:
        return [], hint
    return hooked[:4], ("a tensor autograd saved for backward was changed in place. A forward hook that changes "
                        "`output` in place (output.clamp_(...), output.mul_(...), output[...] = ...) does exactly "
                        "that: return a new tensor from the hook instead (return output.clamp(...)); torch uses what "
                        "a forward hook returns as the module's output. Otherwise, look in forward for `x += ...` "
                        "or a method ending in `_`")


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _tensors(item)]
    return []


def _loss(output) -> torch.Tensor:
    """A scalar that depends on every output element with a generic weight (never a constant)."""
    total = 0
    for i, t in enumerate(_tensors(output)):
        if t.is_floating_point():
            generator = torch.Generator().manual_seed(SEED + 2 + i)
            weight = torch.randn(t.shape, generator=generator).to(t.device)
            total = total + (t.float() * weight).sum()
    return torch.as_tensor(total) if not isinstance(total, torch.Tensor) else total


def _outputs(output) -> torch.Tensor:
    """All floating output elements as one flat CPU tensor, for comparisons."""
    parts = [t.detach().float().flatten().cpu() for t in _tensors(output) if t.is_floating_point()]
    return torch.cat(parts) if parts else torch.zeros(0)


def _hidden_details(model) -> list[str]:
    return [h.message() for h in find_hidden(model)]


