"""Unit 08: a model's tensors as inputs (torch.func.functional_call).

``check_ensemble_forward(ensemble_forward, build, example)``: ``ensemble_forward(model, params, buffers, x)`` runs
N models of one architecture in one call, from the stacked tensors that ``torch.func.stack_module_state`` makes,
and gives what calling each model gives: outputs, and the gradients with respect to every stacked parameter and
to the input. The truth is each member model, called as it is.
"""

import copy
import re

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from .diagnose import describe_error, explain_error, type_name
from .reference import _CUT, _close, _difference
from .report import fail, plural
from .runner import SEED, _build, _check, _inputs

_BUFFERS_HINT = ("functional_call(model, tensors, args) uses the model's own tensor for every name you do not pass, "
                 "so a missing buffer (BatchNorm's running_mean and running_var) silently comes from the template: "
                 "pass the stacked buffers too, functional_call(model, (params, buffers), args)")
_LEFT_ALONE = ("functional_call(model, tensors, args) lends the tensors to the model for one call and puts the model's "
               "own back afterwards: no load_state_dict, no assignment to the model, no in-place change of the dicts")


def _vary_state(member: nn.Module, example, device, index: int) -> None:
    """Give each member buffers of its own, as training on its own data would (BatchNorm's running statistics)."""
    member.train()
    with torch.no_grad():
        for step in range(2):
            inputs = _inputs(example, device)
            member(*(x * (1 + index) + index + step if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                     for x in inputs))
    member.eval()


def _same_tensors(before: dict, after) -> list[str]:
    """Names whose tensor was replaced, changed or removed."""
    if not isinstance(after, dict) or set(after) != set(before):
        return sorted(set(before) ^ set(after if isinstance(after, dict) else {}))[:4] or ["(the keys)"]
    return [k for k, (t, value) in before.items()
            if after[k] is not t or (not t.is_meta and not torch.equal(after[k].detach(), value))]


def _state(module: nn.Module) -> dict:
    found = dict(module.named_parameters())
    found |= dict(module.named_buffers())
    return {k: (t, t.detach().clone()) for k, t in found.items()}


@_check("ensemble forward")
def check_ensemble_forward(ensemble_forward, build, example, *, members: int = 3, template: str = "copy",
                           gradients: bool = True, device):
    """``members`` models from ``build()``, each with buffers of its own, in eval mode; ``params, buffers =
    stack_module_state(models)``; ``model`` a copy of the first (``template="meta"``: moved to the meta device, so
    that its own tensors cannot be used). ``ensemble_forward(model, params, buffers, *inputs)`` must return the
    members' outputs stacked on a new first dimension, leave ``model`` and both dicts as they were, and (with
    ``gradients``) give every stacked parameter and every input the gradients that calling each member gives."""
    __tracebackhide__ = True
    title, where = "ensemble forward", str(device)
    models = [_build(build, device, title) for _ in range(members)]
    for index, member in enumerate(models):
        _vary_state(member, example, device, index)
    params, buffers = stack_module_state(models)
    model = copy.deepcopy(models[0])
    if template == "meta":
        model = model.to("meta")
    label = type_name(model)
    before = {"model": _state(model), "params": {k: (t, t.detach().clone()) for k, t in params.items()},
              "buffers": {k: (t, t.detach().clone()) for k, t in buffers.items()}}
    base = _inputs(example, device)
    inputs = tuple(x.detach().clone().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor) else x
                   for x in base)
    try:
        out = ensemble_forward(model, params, buffers, *inputs)
    except Exception as error:  # the student's function: report any failure
        hint = explain_error(error)
        whole = _passed_whole(str(error), {**params, **buffers}, members)
        if whole:
            hint = (f"a stacked tensor went in whole: {whole} holds all {members} members, one per row of its first "
                    "dimension; both dicts must go through vmap (or be sliced per member)")
        elif template == "meta" and "meta" in str(error):
            hint = ("the template `model` is on the meta device, and one of its own tensors was used: every "
                    "parameter and every buffer must come from the dicts; " + _BUFFERS_HINT)
        fail(title, f"ensemble_forward(model, params, buffers, x) raised {describe_error(error)}", hint=hint,
             devices=where)
    truths = []
    ref_inputs = tuple(x.detach().clone().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor)
                       else x for x in base)
    for member in models:
        truths.append(member(*ref_inputs))
    expected = (members, *truths[0].shape)
    if not isinstance(out, torch.Tensor):
        fail(title, f"ensemble_forward returned {type(out).__name__}, not a tensor",
             hint="return the members' outputs stacked into one tensor (torch.vmap does the stacking)", devices=where)
    if tuple(out.shape) != expected:
        fail(title, f"ensemble_forward returned shape {list(out.shape)}; {members} members of {label} give "
                    f"{list(expected)}", hint="one output per member, stacked along a new first dimension",
             devices=where)
    for i, truth in enumerate(truths):
        if _close(out[i], truth):
            continue
        hint = "out[i] must be what member i gives, called as member(x)"
        if i and _close(out[i], _with_template_buffers(models, i, ref_inputs)):
            hint = (f"member {i}'s output is what its parameters give with member 0's buffers, the ones the "
                    f"template holds: {_BUFFERS_HINT}")
        fail(title, f"out[{i}] differs from member {i}'s output", _difference(f"out[{i}]", out[i], truth),
             hint=hint, devices=where)
    for what, state in (("model", model), ("params", params), ("buffers", buffers)):
        now = _state(state) if isinstance(state, nn.Module) else state
        changed = _same_tensors(before[what], {k: v[0] for k, v in now.items()} if isinstance(state, nn.Module)
                                else now)
        if changed:
            fail(title, f"ensemble_forward changed `{what}`", [f"`{k}`" for k in changed[:4]], hint=_LEFT_ALONE,
                 devices=where)
    if gradients:
        _compare_gradients(title, where, out, truths, params, models, inputs, ref_inputs)
    shown = "outputs" + (", parameter and input gradients" if gradients else "")
    return (f"{members} members of {label} in one call: {shown} match each member's own call "
            f"({plural(len(params), 'stacked parameter')}, {plural(len(buffers), 'stacked buffer')})"), \
        out.detach().double().flatten().cpu()


