"""Does the student's model compute what the reference computes? Outputs, gradients and state, side by side.

The reference is written in the hidden test cell, never in this package: a model class (or factory) that
loads the student's state_dict, or a function of the student's parameters and buffers. Both models then see
the same inputs under the same random state, in train and in eval mode, and the check compares, in order:
the outputs, the gradient with respect to each input, every parameter's gradient, and the buffers a
train-mode call updates. The first difference is reported with where it is, in which mode and how large.
"""

import copy
import inspect
from collections.abc import Callable

import torch
from torch import nn

from .diagnose import describe_error, dotted_children, explain_error, type_name
from .report import GraderError, fail, plural
from .runner import SEED, _build, _check, _forward, _inputs, _loss, _tensors

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # relative to the reference's scale; float32 on any CPU or GPU
MODES = ("train", "eval")

_CUT = ("part of the computation is hidden from autograd: look for `.detach()`, `.data`, `torch.no_grad()`, "
        "`.item()`/`.tolist()`/`.numpy()` round trips, or a tensor changed in place through `.data` "
        "(`out.data.clamp_(...)`). Autograd must see every operation that shapes the output")


def _flat(output, path: str = "output") -> list[tuple[str, object]]:
    """(path, leaf) pairs of a tensor, or a tuple/list/dict of them: `output`, `output[0]`, `output['digit']`."""
    if isinstance(output, (tuple, list)):
        return [pair for i, item in enumerate(output) for pair in _flat(item, f"{path}[{i}]")]
    if isinstance(output, dict):
        return [pair for key, item in output.items() for pair in _flat(item, f"{path}[{key!r}]")]
    return [(path, output)]


def _in_key_order(output):
    """Dicts of outputs sorted by key, so that {task: logits} in another insertion order compares (and weighs the
    loss) key by key."""
    if isinstance(output, dict) and all(isinstance(k, str) for k in output):
        return {k: _in_key_order(output[k]) for k in sorted(output)}
    if type(output) in (tuple, list):
        return type(output)(_in_key_order(item) for item in output)
    return output


def _scale(t: torch.Tensor) -> float:
    return max(1.0, t.detach().abs().max().item()) if t.numel() else 1.0


def _gap(yours: torch.Tensor, truth: torch.Tensor) -> tuple[float, tuple[int, ...]]:
    """The largest absolute difference and where it is."""
    diff = (yours.detach().double().cpu() - truth.detach().double().cpu()).abs()
    diff = torch.nan_to_num(diff, nan=float("inf"))
    if not diff.numel():
        return 0.0, ()
    at = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
    return diff.max().item(), at


def _close(yours: torch.Tensor, truth: torch.Tensor) -> bool:
    if yours.shape != truth.shape:
        return False
    a, b = yours.detach().double().cpu(), truth.detach().double().cpu()
    return torch.allclose(a, b, rtol=TOLERANCE["rtol"], atol=TOLERANCE["atol"] * _scale(b), equal_nan=True)


def _values(t: torch.Tensor, at: tuple[int, ...] = (), n: int = 4) -> str:
    """A few values of t, starting at index `at` (so the row shown holds the largest gap)."""
    flat = t.detach().double().cpu().flatten()
    start = int(torch.tensor(at).dot(torch.tensor(t.stride()))) if at and t.dim() else 0
    start = max(0, min(start, flat.numel() - n))
    shown = ", ".join(f"{v:.4f}" for v in flat[start:start + n].tolist())
    where = f"from index {list(at)}: " if at and flat.numel() > n else ""
    return f"{where}[{shown}{', ...' if flat.numel() > start + n else ''}]"


def _difference(what: str, yours: torch.Tensor, truth: torch.Tensor) -> list[str]:
    """Side by side, with the largest gap and its place (so two rows that look alike still say why)."""
    if yours.shape != truth.shape:
        return [f"{what}: yours has shape {list(yours.shape)}, the reference's {list(truth.shape)}"]
    gap, at = _gap(yours, truth)
    return [f"yours:     {_values(yours, at)}", f"reference: {_values(truth, at)}",
            f"largest gap {gap:.3g} at {what}{list(at) if at else ''} "
            f"(tolerance {TOLERANCE['rtol']:g} relative, {TOLERANCE['atol'] * _scale(truth):.2g} absolute)"]


# --- the two models ---------------------------------------------------------------------------

