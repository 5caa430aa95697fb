"""Checks on the code around a model: how the optimizer is built, one training step, single-sample
prediction, and hand-written parameter counters.

Like the model checks, each one prints one verdict line or raises CheckFailed with a diagnosis.
References are computed here from torch itself (a plain SGD loop, an eval-mode forward, ``parameters()``)
or passed in by the test cell (the optimizer to step like), never from stored answers.
"""

import copy
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .counting import _COUNTERS, _LISTINGS, _exact_count
from .runner import SEED, _build, _check, _forward, _inputs, _loss
from .diagnose import describe_error, explain_error, type_name
from .report import fail, own_errors, plural, quiet, verdict

# Two runs of the same float32 arithmetic agree far more closely than this.
SAME = {"rtol": 1e-5, "atol": 1e-6}
# Two optimizers of the same kind and settings, stepped on the same gradients, agree within a few float32 ulps
# (foreach and single-tensor kernels may round differently); a weight decay of 1e-4 at lr 0.1 moves a weight by
# 1e-5 of its size.
STEPPED = {"rtol": 1e-6, "atol": 1e-7}

_STEP_RECIPE = ("one training step is: optimizer.zero_grad(), loss = loss_fn(model(x), y), loss.backward(), "
                "optimizer.step(), return loss.item()")
_BATCHNORM_ONE = "Expected more than 1 value per channel when training"


def _names(items) -> str:
    quoted = [f"`{n}`" for n in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _shapes(tensors) -> str:
    return ", ".join(str(list(t.shape)) for t in tensors)


def _batch(shape, step: int, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SEED + 100 + step)
    return torch.randn(tuple(shape), generator=generator).to(device)


def _targets(output: torch.Tensor, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SEED + 200 + step)
    return torch.randn(tuple(output.shape), generator=generator).to(output.device)


# --- the optimizer ------------------------------------------------------------------------

@_check("optimizer")
def check_optimizer(setup: Callable, example=None, *, like: Callable | None = None, device):
    """``setup()`` returns ``(model, optimizer)``; the optimizer holds every trainable parameter the
    model has now, and nothing else. With ``example``, one step must then change every one of them.

    With ``like`` (written in the test: ``lambda params: torch.optim.SGD(params, lr=0.05)``), two steps of the
    student's optimizer must move the parameters exactly as two steps of ``like(parameters)`` move a copy of
    the model: the same kind of optimizer, with the same settings.
    """
    __tracebackhide__ = True
    title, where = "optimizer", str(device)
    try:
        made = setup()
    except Exception as error:  # the student's set-up code: report any failure
        fail(title, f"{_call(setup)} raised {describe_error(error)}", hint=explain_error(error), devices=where)
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module)
            and isinstance(made[1], torch.optim.Optimizer)):
        fail(title, f"{_call(setup)} returned {type(made).__name__}, not (model, optimizer)",
             hint="return the model and the torch.optim optimizer that trains it, as a pair", devices=where)
    model, optimizer = made
    model.to(device)  # moves parameters in place: an optimizer built earlier still holds them
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    held = {id(p): p for group in optimizer.param_groups for p in group["params"]}
    in_model = {id(p) for p in model.parameters()}
    missing = [n for n, p in trainable if id(p) not in held]
    stale = [p for i, p in held.items() if i not in in_model]
    if missing or stale:
        details = []
        if missing:
            details.append(f"{plural(len(missing), 'trainable tensor')} of the model {'is' if len(missing) == 1 else 'are'} "
                           f"not in the optimizer: {_names(missing)}")
        if stale:
            details.append(f"the optimizer holds {plural(len(stale), 'tensor')} that the model does not have "
                           f"(shapes {_shapes(stale)}): left from layers since replaced, or from another model")
        owners = sorted({n.rpartition(".")[0] or n for n in missing})
        one = len(owners) == 1
        if owners and stale:  # tensors missing, others left over: the layers were swapped after it was built
            cause = (f"{_names(owners)} {'was' if one else 'were'} created or replaced after the optimizer was built, "
                     f"so the optimizer never sees {'it' if one else 'them'}")
        elif owners:  # nothing left over: the history cannot be told apart, so both readings are named
            cause = (f"{_names(owners)} {'is' if one else 'are'} not in it: it was built before "
                     f"{'that layer' if one else 'these layers'} existed, or from only part of the model")
        else:
            cause = "layers were replaced after the optimizer was built"
        if len(missing) == len(trainable) > 1 and held:
            cause = "it holds none of them: was it built from another model, such as a second instance?"
        fail(title, "the optimizer does not hold the model's current parameters: " + cause, details,
             hint="build the optimizer last, from model.parameters(), once every layer exists: "
                  "torch.optim.SGD(model.parameters(), lr=...) copies the list of tensors when it is created",
             devices=where)
    summary = f"holds all {plural(len(trainable), 'trainable tensor')} of the model"
    if example is None:
        if like is not None:
            raise ValueError("check_optimizer: `like` compares steps, so it needs an example")
        return summary, len(trainable)
    model.train()
    twin = copy.deepcopy(model) if like is not None else None  # before any step: the reference starts here too
    reference = like([p for p in twin.parameters() if p.requires_grad]) if twin is not None else None
    inputs = _inputs(example, device)
    for k in range(1, 3 if like is not None else 2):
        before = {n: p.detach().clone() for n, p in trainable}
        _step_with(optimizer, model, inputs, k, title, where)
        if k == 1:
            still = [n for n, p in trainable if torch.equal(p.detach(), before[n])]
            if still:
                fail(title, "one optimizer.step() left some trainable tensors unchanged",
                     [f"`{n}` did not move" for n in still],
                     hint="check the optimizer's learning rate, and that these tensors take part in forward",
                     devices=where)
        if reference is not None:
            _step_with(reference, twin, inputs, k, title, where)
            _compare_updates(title, where, k, model, optimizer, twin, reference)
    # Dropout draws other masks on each device, so the fingerprint is what moved, not by how much.
    if reference is not None:
        return summary + f", and its steps update them as {_optimizer_name(reference)} does", len(trainable)
    return summary + ", and one step updates each", len(trainable)


