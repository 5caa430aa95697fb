"""The model checks of units 01, 04 and 07: trainable count, gradient flow, eval behaviour, learning,
device transfer. Each runs on every device of the matrix and prints one verdict line, or raises
CheckFailed with a diagnosis."""

import copy

import torch
from torch import nn

from .diagnose import (empty_slots, explain_error, describe_error, find_hidden, frozen_parameters,
                       own_parameters_totalling, shared_modules, unregistered_leaves)
from .report import fail, plural
from .runner import (AGREEMENT, SEED, _build, _check, _forward, _hidden_details, _inputs, _loss, _outputs, _tensors,
                     backward_failure)

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
        if count > expected:
            details += [f"`{n}.requires_grad = False` set a plain attribute on the module, which freezes nothing: "
                        f"`{n}.requires_grad_(False)` (with the underscore) sets it on every parameter"
                        for n, sub in m.named_modules() if n and "requires_grad" in vars(sub)]
            details += [f"`{n}` is in eval mode: eval() changes how Dropout and BatchNorm behave, not what trains"
                        for n, sub in m.named_modules() if n and not sub.training and any(True for _ in sub.parameters())
                        and (not n.rpartition(".")[0] or m.get_submodule(n.rpartition(".")[0]).training)]
        surplus = own_parameters_totalling(m, count - expected) if count > expected else []
        if surplus:
            details.append(f"{' and '.join(f'`{n}`' for n in surplus)} {'accounts' if len(surplus) == 1 else 'account'} "
                           f"for exactly the {count - expected:,} extra: constants or statistics stored as nn.Parameter "
                           "belong in buffers (self.register_buffer), which the optimizer never sees")
        problem = f"the model has {count:,} trainable parameters; the exercise asks for {expected:,}"
        hint = ("too few: look for a missing layer or bias, frozen parameters, or a layer reused where a new one was meant"
                if count < expected else
                "too many: look for parameters left trainable that should be frozen, an extra layer, a bias that "
                "should be off (bias=False), or a wrong layer size")
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
        if not details and not any(isinstance(sub, nn.modules.dropout._DropoutNd) for sub in m.modules()):
            details.append("the model holds no nn.Dropout module: the randomness comes from a call in forward that "
                           "model.eval() does not switch off (model.eval() only sets the `training` flag of each "
                           "registered module)")
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
        # the model itself may be the BatchNorm (a subclass of nn.BatchNorm1d): its name is ""
        key = {n: f"{n}.running_mean" if n else "running_mean" for n in norms}
        idle = [n for n in norms if torch.equal(m.get_submodule(n).running_mean, buffers[key[n]])]
        if idle:
            fail(title, "in train mode, BatchNorm did not update its running statistics",
                 [f"`{key[n]}` did not move" for n in idle],
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
    if not torch.isfinite(_outputs(out)).all():  # a NaN never "changes": say what it is, not what it is not
        fail(title, "the output holds NaN or Inf, so no step can be seen to change it",
             hint="look in forward for a division by zero, a log or square root of a value <= 0, or an overflow; "
                  "check the values your model divides by", devices=where)
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


