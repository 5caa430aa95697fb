"""The checks a test cell calls on a student's model.

Each check takes the model (an nn.Module, which is deep-copied, or a zero-argument
factory such as a class or lambda) and, where it runs the model, an ``example``:
a shape such as ``(8, 20)`` for a seeded random batch, a tensor, or a function
``device -> input`` (return a tuple for several positional inputs).

A check runs on every device of the matrix (see grader.devices), prints one
verdict line when all is well, and otherwise raises CheckFailed with a diagnosis.
Where a check computes numbers on several devices, they must agree with the CPU's
within AGREEMENT (loose enough for TF32 matmuls and cuDNN convolutions).
"""

import copy
import functools
import numbers
import operator
from collections.abc import Callable

import torch
from torch import nn

from . import devices
from .diagnose import (empty_slots, explain_error, describe_error, find_hidden, frozen_parameters,
                       own_parameters_totalling, shared_modules, type_name, unregistered_leaves)
from .report import fail, plural, quiet, verdict

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
            with quiet(), torch.random.fork_rng(devices=cuda):
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
             hint="pass the model, its class, or a function that returns a new model", devices=str(device))
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
    """Call the model; fail with a diagnosis if it raises or if the call changes what is registered."""
    __tracebackhide__ = True
    before = {name: p for name, p in model.named_parameters()}
    hooks = hook_counts(model)
    try:
        output = model(*inputs)
    except Exception as error:
        fail(title, f"calling the model raised {describe_error(error)}", _hidden_details(model),
             hint=explain_error(error), devices=str(device))
    if hook_counts(model) != hooks:  # more calls tell a hook registered once from one registered every time
        leaks = hook_leaks(model, lambda: model(*inputs), hooks, first=hook_counts(model))
        if leaks:
            fail(title, LEAK_PROBLEM, leaks, hint=LEAK_HINT, devices=str(device))
    rebuilt = [n for n, p in model.named_parameters() if before.get(n) is not p]
    if rebuilt:
        owners = sorted({n.rpartition(".")[0] or n for n in rebuilt})
        fail(title, "calling the model registers new parameters, so an optimizer built before it holds stale ones",
             [f"`{n}` is a new tensor after forward" for n in rebuilt],
             hint=f"{', '.join(f'`self.{o}`' for o in owners)} is assigned inside forward: build it once in __init__",
             devices=str(device))
    return output


# --- hooks: the ones a forward leaves behind, the ones that change outputs in place ----------

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


# --- the checks --------------------------------------------------------------------------