def _step_with(optimizer, model, inputs, k, title, where):
    """One step: zero_grad, forward (seeded, so dropout draws the same masks for a copy), backward, step."""
    __tracebackhide__ = True
    optimizer.zero_grad()
    torch.manual_seed(SEED + k)
    loss = _loss(_forward(model, inputs, title, where))
    try:
        loss.backward()
    except RuntimeError as error:
        fail(title, f"backward() raised {describe_error(error)}", hint=explain_error(error), devices=where)
    optimizer.step()


_SETTINGS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "betas", "eps", "alpha")


def _optimizer_name(optimizer) -> str:
    group = optimizer.param_groups[0]
    return f"{type(optimizer).__name__}(lr={group['lr']:g})" if "lr" in group else type(optimizer).__name__


def _compare_updates(title, where, k, model, optimizer, twin, reference):
    """After step k, the student's parameters are where the reference optimizer put the copy's."""
    __tracebackhide__ = True
    off = [(n, (p.detach() - q.detach()).abs().max().item())
           for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters())
           if p.requires_grad and not torch.allclose(p.detach(), q.detach(), **STEPPED)]
    if not off:
        return
    details = []
    if type(optimizer) is not type(reference):
        details.append(f"yours is {type(optimizer).__name__}; the exercise's is {type(reference).__name__}")
    else:
        wanted = reference.param_groups[0]
        for i, group in enumerate(optimizer.param_groups):
            label = "yours has" if len(optimizer.param_groups) == 1 else f"your group {i} has"
            details += [f"{label} {key}={group[key]!r}; the exercise's has {key}={wanted[key]!r}"
                        for key in _SETTINGS if key in wanted and key in group and group[key] != wanted[key]]
    details += [f"`{n}` is off by up to {gap:.3g}" for n, gap in off[:3]]
    fail(title, f"after {plural(k, 'step')}, your optimizer has moved the parameters differently from "
                f"{_optimizer_name(reference)} on the same gradients", details,
         hint="build the optimizer the exercise names, with the learning rate you are given and no other options",
         devices=where)