def _is_factory(reference) -> bool:
    """A model class or zero-argument factory (loads the student's state), or a function of (state, *inputs)."""
    if isinstance(reference, nn.Module) or (isinstance(reference, type) and issubclass(reference, nn.Module)):
        return True
    try:
        required = [p for p in inspect.signature(reference).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return True
    return not required


class _Functional(nn.Module):
    """A reference function `reference(state, *inputs[, training=...])` as a module holding the student's state."""

    def __init__(self, fn: Callable, state: dict):
        super().__init__()
        self.fn = fn
        self.state = {name: t.detach().clone().requires_grad_(t.requires_grad) for name, t in state.items()}
        self.takes_mode = "training" in inspect.signature(fn).parameters

    def forward(self, *inputs):
        kwargs = {"training": self.training} if self.takes_mode else {}
        return self.fn(self.state, *inputs, **kwargs)

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return self.state


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name, tied tensors under each name."""
    found = dict(model.named_parameters(remove_duplicate=False))
    found |= dict(model.named_buffers(remove_duplicate=False))
    return found


def _match_by_position(yours: dict, theirs: dict) -> dict[str, str] | None:
    """your name -> the reference's, when both hold tensors of the same shapes and, among the tensors of each shape,
    in the same order (another style of the same model: explicit layers instead of an nn.Sequential, a bare
    nn.Parameter, which state_dict() lists before the children, instead of a bias-free nn.Linear); else None.
    A wrong pairing can only make the two models differ, never make a wrong model pass."""
    def groups(tensors: dict) -> dict:
        found = {}
        for name, t in tensors.items():
            found.setdefault((tuple(t.shape), t.is_floating_point()), []).append(name)
        return found

    mine, ref = groups(yours), groups(theirs)
    if len(yours) != len(theirs) or mine.keys() != ref.keys() or any(len(mine[k]) != len(ref[k]) for k in mine):
        return None
    return {a: b for key in mine for a, b in zip(mine[key], ref[key])}


def _other_layers(student: nn.Module, ref: nn.Module) -> list[str]:
    """"`body.0` is nn.Linear in yours, LoRALinear in the exercise's model": the outermost places where both
    models hold a layer, of different types."""
    theirs, found, outer = dict(ref.named_modules()), [], []
    for name, module in student.named_modules():
        if not name or any(name.startswith(o + ".") for o in outer):
            continue
        other = theirs.get(name)
        if other is not None and type(other) is not type(module):
            outer.append(name)
            found.append(f"`{name}` is {type_name(module)} in yours, {type_name(other)} in the exercise's model")
    return found


def _reference_model(reference, student: nn.Module, device, title: str, where: str):
    """The reference on `device`, holding the student's weights; and the map of the student's names to its own."""
    __tracebackhide__ = True
    dotted = dotted_children(student)
    if dotted:
        fail(title, "your model registers a layer under a name with a dot, as a new child",
             [f"{name} is a child of its own, beside the layer it was meant to replace" for name in dotted[:3]],
             hint="setattr(model, 'body.0', layer) does not reach into `body`: it adds a child named 'body.0' "
                  "that forward never calls. Replace a nested layer with model.set_submodule('body.0', layer), "
                  "or setattr on its parent: setattr(model.body, '0', layer)", devices=where)
    if not _is_factory(reference):
        ref = _Functional(reference, _state(student))
        return ref, {name: name for name in ref.state}
    try:
        ref = copy.deepcopy(reference) if isinstance(reference, nn.Module) else reference()
        ref = ref.to(device)
    except Exception as error:
        raise GraderError("check_matches_reference", error) from None
    yours = {k: v for k, v in student.state_dict().items()}
    theirs = ref.state_dict()
    names = {k: k for k in yours} if set(yours) == set(theirs) else None
    if names is None:
        names = _match_by_position(yours, theirs)
    if names is None:
        missing, extra = sorted(set(theirs) - set(yours)), sorted(set(yours) - set(theirs))
        layers = _other_layers(student, ref)
        shown = 2 if layers else 3
        fail(title, "your model does not hold the tensors the exercise describes", layers[:3]
             + [f"the exercise's model has `{k}` {list(theirs[k].shape)}, yours has not" for k in missing[:shown]]
             + [f"yours has `{k}` {list(yours[k].shape)}, the exercise's model has not" for k in extra[:shown]],
             hint="use the attribute names, layer sizes and layer order the exercise gives: the grader loads your "
                  "weights into its reference model by name", devices=where)
    try:
        ref.load_state_dict({names[k]: v for k, v in yours.items()})
    except RuntimeError as error:
        fail(title, f"your weights do not fit the exercise's model: {describe_error(error)}",
             hint="check the layer sizes against the exercise's description", devices=where)
    return ref, {mine: names[mine] for mine in _state(student) if mine in names}


def _run(model, inputs, title: str, where: str, seed: int, is_reference: bool):
    __tracebackhide__ = True
    torch.manual_seed(seed)
    if not is_reference:
        return _forward(model, inputs, title, where)
    try:
        return model(*inputs)
    except Exception as error:
        raise GraderError("check_matches_reference (the reference)", error) from None


def _other_mode(ref, inputs, mode: str, seed: int):
    """What the reference gives in the other mode (to recognise a layer that ignores the mode), or None."""
    other = copy.deepcopy(ref).train(mode != "train")
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            return other(*inputs)
    except Exception:  # say, BatchNorm in train mode on a batch of one: no hint then
        return None


def _compare_outputs(title, where, mode, yours, truth, other_mode_truth, inputs=()):
    __tracebackhide__ = True
    mine, ref = _flat(yours), _flat(truth)
    if [p for p, _ in mine] != [p for p, _ in ref]:
        fail(title, f"in {mode} mode your model returns {_structure(yours)}; the exercise's returns {_structure(truth)}",
             hint="return exactly what the exercise describes", devices=where)
    others = [c for _, c in _flat(other_mode_truth)] if other_mode_truth is not None else [None] * len(ref)
    for (path, a), (_, b), c in zip(mine, ref, others):
        if not isinstance(b, torch.Tensor):
            continue
        if not isinstance(a, torch.Tensor):
            fail(title, f"in {mode} mode `{path}` is a {type(a).__name__}, not a tensor", devices=where)
        if a.shape != b.shape:
            fail(title, f"in {mode} mode `{path}` has shape {list(a.shape)}; the exercise's has {list(b.shape)}",
                 hint="follow the exercise's layer sizes and the order of the operations", devices=where)
        if not _close(a, b):
            hint = "compare your forward with the exercise's description, one operation at a time"
            other = "eval" if mode == "train" else "train"
            if isinstance(c, torch.Tensor) and _close(a, c) and not _close(b, c):
                hint = (f"your {mode}-mode output is what the exercise's model gives in {other} mode: a layer "
                        f"ignores the mode (`self.training`; e.g. F.dropout(..., training=self.training))")
            fail(title, f"with the same weights and inputs, your {mode}-mode `{path}` differs from the exercise's"
                        f"{_shapes(inputs)}", _difference(path, a, b), hint=hint, devices=where)


def _shapes(inputs) -> str:
    """" (input of shape [2, 7])": the size of the case that failed, since a check may try several."""
    shapes = [list(x.shape) for x in inputs if isinstance(x, torch.Tensor)]
    if not shapes:
        return ""
    return f" (input of shape {shapes[0]})" if len(shapes) == 1 else f" (inputs of shapes {shapes})"


def _structure(output) -> str:
    if isinstance(output, torch.Tensor):
        return "a tensor"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)}"
    if isinstance(output, dict):
        return f"a dict with keys {sorted(map(str, output))}"
    return f"a {type(output).__name__}"


def _compare_gradients(title, where, mode, inputs, ref_inputs, student, ref_tensors, names) -> int:
    """Fail on the first gradient that differs; return how many parameter gradients were compared."""
    __tracebackhide__ = True
    compared = 0
    for i, (a, b) in enumerate(zip(inputs, ref_inputs)):
        if not (isinstance(b, torch.Tensor) and b.requires_grad):
            continue
        label = "the input" if len(inputs) == 1 else f"input {i}"
        if a.grad is None and b.grad is not None:
            fail(title, f"in {mode} mode no gradient reaches {label}; in the exercise's model it does",
                 hint=_CUT, devices=where)
        if b.grad is not None and not _close(a.grad, b.grad):
            fail(title, f"in {mode} mode your outputs match, but the gradient with respect to {label} differs",
                 _difference(f"{label}.grad", a.grad, b.grad), hint=_CUT, devices=where)
    for mine, p in _state(student).items():
        if not p.requires_grad or mine not in names:
            continue
        truth = ref_tensors[names[mine]]
        if p.grad is None and truth.grad is not None:
            fail(title, f"in {mode} mode `{mine}` gets no gradient; in the exercise's model it does", hint=_CUT,
                 devices=where)
        if truth.grad is not None and p.grad is not None and not _close(p.grad, truth.grad):
            fail(title, f"in {mode} mode your outputs match, but the gradient of `{mine}` differs",
                 _difference(f"{mine}.grad", p.grad, truth.grad), hint=_CUT, devices=where)
        compared += truth.grad is not None
    return compared


def _compare_buffers(title, where, mode, student, ref_tensors, names):
    __tracebackhide__ = True
    for mine, b in student.named_buffers():
        truth = ref_tensors.get(names.get(mine, ""))
        if truth is None or not b.is_floating_point():
            continue
        if not _close(b, truth):
            fail(title, f"after a {mode}-mode call, buffer `{mine}` differs from the exercise's",
                 _difference(mine, b, truth),
                 hint="update state the way the exercise describes (which statistics, which momentum, under "
                      "torch.no_grad())", devices=where)


@_check("matches the reference")
def _matches(build, reference, example, *, modes=MODES, device):
    __tracebackhide__ = True
    where = str(device)
    title = "matches the reference"
    student = _build(build, device, title)
    ref, names = _reference_model(reference, student, device, title, where)
    ref_tensors = ref.named_tensors() if isinstance(ref, _Functional) else _state(ref)
    fingerprint, trained = [], 0
    for k, mode in enumerate(modes):
        if mode not in MODES:
            raise ValueError(f"modes must be among {MODES}, not {mode!r}")
        student.train(mode == "train")
        ref.train(mode == "train")
        for tensors in (_state(student).values(), ref_tensors.values()):
            for t in tensors:
                t.grad = None
        base = _inputs(example, device)
        inputs = tuple(x.detach().clone().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor)
                       else x for x in base)
        ref_inputs = tuple(x.detach().clone().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor)
                           else x for x in base)
        seed = SEED + 100 + k
        other_truth = _in_key_order(_other_mode(ref, ref_inputs, mode, seed))
        truth = _in_key_order(_run(ref, ref_inputs, title, where, seed, True))
        yours = _in_key_order(_run(student, inputs, title, where, seed, False))
        _compare_outputs(title, where, mode, yours, truth, other_truth, inputs)
        if mode == "train":
            _compare_buffers(title, where, mode, student, ref_tensors, names)
        loss_truth = _loss(truth)
        if not loss_truth.requires_grad:
            fingerprint.append(torch.cat([t.detach().double().flatten().cpu() for t in _tensors(yours)]))
            continue
        loss = _loss(yours)
        if not loss.requires_grad:
            fail(title, f"in {mode} mode your output carries no autograd graph; the exercise's does",
                 hint=_CUT, devices=where)
        try:
            loss.backward()
        except Exception as error:
            fail(title, f"backward() through your {mode}-mode output raised {describe_error(error)}",
                 hint=explain_error(error), devices=where)
        loss_truth.backward()
        trained = max(trained, _compare_gradients(title, where, mode, inputs, ref_inputs, student, ref_tensors,
                                                  names))
        fingerprint.append(torch.cat([t.detach().double().flatten().cpu() for t in _tensors(yours)]))
    gradients = f"input gradients and {plural(trained, 'parameter gradient')}" if trained else "input gradients"
    summary = (f"{type_name(student)}'s outputs, {gradients} agree with the exercise's model in "
               f"{' and '.join(modes)} mode")
    return summary, torch.cat(fingerprint) if fingerprint else None


def check_matches_reference(build, reference, example, *, modes=MODES):
    """``build()`` computes what ``reference`` computes, from the same weights, in train and eval mode.

    ``build``: the student's model (an nn.Module, copied) or a zero-argument factory. ``reference``: written in
    the hidden test cell; either a model class or zero-argument factory whose state_dict keys are the exercise's
    (it loads the student's state_dict; a model of another style with the same tensors in the same order is
    matched by position), or a function ``reference(state, *inputs[, training])`` of the student's parameters and
    buffers by name. ``example``: an input shape (batch first), a tensor, or ``device -> input(s)``.

    Compares, per mode, under the same random state: every output, the gradient with respect to every floating
    input, every parameter's gradient (for a generic weighted sum of the outputs), and after a train-mode call
    the floating buffers. Layers must be called (their hooks must run), as every model check requires.
    """
    __tracebackhide__ = True
    _matches(build, reference, example, modes=tuple(modes))
