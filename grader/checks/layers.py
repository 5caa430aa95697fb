"""Checks that a student's tensors sit in the right registry and hold the right numbers.

``check_matches_torch`` runs a student's layer beside the torch layer it re-implements:
same parameters and buffers (names, roles, shapes, dtypes), then the same numbers through
several train-mode steps and an eval-mode call. ``check_roles`` compares a model's
registries with names the test cell passes in, and ``check_tensors`` compares tensors with
values the test cell computed with torch. Nothing here knows a solution: the truth is
always torch, or the test cell.
"""

import copy

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .runner import SEED, _build, _check, _inputs, _loss
from .batchnorm_mistakes import eval_suspects, gradient_suspects, output_suspects, state_hint, state_suspects
from .diagnose import describe_error, explain_error, find_hidden, student_line, type_name
from .report import GraderError, fail, own_errors, plural, quiet, verdict

# Loose enough for a student's formula against torch's fused kernels in float32, tight enough
# for every mistake below: N vs N - 1 is 1/N apart, a wrong momentum is far apart.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}

PARAMETER, BUFFER, NON_PERSISTENT = "nn.Parameter", "buffer", "non-persistent buffer"

_ROLE_FIX = {
    (PARAMETER, BUFFER): "the optimizer updates every nn.Parameter it is given (and weight decay pulls it toward 0): "
                         "register state with self.register_buffer(name, tensor)",
    (PARAMETER, NON_PERSISTENT): "the optimizer updates every nn.Parameter it is given: register it with "
                                 "self.register_buffer(name, tensor, persistent=False)",
    (BUFFER, PARAMETER): "no optimizer sees a buffer, so it is never trained: wrap it in nn.Parameter",
    (NON_PERSISTENT, PARAMETER): "no optimizer sees a buffer, so it is never trained: wrap it in nn.Parameter",
    (NON_PERSISTENT, BUFFER): "persistent=False leaves it out of state_dict(), so a checkpoint loses it: "
                              "register it without persistent=False",
    (BUFFER, NON_PERSISTENT): "it can be rebuilt from the constructor's arguments, so checkpoints need not carry it: "
                              "register it with persistent=False",
}


# --- roles: which registry holds each tensor ---------------------------------------------