def _call(fn) -> str:
    return f"{getattr(fn, '__name__', 'setup')}()".replace("<lambda>()", "the set-up function")


# --- one training step ------------------------------------------------------------------

@_check("training step")
def check_training_step(step: Callable, model, example, *, loss_fn: Callable = F.mse_loss, steps: int = 3,
                        lr: float = 0.1, device):
    """``step(model, optimizer, loss_fn, x, y)``, called ``steps`` times on fresh batches, leaves the
    parameters where torch's loop leaves them, and returns each batch's loss.

    ``example`` is the input shape of one batch; targets are random with the output's shape. The
    check hands ``step`` an SGD optimizer with learning rate ``lr`` and compares with its own loop.
    """
    __tracebackhide__ = True
    title, where = "training step", str(device)
    yours = _build(model, device, title).train()
    reference, accumulating = copy.deepcopy(yours), copy.deepcopy(yours)
    names = [n for n, p in yours.named_parameters() if p.requires_grad]
    if not names:
        fail(title, "the model has no trainable parameters, so no step can change it", devices=where)
    optimizers = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=lr)
                  for m in (yours, reference, accumulating)]
    name = getattr(step, "__name__", "step")
    for k in range(1, steps + 1):
        x = _batch(example, k, device)
        torch.manual_seed(SEED + k)  # the same dropout masks for every run of this step
        optimizers[1].zero_grad()
        out = _forward(reference, (x,), title, where)
        y = _targets(out, k)
        true_loss = loss_fn(out, y)
        true_loss.backward()
        optimizers[1].step()

        torch.manual_seed(SEED + k)
        loss_fn(_forward(accumulating, (x,), title, where), y).backward()  # no zero_grad: gradients pile up
        optimizers[2].step()

        before = _flat(yours)
        torch.manual_seed(SEED + k)
        try:
            returned = step(yours, optimizers[0], loss_fn, x, y)
        except Exception as error:  # the student's step: report any failure
            fail(title, f"at step {k}, {name}(model, optimizer, loss_fn, x, y) raised {describe_error(error)}",
                 hint=_explain_step_error(error), devices=where)
        _compare_step(title, where, k, yours, reference, accumulating, before, names)
        _compare_loss(title, where, k, name, returned, true_loss.item())
    # Each device is compared with torch's loop on that device; dropout draws other masks on each
    # device, so the parameters themselves are not compared across devices.
    return f"{plural(steps, 'step')} of {name} match torch's loop (zero_grad, forward, backward, step)", steps


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().cpu().double() for p in model.parameters() if p.requires_grad])


def _explain_step_error(error: Exception) -> str:
    if _BATCHNORM_ONE in str(error):
        return ("a BatchNorm layer in train mode got a batch of one sample and cannot compute batch statistics: "
                "train on batches of 2 or more (DataLoader(..., drop_last=True) drops a last batch of one)")
    if "backward through the graph a second time" in str(error):
        return "call loss.backward() once per step, on a loss computed in this step"
    return explain_error(error)