def _passed_whole(message: str, stacked: dict, members: int) -> str | None:
    """When the error quotes a stacked tensor's full size beside one member's (say "should contain 32 elements not
    96"): that tensor's name if the message names it too, else a description; None when nothing fits."""
    numbers = set(re.findall(r"\b\d+\b", message))
    fits = [name for name, t in stacked.items()
            if t.dim() > 1 and str(t.numel()) in numbers and str(t.numel() // members) in numbers]
    named = [name for name in fits if name.rpartition(".")[2] in message]
    if len(named) == 1:
        return f"`{named[0]}`"
    if fits:
        size = stacked[fits[0]].numel()
        return f"a tensor of {size} elements (the error quotes {size}, and {size // members} for one member)"
    return None


def _with_template_buffers(models, i, inputs):
    """Member i's parameters with member 0's buffers: what a call that forgets the buffers computes."""
    with torch.no_grad():
        own = {k: p.detach() for k, p in models[i].named_parameters()}
        return functional_call(models[0], own, inputs)


def _compare_gradients(title, where, out, truths, params, models, inputs, ref_inputs):
    __tracebackhide__ = True
    generator = torch.Generator().manual_seed(SEED + 2)
    weights = torch.randn(out.shape, generator=generator).to(out.device)
    loss = (out * weights).sum()
    if not loss.requires_grad:
        fail(title, "the stacked output carries no autograd graph", hint=_CUT + "; pass the stacked parameters "
             "as they are (no .detach(), no torch.no_grad(), no nn.Parameter(...) around a slice)", devices=where)
    try:
        loss.backward()
    except Exception as error:
        fail(title, f"backward() through the stacked output raised {describe_error(error)}",
             hint=explain_error(error), devices=where)
    for i, truth in enumerate(truths):
        (truth * weights[i]).sum().backward()
    for name, stacked in params.items():
        if stacked.grad is None:
            fail(title, f"no gradient reaches params[{name!r}]",
                 hint=_CUT + "; the stacked parameters must be what functional_call uses, as they are", devices=where)
        for i, member in enumerate(models):
            truth = member.get_parameter(name).grad
            if truth is not None and not _close(stacked.grad[i], truth):
                fail(title, f"the gradient of params[{name!r}] for member {i} differs from member {i}'s own",
                     _difference(f"params[{name!r}].grad[{i}]", stacked.grad[i], truth), hint=_CUT, devices=where)
    for k, (x, y) in enumerate(zip(inputs, ref_inputs)):
        if isinstance(y, torch.Tensor) and y.grad is not None:
            if x.grad is None:
                fail(title, "no gradient reaches the input", hint=_CUT, devices=where)
            if not _close(x.grad, y.grad):
                fail(title, "the gradient with respect to the input differs from the members' together",
                     _difference("x.grad", x.grad, y.grad), hint=_CUT, devices=where)