def _roles(module: nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    saved = set(module.state_dict(keep_vars=True))
    roles = {name: (PARAMETER, p) for name, p in module.named_parameters()}
    for name, b in module.named_buffers():
        roles[name] = (BUFFER if name in saved else NON_PERSISTENT, b)
    return roles


def _article(role: str) -> str:
    return "an" if role.startswith(("nn.", "a", "e", "i", "o", "u")) else "a"


def _role_problems(model: nn.Module, expected: dict, theirs: str) -> tuple[list[str], str]:
    """What differs between the model's registries and ``expected`` (name -> (role, tensor or None))."""
    yours = _roles(model)
    hidden = {h.where: h for h in find_hidden(model)}
    details, hints = [], []
    for name, (role, truth) in expected.items():
        if name not in yours:
            where = "self." + name
            if where in hidden:
                details.append(f"`{name}` is {_article(role)} {role} in {theirs}; yours keeps a plain tensor at "
                               f"`{where}`, which no registry holds")
                hints.append("register it: nn.Parameter(...) for a weight, self.register_buffer(name, tensor) for state")
            else:
                details.append(f"{theirs} has {_article(role)} {role} `{name}`"
                               + (f" ({_describe(truth)})" if truth is not None else "") + "; yours has no tensor by that name")
                renamed = set(yours) - set(expected)
                hints.append(f"use {theirs}'s names: " + ", ".join(f"`{n}`" for n in expected) if renamed else
                             f"register `{name}` as {_article(role)} {role}, as {theirs} does")
            continue
        role_yours, tensor = yours[name]
        if role_yours != role:
            details.append(f"`{name}` is {_article(role_yours)} {role_yours} in yours, {_article(role)} {role} in {theirs}")
            hints.append(_ROLE_FIX[(role_yours, role)])
        if truth is not None and tuple(tensor.shape) != tuple(truth.shape):
            details.append(f"`{name}` has shape {list(tensor.shape)} in yours, {list(truth.shape)} in {theirs}")
            hints.append("keep one value per feature: shape (num_features,), not a broadcastable (1, num_features)"
                         if tensor.numel() == truth.numel() else f"give `{name}` the shape {list(truth.shape)}")
        if truth is not None and tensor.dtype != truth.dtype:
            details.append(f"`{name}` is {tensor.dtype} in yours, {truth.dtype} in {theirs}")
            hints.append("a counter is an integer tensor: create it with torch.tensor(0, dtype=torch.long)"
                         if not truth.is_floating_point() else f"create `{name}` as {truth.dtype}")
    for name, (role, _) in yours.items():
        if name not in expected:
            details.append(f"yours has {_article(role)} {role} `{name}`, which {theirs} does not")
            hints.append(f"use {theirs}'s names: " + ", ".join(f"`{n}`" for n in expected))
    return details, (hints[0] if hints else "")


def _describe(t: torch.Tensor) -> str:
    return f"shape {list(t.shape)}, {t.dtype}"


def _graph_problems(model: nn.Module) -> list[str]:
    return [f"buffer `{name}` requires grad: it is part of an autograd graph"
            for name, b in model.named_buffers() if b.requires_grad]


def _shared_with_parameters(model: nn.Module) -> list[str]:
    """Buffers whose memory is a parameter's (registered as `p` or `p.detach()` instead of a copy)."""
    owners = {p.untyped_storage().data_ptr(): name for name, p in model.named_parameters() if p.numel()}
    return [f"buffer `{name}` is the memory of parameter `{owners[b.untyped_storage().data_ptr()]}`"
            for name, b in model.named_buffers() if b.numel() and b.untyped_storage().data_ptr() in owners]


_GRAPH_HINT = ("fill and update buffers with values cut from autograd: under torch.no_grad(), or from .detach()ed "
               "tensors (.detach().clone() for a copy); a buffer is state, and a graph kept in it grows at every step")


@_check("parameters and buffers")
def check_roles(model, *, parameters=(), buffers=(), non_persistent=(), device):
    """The model registers exactly these parameters and buffers (``non_persistent`` ones too), on the device."""
    __tracebackhide__ = True
    title, where = "parameters and buffers", str(device)
    m = _build(model, device, title)
    expected = {n: (PARAMETER, None) for n in parameters}
    expected |= {n: (BUFFER, None) for n in buffers}
    expected |= {n: (NON_PERSISTENT, None) for n in non_persistent}
    details, hint = _role_problems(m, expected, "the exercise")
    if details:
        fail(title, f"{plural(len(details), 'difference')} from what the exercise asks", details, hint=hint, devices=where)
    shared = _shared_with_parameters(m)
    if shared:
        fail(title, "a buffer shares its memory with a parameter, so it changes whenever the parameter does", shared,
             hint="register a copy of the value: tensor.detach().clone() (detach() alone keeps the same memory)",
             devices=where)
    graphs = _graph_problems(m)
    if graphs:
        fail(title, "a buffer holds an autograd graph", graphs, hint=_GRAPH_HINT, devices=where)
    strays = [f"`{n}` is on {t.device}" for n, t in list(m.named_parameters()) + list(m.named_buffers())
              if t.device.type != device.type]
    if strays:
        fail(title, f"after .to({str(device)!r}) some tensors stayed behind", strays, devices=where)
    saved = len(buffers)
    summary = (f"{plural(len(parameters), 'parameter')} and {plural(saved + len(non_persistent), 'buffer')}"
               + (f" ({len(non_persistent)} non-persistent)" if non_persistent else "") + ", each in its registry")
    return summary, len(expected)


# --- values: yours beside torch ------------------------------------------------------------

def _close(yours: torch.Tensor, truth: torch.Tensor) -> bool:
    if yours.shape != truth.shape:
        return False
    a, b = yours.detach().double().cpu(), truth.detach().double().cpu()
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    return torch.allclose(a, b, rtol=TOLERANCE["rtol"], atol=TOLERANCE["atol"] * scale, equal_nan=True)


def _values(t: torch.Tensor, n: int = 4, start: int = 0) -> str:
    flat = t.detach().double().flatten().cpu()
    shown = ", ".join(f"{v:.4f}" if t.is_floating_point() else f"{int(v)}" for v in flat[start:start + n].tolist())
    before = "..., " if start else ""
    return f"[{before}{shown}{', ...' if flat.numel() > start + n else ''}]" if t.dim() else shown


def _side_by_side(yours: torch.Tensor, truth: torch.Tensor, theirs: str = "torch", n: int = 4) -> list[str]:
    """Yours above theirs, from the largest gap on (so two rows that look alike still show where they differ)."""
    start = 0
    if yours.shape == truth.shape and yours.numel():
        diff = (yours.detach().double().cpu() - truth.detach().double().cpu()).abs().flatten()
        diff = torch.nan_to_num(diff, nan=float("inf"))
        worst = int(diff.argmax())
        start = worst if worst >= n else 0
    lines = [f"yours: {_values(yours, n, start)}", f"{theirs}: {_values(truth, n, start)}"]
    if yours.shape == truth.shape and yours.numel():
        at = [int(i) for i in torch.unravel_index(torch.tensor(worst), yours.shape)] if yours.dim() else []
        lines[-1] += f" (largest gap {diff.max().item():.3g}" + (f" at {at})" if at else ")")
    elif yours.shape != truth.shape:
        lines[-1] += f" (shapes {list(yours.shape)} vs {list(truth.shape)})"
    return lines


def _first_match(yours: torch.Tensor, suspects) -> str | None:
    for hint, value in suspects:
        if value is not None and _close(yours, value):
            return hint
    return None


def _closest_match(yours: torch.Tensor, truth: torch.Tensor, suspects) -> str | None:
    """The hint of the suspect nearest to yours, if it is within tolerance and far nearer than the truth (where
    two mistakes give nearly the same numbers, the nearest one names it); else None: right or silent."""
    def gap(value):
        return (yours.detach().double().cpu() - value.detach().double().cpu()).abs().max().item()

    near = [(gap(value), hint) for hint, value in suspects if value is not None and _close(yours, value)]
    if not near:
        return None
    best, hint = min(near, key=lambda pair: pair[0])
    return hint if best * 10 < gap(truth) else None


def check_tensors(yours, expected: dict | None = None, title: str = "tensors", *, source: str = "torch"):
    """Each tensor in ``yours`` matches the tensor of the same name in ``expected`` (computed by the test cell).

    ``yours`` may be a zero-argument function that runs the student's code and returns that dict, or the pair
    (yours, expected) when both come from one run (leave ``expected`` out then). It is called inside the check,
    so an error in the student's code, such as a stub's NotImplementedError, is explained rather than raised.
    """
    __tracebackhide__ = True
    with quiet(), own_errors("check_tensors"):
        if callable(yours):
            yours = _run(yours, title)
            if expected is None:
                yours, expected = yours
        missing = [n for n in expected if n not in yours]
        extra = [n for n in yours if n not in expected]
        if missing or extra:
            fail(title, "the names differ from the expected ones",
                 [f"missing `{n}`" for n in missing] + [f"unexpected `{n}`" for n in extra],
                 hint="expected: " + ", ".join(f"`{n}`" for n in expected))
        for name, truth in expected.items():
            got = yours[name]
            if not isinstance(got, torch.Tensor):
                fail(title, f"`{name}` is a {type(got).__name__}, not a tensor")
            if got.requires_grad:
                fail(title, f"`{name}` requires grad: it carries an autograd graph", hint=_GRAPH_HINT)
            if got.dtype != truth.dtype:
                fail(title, f"`{name}` is {got.dtype}; {source} gives {truth.dtype}")
            if not _close(got, truth):
                fail(title, f"`{name}` differs from {source}", _side_by_side(got, truth, source),
                     hint="compare your update with the formula in the exercise, one step at a time")
    verdict(title, f"{plural(len(expected), 'tensor')} match {source}")


def _run(code, title: str):
    """code(): an error from the student's code is a verdict on it; any other is the grader's own."""
    __tracebackhide__ = True
    try:
        return code()
    except Exception as error:
        if not student_line(error):
            raise GraderError(title, error) from None
        fail(title, f"running your code raised {describe_error(error)}", hint=explain_error(error))


# --- a layer beside the torch layer it re-implements ------------------------------------------

def check_matches_torch(build, reference, *args, example, steps: int = 3, **kwargs):
    """``build(*args, **kwargs)`` behaves exactly like ``reference(*args, **kwargs)``.

    Compares the registries (names, parameter or buffer, persistence, shapes, dtypes) and the
    initial values that torch sets deterministically; then, from the same weights, the outputs,
    gradients, parameters and buffers after each of ``steps`` train-mode batches, and the output
    and buffers of an eval-mode call. ``example`` is the input shape, batch first; every step
    draws a new batch of that shape with a mean and spread of its own per feature.
    """
    __tracebackhide__ = True
    with quiet():
        named = reference if isinstance(reference, nn.Module) else reference(*args, **kwargs)
    call = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
    title = f"matches {type_name(named)}" + (f"({call})" if call else "")

    def make(factory):
        if isinstance(factory, nn.Module):  # an instance: each device gets a copy
            return lambda: copy.deepcopy(factory)
        return lambda: factory(*args, **kwargs)

    def per_device(*, device):
        __tracebackhide__ = True
        return _side_by_side_run(make(build), make(reference), example, steps, title, device)

    per_device.__name__ = "check_matches_torch"
    _check(title)(per_device)()


def _batch(example, step: int, device) -> torch.Tensor:
    """A seeded batch whose features each have their own mean and spread (so statistics matter)."""
    if not isinstance(example, (tuple, list)):
        return _inputs(example, device)[0]
    generator = torch.Generator().manual_seed(SEED + 10 + step)
    shape = tuple(example)
    features = (1, shape[1]) + (1,) * (len(shape) - 2) if len(shape) > 1 else (1,)
    spread = 0.5 + 2.5 * torch.rand(features, generator=generator)
    shift = 4 * torch.rand(features, generator=generator) - 2
    return (torch.randn(shape, generator=generator) * spread + shift).to(device)


def _side_by_side_run(build, reference, example, steps, title, device):
    __tracebackhide__ = True
    where = str(device)
    torch.manual_seed(SEED + 3)
    ref_a = reference().to(device)
    torch.manual_seed(SEED + 4)
    ref_b = reference().to(device)
    yours = _build(build, device, title)
    reused = _torch_layer_inside(yours, ref_a)
    if reused:
        fail(title, reused, hint=f"write the layer on nn.Module, from tensor operations: {type_name(ref_a)} would do "
                                 "the very work the exercise asks of you", devices=where)

    expected = {name: (role, t) for name, (role, t) in _roles(ref_a).items()}
    details, hint = _role_problems(yours, expected, "torch")
    if details:
        fail(title, f"your layer does not register the same tensors as torch ({plural(len(details), 'difference')})",
             details, hint=hint, devices=where)

    # Where torch initialises deterministically (ones, zeros, a counter at 0), yours must agree.
    start_b = _tensors_by_name(ref_b)
    mine = _tensors_by_name(yours)
    for name, (role, truth) in expected.items():
        if name in start_b and torch.equal(truth, start_b[name]) and not _close(mine[name], truth):
            fail(title, f"before any step, `{name}` differs from torch's initial value", _side_by_side(mine[name], truth),
                 hint=f"initialise `{name}` the way torch does", devices=where)

    # From here on both start from the same, non-trivial weights.
    generator = torch.Generator().manual_seed(SEED + 5)
    with torch.no_grad():
        for name, p in ref_a.named_parameters():
            if p.is_floating_point():
                p.add_((0.5 * torch.randn(p.shape, generator=generator)).to(device))
            mine[name].copy_(p)

    yours.train()
    ref_a.train()
    for step in range(1, steps + 1):
        x = _batch(example, step, device)
        before = {n: t.detach().clone() for n, t in ref_a.named_buffers()}
        x_yours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        with _TorchCalls() as calls:
            out = _call(yours, x_yours, title, where)
        twin = _FUNCTIONAL_TWIN.get(next((c for c in type(ref_a).__mro__ if c in _FUNCTIONAL_TWIN), None))
        if twin and twin in calls.names:
            fail(title, f"your forward calls torch's own {twin} (F.{twin} or torch.{twin})",
                 hint=f"compute it from tensor operations (mean, var, sqrt, ...): torch's {twin} would do the very "
                      "work the exercise asks of you", devices=where)
        truth = ref_a(x_ref)
        context = f"train step {step}"
        if not isinstance(out, torch.Tensor) or out.shape != truth.shape:
            fail(title, f"at {context}, the output is {_shape_of(out)}; torch's is a tensor of shape {list(truth.shape)}",
                 hint="return one tensor with the input's shape", devices=where)
        if not _close(out, truth):
            fail(title, f"at {context}, the output differs from torch", _side_by_side(out, truth),
                 hint=_first_match(out, output_suspects(ref_a, x, before)) or
                 "compare your forward with torch's formula on this batch, one term at a time", devices=where)
        _compare_gradients(yours, ref_a, out, truth, x_yours, x_ref, context, title, where)
        _compare_state(yours, ref_a, x, before, context, title, where)

    yours.eval()
    ref_a.eval()
    x = _batch(example, 0, device)
    kept = {n: b.detach().clone() for n, b in yours.named_buffers()}
    with torch.no_grad():
        out = _call(yours, x, title, where)
        truth = ref_a(x)
    moved = [(n, b) for n, b in yours.named_buffers() if not torch.equal(b, kept[n])]
    if moved:
        fail(title, "buffers changed during an eval-mode forward",
             [f"`{n}` was {_values(kept[n])} before the call, {_values(b)} after" for n, b in moved],
             hint="torch moves running statistics (and counts batches) only in train mode: check `if self.training:`",
             devices=where)
    if not isinstance(out, torch.Tensor) or not _close(out, truth):
        shown = _side_by_side(out, truth) if isinstance(out, torch.Tensor) else [f"yours: {_shape_of(out)}"]
        fail(title, "in eval mode, the output differs from torch", shown,
             hint=(_first_match(out, eval_suspects(ref_a, x)) if isinstance(out, torch.Tensor) else None)
             or "compare your eval-mode branch with torch's", devices=where)
    n_params = len(list(ref_a.parameters()))
    n_buffers = len(list(ref_a.buffers()))
    summary = (f"outputs, gradients, {plural(n_params, 'parameter')} and {plural(n_buffers, 'buffer')} agree "
               f"over {plural(steps, 'train step')} and eval")
    return summary, out.detach().double().cpu()


# The functional form of a torch layer, by the layer's class: calling it re-uses the layer instead of writing it.
_FUNCTIONAL_TWIN = {nn.modules.batchnorm._BatchNorm: "batch_norm"}


class _TorchCalls(TorchFunctionMode):
    """The names of the torch functions called while inside (F.batch_norm shows as `batch_norm`)."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


def _torch_layer_inside(yours: nn.Module, ref: nn.Module) -> str | None:
    """Where the student's layer is, or holds, the torch layer it should re-implement (a subclass, a child)."""
    own = [c for c in type(ref).__mro__ if c.__module__.startswith("torch.nn") and c not in (nn.Module, object)]
    for name, sub in yours.named_modules():
        cls = next((c for c in own if isinstance(sub, c)), None)
        if cls is not None:
            who = "your layer" if not name else f"`{name}` in your layer"
            what = f"is {type_name(sub)}" if type(sub) is cls else f"subclasses nn.{cls.__name__}"
            return f"{who} {what}, torch's own layer: torch computes everything"
    return None


def _tensors_by_name(module: nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.named_parameters()) | dict(module.named_buffers())


def _shape_of(value) -> str:
    return f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def _call(module, x, title, where):
    __tracebackhide__ = True
    try:
        return module(x)
    except Exception as error:
        fail(title, f"calling your layer raised {describe_error(error)}", hint=explain_error(error), devices=where)


def _compare_gradients(yours, ref, out, truth, x_yours, x_ref, context, title, where):
    __tracebackhide__ = True
    if not out.requires_grad:
        fail(title, f"at {context}, your output is cut from autograd",
             hint="something in forward detaches the result: .detach(), .data or torch.no_grad()", devices=where)
    try:
        _loss(out).backward()
    except RuntimeError as error:
        fail(title, f"at {context}, backward() raised {describe_error(error)}", hint=explain_error(error), devices=where)
    _loss(truth).backward()
    pairs = [("the input", x_yours.grad, x_ref.grad)]
    mine = dict(yours.named_parameters())
    pairs += [(f"`{n}`", mine[n].grad, p.grad) for n, p in ref.named_parameters()]
    for label, got, want in pairs:
        if want is None:
            continue
        if got is None:
            fail(title, f"at {context}, {label} gets no gradient; torch's does",
                 hint="something in forward cuts it from the graph: .detach(), .data or torch.no_grad()", devices=where)
        if not _close(got, want):
            fail(title, f"at {context}, the outputs agree but the gradient of {label} differs",
                 _side_by_side(got, want),
                 hint=_closest_match(got, want, gradient_suspects(ref, x_ref.detach(), label)) or _GRADIENT_HINT,
                 devices=where)
    for p in list(yours.parameters()) + list(ref.parameters()):
        p.grad = None


def _compare_state(yours, ref, x, before, context, title, where):
    """Every parameter and buffer after a train step, counters first (momentum=None depends on them)."""
    __tracebackhide__ = True
    graphs = _graph_problems(yours)
    if graphs:
        fail(title, f"after {context}, a buffer holds an autograd graph", graphs, hint=_GRAPH_HINT, devices=where)
    mine = _tensors_by_name(yours)
    truths = sorted(_tensors_by_name(ref).items(), key=lambda item: item[1].is_floating_point())
    for name, truth in truths:
        got = mine[name]
        if _close(got, truth):
            continue
        suspects = state_suspects(ref, name, x, before)
        fail(title, f"after {context}, `{name}` differs from torch", _side_by_side(got, truth),
             hint=_first_match(got, suspects) or state_hint(ref, name), devices=where)


_GRADIENT_HINT = ("your output is within the tolerance of torch's, yet its gradient is not: the two formulas differ "
                  "slightly (compare yours with torch's term by term), or part of forward is hidden from autograd "
                  "(.detach(), .data or torch.no_grad())")