def _compare_step(title, where, k, yours, reference, accumulating, before, names):
    __tracebackhide__ = True
    after = _flat(yours)
    if torch.allclose(after, _flat(reference), **SAME):
        return
    if torch.equal(after, before):
        fail(title, f"after step {k}, no parameter has changed",
             hint="the step never updates the model: " + _STEP_RECIPE + ". Check that backward() and step() are "
                  "both called, and that zero_grad() does not sit between them", devices=where)
    if k > 1 and torch.allclose(after, _flat(accumulating), **SAME):
        fail(title, f"gradients accumulate across steps: the update at step {k} used the sum of the gradients of "
                    f"batches 1 to {k}, not just batch {k}'s",
             ["loss.backward() adds into each parameter's .grad; nothing clears it between steps"],
             hint="call optimizer.zero_grad() in every step, before loss.backward()", devices=where)
    gaps = [(n, (a.detach() - b.detach()).abs().max().item()) for (n, a), (_, b)
            in zip(yours.named_parameters(), reference.named_parameters()) if n in names]
    off = [f"`{n}` is off by up to {gap:.3g}" for n, gap in gaps if gap > SAME["atol"]]
    fail(title, f"after step {k}, the parameters differ from one SGD step on loss_fn(model(x), y)", off[:4],
         hint="use the optimizer and loss_fn you are given, one forward and one backward per step: " + _STEP_RECIPE,
         devices=where)


def _compare_loss(title, where, k, name, returned, truth):
    __tracebackhide__ = True
    if returned is None:
        fail(title, f"{name} returned None", hint="return this step's loss as a number: loss.item()", devices=where)
    if isinstance(returned, torch.Tensor):
        kept = " with its autograd graph" if returned.requires_grad else ""
        fail(title, f"{name} returned the loss as a tensor{kept}, not as a number",
             ["a loss tensor kept for a log holds on to the whole graph of its step, and every activation in it"]
             if kept else [],
             hint="return this step's loss as a Python float: loss.item()", devices=where)
    if not isinstance(returned, numbers.Real) or isinstance(returned, bool):
        fail(title, f"{name} returned {type(returned).__name__}, not a number",
             hint="return this step's loss as a number: loss.item()", devices=where)
    value = float(returned)
    if not abs(value - truth) <= 1e-4 * max(1.0, abs(truth)):
        fail(title, f"at step {k}, {name} returned {value:.6g}, but the loss on this batch is {truth:.6g}",
             hint="return loss.item() for the loss computed in this step, before optimizer.step()", devices=where)


# --- single-sample prediction ------------------------------------------------------------

@_check("single-sample prediction")
def check_predict(predict: Callable, model, example, *, device):
    """``predict(model, sample)`` on one sample of a batch of shape ``example`` returns that sample's
    eval-mode output, leaves the model's buffers alone, builds no autograd graph and leaves autograd on.

    The model is handed over in train mode, after a few training-mode batches, as it is after training.
    """
    __tracebackhide__ = True
    title, where = "single-sample prediction", str(device)
    m = _build(model, device, title).train()
    with torch.no_grad():
        for k in range(3):  # running statistics away from their initial values
            _forward(m, (_batch(example, k, device) * (1 + k),), title, where)
    batch = _batch(example, 10, device)
    with torch.no_grad():
        truth = _forward(copy.deepcopy(m).eval(), (batch,), title, where)
    name = getattr(predict, "__name__", "predict")
    for i in range(min(3, batch.shape[0])):
        sample = batch[i]
        m.train()
        buffers = {n: b.detach().clone() for n, b in m.named_buffers()}
        torch.manual_seed(SEED + i)
        grad_was_on = torch.is_grad_enabled()
        try:
            got = predict(m, sample)
        except Exception as error:  # the student's function: report any failure
            fail(title, f"{name}(model, sample) on a sample of shape {list(sample.shape)} raised {describe_error(error)}",
                 hint=_explain_predict_error(error), devices=where)
        finally:  # whatever predict did to autograd, the code after this check gets it back as it was
            left_off = grad_was_on and not torch.is_grad_enabled()
            torch.set_grad_enabled(grad_was_on)
        if left_off:
            fail(title, f"{name} left autograd switched off: after it returns, torch.is_grad_enabled() is False",
                 ["every forward after a prediction builds no graph, so training after it raises or learns nothing"],
                 hint="switch autograd off only around the model call, in a block that switches it back on when it "
                      "ends", devices=where)
        if not isinstance(got, torch.Tensor):
            fail(title, f"{name} returned {type(got).__name__}, not a tensor",
                 hint="return the model's output for the sample, as a tensor", devices=where)
        expected = truth[i]
        if got.shape != expected.shape:
            fail(title, f"{name} returned shape {list(got.shape)}; the model's output for one sample has shape "
                        f"{list(expected.shape)}",
                 hint="add the batch dimension for the model (sample.unsqueeze(0)) and take it away from the "
                      "result ([0] or .squeeze(0))" if got.numel() == expected.numel() else
                      "return the model's whole output for the sample (every class's score), not a value computed "
                      "from it", devices=where)
        moved = [n for n, b in m.named_buffers() if not torch.equal(b, buffers[n])]
        if moved:
            fail(title, f"{name} changed the model's buffers, so it ran the model in train mode",
                 [f"`{n}` changed" for n in moved],
                 hint="call model.eval() before predicting: eval mode uses the running statistics and updates nothing",
                 devices=where)
        if not torch.allclose(got.detach().float(), expected.float(), rtol=1e-4, atol=1e-5):
            fail(title, f"for sample {i}, {name} differs from the model's eval-mode output",
                 [f"yours: {_few(got)}", f"eval:  {_few(expected)}"],
                 hint="call model.eval() before predicting: in train mode dropout is active and normalisation "
                      "uses the batch's statistics", devices=where)
        if got.requires_grad:
            fail(title, f"{name} returns a tensor attached to an autograd graph",
                 hint="model.eval() does not turn autograd off: run the model under torch.no_grad() "
                      "(or torch.inference_mode()) when you only predict", devices=where)
    return f"{name} gives each sample's eval-mode output, changes no buffer, builds no graph", truth