@_check("trainable parameters")
def check_trainable_count(model, expected: int | None = None, *, device):
    """The trainable parameter count equals ``expected``, and nothing is hidden from registration."""
    __tracebackhide__ = True
    title, where = "trainable parameters", str(device)
    m = _build(model, device, title)
    lazy = [n for n, p in m.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
    if lazy:
        fail(title, f"{plural(len(lazy), 'parameter')} {'has' if len(lazy) == 1 else 'have'} no size yet, so "
                    "nothing can count them",
             [f"`{n}` is uninitialized: a lazy layer (such as nn.LazyLinear) sizes it at the first forward call"
              for n in lazy],
             hint="give the layer its input size when you build it, e.g. nn.Linear(in_features, out_features)",
             devices=where)
    count = sum(p.numel() for p in m.parameters() if p.requires_grad)
    hidden = find_hidden(m)
    if hidden:
        lost = sum(h.trainable for h in hidden)
        fail(title, f"model.parameters() sees {count:,} trainable parameters"
                    + (f"; {lost:,} more are hidden from it" if lost else ""),
             [h.message() for h in hidden],
             hint="nn.Module registers only what you assign directly as a layer, an nn.Parameter, "
                  "a buffer or an nn container; the optimizer, state_dict() and .to() see nothing else",
             devices=where)
    if expected is not None and count != expected:
        details = []
        frozen = frozen_parameters(m)
        if count < expected and frozen:
            names = ", ".join(f"`{n}`" for n, _ in frozen)
            total = sum(n for _, n in frozen)
            details.append(f"{plural(total, 'parameter')} {'is' if total == 1 else 'are'} frozen (requires_grad=False): {names}")
        if count < expected:
            details += [f"`{where}` is None when the model is built: a layer created there later (in forward) is "
                        "missing from this count and from any optimizer built before it exists" for where in empty_slots(m)]
        for group in shared_modules(m):
            details.append(f"{' and '.join(f'`{n}`' for n in group)} are one shared module: "
                           "parameters() counts its parameters once")
        surplus = own_parameters_totalling(m, count - expected) if count > expected else []
        if surplus:
            details.append(f"{' and '.join(f'`{n}`' for n in surplus)} {'accounts' if len(surplus) == 1 else 'account'} "
                           f"for exactly the {count - expected:,} extra: constants or statistics stored as nn.Parameter "
                           "belong in buffers (self.register_buffer), which the optimizer never sees")
        problem = f"the model has {count:,} trainable parameters; the exercise asks for {expected:,}"
        hint = ("too few: look for a missing layer or bias, frozen parameters, or a layer reused where a new one was meant"
                if count < expected else
                "too many: look for an extra layer, a bias that should be off (bias=False), or a wrong layer size")
        if surplus:
            hint = ("too many: the optimizer trains every nn.Parameter, so constants and running statistics "
                    "belong in buffers; otherwise look for an extra layer or a bias that should be off")
        fail(title, problem, details, hint=hint, devices=where)
    tensors = sum(1 for p in m.parameters() if p.requires_grad)
    return f"{count:,} in {plural(tensors, 'tensor')}, all registered", count


@_check("gradient flow")
def check_gradient_flow(model, example, *, device):
    """Every trainable parameter gets a finite, non-zero gradient from a loss on a batch."""
    __tracebackhide__ = True
    title, where = "gradient flow", str(device)
    m = _build(model, device, title).train()
    hidden = [h for h in find_hidden(m) if h.trainable]
    if hidden:
        fail(title, "some trainable tensors are not registered, so no optimizer will ever update them",
             [h.message() for h in hidden], devices=where)
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    if not params:
        fail(title, "the model has no trainable parameters",
             [f"`{n}` is frozen (requires_grad=False)" for n, _ in frozen_parameters(m)],
             hint="register layers in __init__ (self.fc = nn.Linear(...)), not in forward", devices=where)

    ran = set()
    handles = [sub.register_forward_hook(lambda mod, args, out, name=name: ran.add(name))
               for name, sub in m.named_modules()]
    inputs = _inputs(example, device)
    try:
        out = _forward(m, inputs, title, where)
    finally:
        for handle in handles:
            handle.remove()
    loss = _loss(out)
    if not loss.requires_grad:
        fail(title, "the output does not depend on any trainable parameter through autograd",
             hint="something in forward cuts the graph: .detach(), .numpy(), .item(), .data or torch.no_grad()",
             devices=where)
    strays = unregistered_leaves(m, out)
    for _, p in params:
        p.grad = None
    try:
        loss.backward()
    except RuntimeError as error:
        details, hint = backward_failure(m, error)
        fail(title, f"backward() raised {describe_error(error)}", details, hint=hint, devices=where)

    problems = []
    for name, p in params:
        owner = name.rpartition(".")[0]
        label = f"`{owner}`" if owner else "the model's own forward"
        if p.grad is None:
            if owner and owner not in ran:
                problems.append(f"`{name}` gets no gradient: {label} never runs in forward (unused)")
            else:
                problems.append(f"`{name}` gets no gradient: {label} runs, but its result is cut from the graph "
                                "before the output (detached: .detach(), .numpy(), .data or torch.no_grad())")
        elif not torch.isfinite(p.grad).all():
            problems.append(f"`{name}` has NaN or Inf in its gradient")
        elif not p.grad.any():
            problems.append(f"`{name}` gets a gradient of exactly 0: its value does not affect the output "
                            "(multiplied by 0, or a ReLU dead for every sample)")
    for t in strays:
        problems.append(f"a trainable tensor of shape {list(t.shape)} takes part in forward but is not registered: "
                        "a layer or nn.Parameter created inside forward? Build it in __init__")
    if problems:
        fail(title, f"{plural(len(problems), 'problem')} with gradients", problems, devices=where)
    total = sum(p.numel() for _, p in params)
    # A train-mode forward that draws random numbers (dropout) draws them differently on each device,
    # so only a loss that does not depend on the seed is compared across the matrix.
    with torch.no_grad():
        torch.manual_seed(SEED + 1)
        again = _loss(_forward(m, inputs, title, where))
    fingerprint = loss.item() if torch.equal(again, loss.detach()) else None
    return f"all {plural(len(params), 'trainable tensor')} ({total:,} parameters) get finite, non-zero gradients", fingerprint


@_check("eval behaviour")
def check_eval_behaviour(model, example, *, device):
    """eval(): dropout off, running statistics used and unchanged, deterministic; train() differs where it should."""
    __tracebackhide__ = True
    title, where = "eval behaviour", str(device)
    m = _build(model, device, title)
    inputs = _inputs(example, device)
    m.eval()
    still = [n or "the model" for n, sub in m.named_modules() if sub.training]
    if still:
        fail(title, "after model.eval(), some modules are still in training mode",
             [f"`{n}` has training=True" for n in still],
             hint="an overridden train()/eval() must call super().train(mode) so children follow", devices=where)
    buffers = {n: b.detach().clone() for n, b in m.named_buffers()}
    with torch.no_grad():
        first_output = _forward(m, inputs, title, where)
        first = _outputs(first_output)
        second = _outputs(_forward(m, inputs, title, where))
    details = [h.message() for h in find_hidden(m)]
    switched = [n or "the model" for n, sub in m.named_modules() if sub.training]
    if switched:
        fail(title, "forward switches modules back to training mode",
             [f"`{n}` has training=True after an eval-mode forward" for n in switched],
             hint="forward must not call .train(); leave the mode to the caller", devices=where)
    moved = [n for n, b in m.named_buffers() if n in buffers and not torch.equal(b, buffers[n])]
    if moved:
        fail(title, "buffers changed during an eval-mode forward", [f"`{n}` changed" for n in moved],
             hint="running statistics may only move in train mode: check `if self.training:` around the update",
             devices=where)
    if not torch.equal(first, second):
        strays = unregistered_leaves(m, _forward(m, inputs, title, where))
        details += [f"a trainable tensor of shape {list(t.shape)} is not registered: a layer created inside "
                    "forward gets new random weights at every call" for t in strays]
        hint = ("build every layer once in __init__" if strays else
                "something random is still active: a Dropout that model.eval() cannot reach, or "
                "F.dropout(..., training=True) instead of training=self.training")
        fail(title, "two eval-mode calls on the same input give different outputs", details, hint=hint, devices=where)
    batch = inputs[0].shape[0] if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() > 0 else 0
    if batch > 1 and len(inputs) == 1:
        with torch.no_grad():
            alone = _forward(m, (inputs[0][:1],), title, where)
        # each output tensor on its own (a dict or tuple of outputs holds several), sample 0 against sample 0
        pairs = [(a, b) for a, b in zip(_tensors(alone), _tensors(first_output)) if b.is_floating_point()]
        batched = pairs and all(b.dim() > 0 and b.shape[0] == batch and a.shape == (1, *b.shape[1:]) for a, b in pairs)
        if batched and not all(torch.allclose(a.float().cpu(), b[:1].float().cpu(), **AGREEMENT) for a, b in pairs):
            fail(title, "in eval mode, a sample's output depends on the other samples in its batch",
                 hint="normalisation in eval mode must use the running statistics, not the batch's "
                      "(check `if self.training:` in your BatchNorm-like layer)", devices=where)

    dropouts = [n for n, sub in m.named_modules() if isinstance(sub, nn.modules.dropout._DropoutNd) and sub.p > 0]
    norms = [n for n, sub in m.named_modules()
             if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.track_running_stats]
    m.train()
    with torch.no_grad():
        trained = _outputs(_forward(m, inputs, title, where))
    if norms:
        idle = [n for n in norms if torch.equal(m.get_submodule(n).running_mean, buffers[f"{n}.running_mean"])]
        if idle:
            fail(title, "in train mode, BatchNorm did not update its running statistics",
                 [f"`{n}.running_mean` did not move" for n in idle],
                 hint="is the BatchNorm layer actually used in forward?", devices=where)
    if (dropouts or norms) and torch.equal(trained, first):
        fail(title, "train mode gives the same output as eval mode, though the model has "
                    + ", ".join(f"`{n}`" for n in dropouts + norms),
             hint="a Dropout or BatchNorm that never runs in forward does nothing", devices=where)
    modes = [w for w, on in (("dropout off", dropouts), ("running statistics used", norms)) if on]
    return "deterministic in eval" + "".join(f", {w}" for w in modes) + ", train differs" * bool(modes), first


@_check("learning")
def check_learning(model, example, *, lr: float = 0.1, device):
    """Forward keeps the registered parameters; one SGD step on model.parameters() changes the output."""
    __tracebackhide__ = True
    title, where = "learning", str(device)
    m = _build(model, device, title).eval()
    inputs = _inputs(example, device)
    out = _forward(m, inputs, title, where)
    params = [p for p in m.parameters() if p.requires_grad]
    if not params:
        fail(title, "model.parameters() holds no trainable parameter: torch.optim would raise "
                    "`ValueError: optimizer got an empty parameter list`",
             _hidden_details(m), hint="register layers in __init__ with self.name = layer or an nn container",
             devices=where)
    strays = unregistered_leaves(m, out)
    if strays:
        hidden = _hidden_details(m)  # layers in a plain list or dict explain the strays better than their shapes
        fail(title, "part of the output is computed by trainable tensors that model.parameters() does not list, "
                    "so the optimizer never updates them",
             hidden or [f"a trainable tensor of shape {list(t.shape)}" for t in strays],
             hint=("keep layers in nn.ModuleList / nn.ModuleDict (or assign each to self), so that "
                   "model.parameters() hands them to the optimizer" if hidden else
                   "a layer created inside forward gets fresh random weights at every call: build it in __init__"),
             devices=where)
    optimizer = torch.optim.SGD(params, lr=lr)
    optimizer.zero_grad()
    loss = _loss(out)
    if loss.requires_grad:
        try:
            loss.backward()
        except RuntimeError as error:
            details, hint = backward_failure(m, error)
            fail(title, f"backward() raised {describe_error(error)}", details, hint=hint, devices=where)
    optimizer.step()
    with torch.no_grad():
        again = _outputs(_forward(m, inputs, title, where))
    change = (again - _outputs(out)).abs().max().item() if again.numel() else 0.0
    if not change > 0:
        details = _hidden_details(m)
        fail(title, "one optimizer step on model.parameters() did not change the output", details,
             hint="the layers that compute the output are not the ones the optimizer holds: "
                  "layers created in forward, kept in a plain list, or detached", devices=where)
    return f"one SGD step on {plural(len(params), 'parameter tensor')} changes the output", change > 0


@_check("device transfer")
def check_device_transfer(model, example, *, device):
    """Every parameter and buffer follows .to(device) and .to(dtype); the model then still runs."""
    __tracebackhide__ = True
    title, where = "device transfer", str(device)
    m = _build(model, "cpu", title)
    plain = find_hidden(m)
    if plain:
        fail(title, ".to() moves only registered tensors; some are hidden from it",
             [h.message() for h in plain], devices=where)
    targets = [("dtype", device, torch.float64)]
    if device.type == "cpu":
        targets.append(("device", torch.device("meta"), None))  # a stand-in for a GPU move
    for what, target, dtype in targets:
        moved = copy.deepcopy(m).to(device=target, dtype=dtype)
        left = [f"`{n}` stayed {t.dtype} on {t.device}" for n, t in
                list(moved.named_parameters()) + list(moved.named_buffers())
                if t.device.type != target.type or (dtype and t.is_floating_point() and t.dtype != dtype)]
        if left:
            fail(title, f"after model.to({_to_args(target, dtype)}) some tensors were left behind", left, devices=where)
        try:
            moved(*_inputs(example, target, dtype))
        except Exception as error:
            if target.type == "meta" and not _is_device_error(error):
                continue  # meta tensors have no values; only device mix-ups count there
            fail(title, f"after model.to({_to_args(target, dtype)}), calling it raised {describe_error(error)}",
                 hint=explain_error(error), devices=where)
    tensors = len(list(m.parameters())) + len(list(m.buffers()))
    moved_to = "float64" + ("" if device.type == "cpu" else f" and {device}")
    return f"all {plural(tensors, 'parameter and buffer tensor')} follow .to({moved_to})", tensors


def _to_args(target, dtype) -> str:
    return str(dtype) if dtype else repr(str(target))


def _is_device_error(error: Exception) -> bool:
    text = str(error)
    return "device" in text and ("meta" in text or "cpu" in text)


def check_model(model, example, expected: int | None = None):
    """All five model checks, each printing its verdict line."""
    __tracebackhide__ = True
    check_trainable_count(model, expected)
    check_gradient_flow(model, example)
    check_eval_behaviour(model, example)
    check_learning(model, example)
    check_device_transfer(model, example)


# --- checks on counting and finding functions that students write --------------------------

_COUNTERS = {
    "trainable parameters": lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad),
    "parameters": lambda m: sum(p.numel() for p in m.parameters()),
    "buffer elements": lambda m: sum(b.numel() for b in m.buffers()),
    "state_dict elements": lambda m: sum(t.numel() for t in m.state_dict().values()),
}


