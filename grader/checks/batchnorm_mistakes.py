"""What torch's BatchNorm would have computed under each likely mistake of a re-implementation.

check_matches_torch (grader.checks.layers) compares a student's layer with torch's; when a value differs, the
suspects here say which mistake gives exactly the student's value (the unbiased variance in the normalisation,
eps outside the square root, statistics cut from the graph, momentum the wrong way round...). A hint is given
only when it matches: right or silent. Nothing here knows a solution: every suspect is torch's own computation
with one term changed.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .runner import _loss

def _is_batchnorm(module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _batch_stats(x: torch.Tensor):
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dims), x.var(dims, correction=0), x.var(dims, correction=1)


def _normalise(ref, x, mean, var, weight=None, bias=None, eps_outside=False, eps=None):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if eps_outside:
        y = (x - mean.view(shape)) / (var.view(shape).sqrt() + ref.eps)
        return y if weight is None else y * weight.view(shape) + bias.view(shape)
    return F.batch_norm(x, mean, var, weight, bias, training=False, eps=ref.eps if eps is None else eps)


# Train-mode formulas torch's gradient would come from under each likely mistake, and what to say when it matches.
_GRADIENT_MISTAKES = [
    ({"cut_mean": True, "cut_var": True},
     "the batch mean and variance you normalise with are cut from the autograd graph (.detach(), .data, "
     "torch.no_grad()): keep them in it, and detach only what updates the running statistics"),
    ({"cut_mean": True},
     "the batch mean you normalise with is cut from the autograd graph (.detach(), .data, torch.no_grad()): "
     "keep it in it, and detach only what updates the running statistics"),
    ({"cut_var": True},
     "the batch variance you normalise with is cut from the autograd graph (.detach(), .data, torch.no_grad()): "
     "keep it in it, and detach only what updates the running statistics"),
    ({"eps": "outside"}, "eps goes inside the square root: torch divides by sqrt(var + eps)"),
    ({"eps": "missing"}, "eps is missing: torch divides by sqrt(var + eps)"),
]


def _train_formula(ref, x, weight, bias, cut_mean=False, cut_var=False, eps="inside"):
    dims = [0] + list(range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean, var = x.mean(dims, keepdim=True), x.var(dims, correction=0, keepdim=True)
    mean, var = (mean.detach() if cut_mean else mean), (var.detach() if cut_var else var)
    scale = {"inside": (var + ref.eps).sqrt(), "outside": var.sqrt() + ref.eps, "missing": var.sqrt()}[eps]
    y = (x - mean) / scale
    return y if weight is None else y * weight.view(shape) + bias.view(shape)


def gradient_suspects(ref, x, label):
    """(hint, the gradient of `label` under that mistake) for a BatchNorm in train mode; [] otherwise."""
    if not _is_batchnorm(ref) or not ref.training:
        return []
    suspects = []
    for options, hint in _GRADIENT_MISTAKES:
        x_in = x.detach().clone().requires_grad_()
        w, b = ((ref.weight.detach().clone().requires_grad_(), ref.bias.detach().clone().requires_grad_())
                if ref.affine else (None, None))
        _loss(_train_formula(ref, x_in, w, b, **options)).backward()
        grads = {"the input": x_in.grad, "`weight`": getattr(w, "grad", None), "`bias`": getattr(b, "grad", None)}
        suspects.append((hint, grads.get(label)))
    return suspects


def _factor(ref, counted: int) -> float:
    return 1.0 / counted if ref.momentum is None else ref.momentum


def output_suspects(ref, x, before):
    if not _is_batchnorm(ref):
        return []
    mean, biased, unbiased = _batch_stats(x)
    w, b = (ref.weight, ref.bias) if ref.affine else (None, None)
    suspects = [
        ("you normalise with the unbiased variance (divided by N - 1); in train mode torch normalises "
         "with the biased one (divided by N)", _normalise(ref, x, mean, unbiased, w, b)),
        ("in train mode torch normalises with the batch's own mean and variance; running_mean and "
         "running_var are for eval mode", _normalise(ref, x, before.get("running_mean", mean),
                                                     before.get("running_var", biased), w, b)),
        ("eps goes inside the square root: torch divides by sqrt(var + eps)",
         _normalise(ref, x, mean, biased, w, b, eps_outside=True)),
        ("eps is missing: torch divides by sqrt(var + eps)", _normalise(ref, x, mean, biased, w, b, eps=0.0)),
    ]
    if ref.affine:
        suspects += [
            ("weight and bias are not applied: torch returns x_hat * weight + bias", _normalise(ref, x, mean, biased)),
            ("weight and bias are swapped: torch returns x_hat * weight + bias", _normalise(ref, x, mean, biased, b, w)),
        ]
    return suspects


def eval_suspects(ref, x):
    if not _is_batchnorm(ref):
        return []
    mean, biased, unbiased = _batch_stats(x)
    w, b = (ref.weight, ref.bias) if ref.affine else (None, None)
    running = ("in eval mode torch normalises with running_mean and running_var; yours uses the batch's "
               "statistics, so a sample's output depends on the rest of its batch")
    return [(running, _normalise(ref, x, mean, biased, w, b)), (running, _normalise(ref, x, mean, unbiased, w, b))]


def state_suspects(ref, name, x, before):
    if not _is_batchnorm(ref) or name not in ("running_mean", "running_var", "num_batches_tracked"):
        return []
    if name == "num_batches_tracked":
        return [("num_batches_tracked is not incremented: add 1 at every train-mode forward", before[name])]
    mean, biased, unbiased = _batch_stats(x)
    old = before[name]
    stat = mean if name == "running_mean" else unbiased
    f = _factor(ref, int(before["num_batches_tracked"]) + 1)
    blend = lambda value, factor: (1 - factor) * old + factor * value  # noqa: E731
    suspects = []
    if name == "running_var":
        suspects.append(("running_var must hold the unbiased variance (divided by N - 1), though torch normalises "
                         "with the biased one (divided by N)", blend(biased, f)))
    if ref.momentum is None:
        suspects.append(("momentum=None is treated like momentum=0.1: with None torch keeps a cumulative average, "
                         "blending each batch in with factor 1 / num_batches_tracked (counting this batch)",
                         blend(stat, 0.1)))
        suspects.append(("with momentum=None the factor is 1 / num_batches_tracked counted after adding this batch",
                         blend(stat, 1.0 / max(1, int(before["num_batches_tracked"])))
                         if int(before["num_batches_tracked"]) else None))
    if abs(f - 0.5) > 1e-9:
        suspects.append(("momentum weighs the new batch, not the old value: torch computes "
                         f"(1 - momentum) * {name} + momentum * batch statistic", blend(stat, 1 - f)))
    suspects.append((f"{name} did not move in train mode: update it at every train-mode forward", old))
    if abs(f - 1) > 1e-9:
        suspects.append((f"{name} holds this batch's statistic itself; torch blends it in: "
                         f"(1 - momentum) * {name} + momentum * batch statistic", stat))
    return suspects


def state_hint(ref, name) -> str:
    if not _is_batchnorm(ref):
        return f"`{name}` should not change in a forward pass unless torch's does"
    if name == "num_batches_tracked":
        return "num_batches_tracked counts train-mode forwards: torch adds 1 at each"
    if name in ("running_mean", "running_var"):
        stat = "mean" if name == "running_mean" else "unbiased variance (divided by N - 1)"
        factor = "1 / num_batches_tracked" if ref.momentum is None else "momentum"
        return f"torch computes (1 - f) * {name} + f * batch {stat}, with f = {factor}"
    return f"`{name}` is a parameter: forward must not change it"