def _few(t: torch.Tensor) -> str:
    values = t.detach().float().flatten().cpu()[:4].tolist()
    return "[" + ", ".join(f"{v:.4f}" for v in values) + (", ...]" if t.numel() > 4 else "]")


def _explain_predict_error(error: Exception) -> str:
    if _BATCHNORM_ONE in str(error):
        return ("the model is still in train mode, where BatchNorm normalises with the batch's own statistics, "
                "and one sample has no spread: call model.eval() before single-sample inference (it uses the "
                "running statistics), or predict on batches of 2 or more")
    if "expected 2D or 3D input" in str(error) or "shapes cannot be multiplied" in str(error):
        return "the model expects a batch: add a batch dimension with sample.unsqueeze(0)"
    return explain_error(error)


# --- hand-written counters -----------------------------------------------------------------

def check_counter(fn: Callable, models, counts: str = "trainable parameters"):
    """``fn(model)`` equals what torch counts on each model (``parameters()`` yields a shared tensor once).

    ``models`` is a list of modules or zero-argument factories.
    """
    __tracebackhide__ = True
    title = f"counting {counts}"
    if counts not in _COUNTERS:
        raise ValueError(f"counts must be one of {sorted(_COUNTERS)}, not {counts!r}")
    name = getattr(fn, "__name__", "counter")
    with quiet(), own_errors("check_counter"):
        for model in models:
            m = model if isinstance(model, nn.Module) else model()
            truth = _COUNTERS[counts](m)  # torch's count first, before any code of the student's runs
            call = f"{name}({type_name(m)})"
            try:
                got = fn(copy.deepcopy(m))
            except Exception as error:  # the student's counter: report any failure
                fail(title, f"{call} raised {describe_error(error)}", hint=explain_error(error))
            count = _exact_count(got)  # a plain int (or float): an object that "equals everything" fails
            if count != truth:
                details, hint = _why_miscounted(m, count, truth, counts)
                shown = f"{got:,}" if isinstance(count, int) else repr(got)
                fail(title, f"{call} returned {shown}, but torch counts {truth:,} {counts}", details, hint=hint)
    verdict(title, f"{name} matches torch on {plural(len(models), 'model')}")