def check_counting(fn: Callable, build: Callable, cases, counts: str = "trainable parameters"):
    """``fn(*case)`` equals what torch counts on ``build(*case)``, for every case."""
    __tracebackhide__ = True
    title = f"counting {counts}"
    if counts not in _COUNTERS:
        raise ValueError(f"counts must be one of {sorted(_COUNTERS)}, not {counts!r}")
    with quiet():
        wrong = []
        for case in cases:
            case = case if isinstance(case, tuple) else (case,)
            call = f"{fn.__name__}({', '.join(map(repr, case))})"
            try:
                got = fn(*case)
            except Exception as error:
                fail(title, f"{call} raised {describe_error(error)}", hint=explain_error(error))
            truth = _COUNTERS[counts](build(*case))
            if _exact_count(got) != truth:  # compared as a plain int: an object that "equals everything" fails
                wrong.append(f"{call} returned {got!r}, but {type_name(build(*case))} built with {case} has "
                             f"{truth:,} {counts}")
        if wrong:
            fail(title, f"{plural(len(wrong), 'case')} of {len(cases)} wrong", wrong,
                 hint="count each tensor's elements: print([(n, tuple(t.shape)) for n, t in "
                      "model.named_parameters()]) and compare with your formula")
    verdict(title, f"{fn.__name__} matches torch on {plural(len(cases), 'case')}")


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
    with quiet():
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
            fail(title, f"wrong {what} for this {type(model).__name__}", details,
                 hint="walk every submodule with named_modules() and look at each attribute in vars(module)")
    found = f"finds all {plural(len(expected), 'name')}" if expected else "finds nothing, as it should,"
    verdict(title, f"{found} in {type(model).__name__}")