# The listing that yields each tensor of a count once, as torch counts it.
_YIELDS = {"trainable parameters": "parameters()", "parameters": "parameters()", "buffer elements": "buffers()"}


def _why_miscounted(model, got, truth, counts) -> tuple[list[str], str]:
    """Details and a hint for a wrong count; each is said only where it explains the difference exactly."""
    listing = (f"print([(n, tuple(t.shape)) for n, t in {_LISTINGS[counts]}]) lists what torch counts: "
               "compare it with what your code counts")
    if got is None:
        return [], "return the count as an int: " + listing
    if isinstance(got, float):
        if not got.is_integer():
            return [], listing
        got = int(got)
    repeats = _repeated_tensors(model, counts)
    extra = sum((len(names) - 1) * numel for names, numel in repeats)
    repeated = _describe_repeats(model, repeats, counts) if extra else []
    if repeats and got - truth == extra:
        return repeated, (f"your count has exactly the repeats: it counts a shared tensor once per name. "
                          f"{_YIELDS[counts]} yields each tensor once; count each tensor once too (remember which "
                          "ones you have counted, for example by id())")
    if got > truth and counts in ("trainable parameters", "parameters"):
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        buffers = sum(b.numel() for b in model.buffers())
        if counts == "trainable parameters" and frozen and got - truth in (frozen, frozen + extra):
            details = (repeated if got - truth != frozen else []) + [
                f"{plural(frozen, 'parameter')} {'is' if frozen == 1 else 'are'} frozen (requires_grad=False)"]
            return details, "trainable means requires_grad=True: skip frozen parameters"
        if buffers and got - truth in (buffers, buffers + extra):
            details = (repeated if got - truth != buffers else []) + [
                f"the model has {plural(buffers, 'buffer element')}"]
            return details, "buffers are not parameters: count parameters(), not state_dict() or buffers()"
    return [], listing  # no reading explains the difference exactly, so none is offered


def _describe_repeats(model, repeats, counts: str = "trainable parameters") -> list[str]:
    """One line per shared layer (all its tensors of the count repeated under the same owners) or tied tensor."""
    buffers = counts == "buffer elements"
    unit = "buffer element" if buffers else "parameter"
    by_owners: dict[tuple, list[tuple[list[str], int]]] = {}
    for names, numel in repeats:
        by_owners.setdefault(tuple(n.rpartition(".")[0] for n in names), []).append((names, numel))
    lines = []
    for owners, group in by_owners.items():
        numel = sum(n for _, n in group)
        copies = len(owners)
        layers = [model.get_submodule(o) for o in owners]
        layer = layers[0]
        whole = (len({id(x) for x in layers}) == 1 and len(set(owners)) == copies
                 and numel == sum(t.numel() for t in (layer.buffers() if buffers else layer.parameters())))
        if whole:
            lines.append(f"{_names(owners)} are one {type_name(layer)} ({plural(numel, unit)}) registered "
                         f"under {copies} names: counted once per name, that is {numel * (copies - 1):,} extra")
        else:
            for names, n in group:
                lines.append(f"{_names(names)} are one tensor ({plural(n, 'element')}), tied: counted once per name, "
                             f"that is {n * (len(names) - 1):,} extra")
    return lines


def _repeated_tensors(model: nn.Module, counts: str) -> list[tuple[list[str], int]]:
    """Tensors listed under more than one name where torch's count takes each once (parameters(), buffers());
    state_dict() lists a tied tensor under every name, and its count has every one of them, so none repeats."""
    if counts == "state_dict elements":
        return []
    listed = (model.named_buffers(remove_duplicate=False) if counts == "buffer elements"
              else model.named_parameters(remove_duplicate=False))
    names: dict[int, list[str]] = {}
    sizes: dict[int, int] = {}
    for n, t in listed:
        if counts == "trainable parameters" and not t.requires_grad:
            continue
        names.setdefault(id(t), []).append(n)
        sizes[id(t)] = t.numel()
    return [(group, sizes[i]) for i, group in names.items() if len(group) > 1]
