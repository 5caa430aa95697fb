"""Unit 08: a model's state across versions, devices and parametrizations.

* ``check_loads_checkpoint(model, saved_by, example)``: a checkpoint written by another version of a model
  (``saved_by``) loads into ``model`` with strict=True, its tensors untouched, and the loaded model computes what
  ``saved_by`` computed with it (outputs and input gradients, train and eval mode).
* ``check_plain_state_dict(plain_state_dict, build, build_plain, example)``: the student's function turns a
  parametrized model's state into one the same model without parametrizations loads, computing the same thing,
  and leaves the parametrized model as it was.
* ``check_materializes(materialize, build, example)``: a model built on the meta device comes out on the device
  with every tensor initialised as a freshly built model's.

The truth is always torch or the test cell: the model that wrote the checkpoint, the parametrized model itself,
a model built directly on the device. Nothing here knows a solution.
"""

import contextlib
import copy
import io

import torch
import torch.utils.deterministic
from torch import nn
from torch.nn.utils import parametrize

from .diagnose import describe_error, explain_error, type_name
from .reference import _CUT, _close, _difference
from .report import fail, plural
from .runner import SEED, _build, _check, _forward, _inputs, _loss, _outputs
from .saving import _not_a_state_dict, state_dict_mismatch


# --- two models side by side: outputs and input gradients ------------------------------------------

def _as_trained(model: nn.Module, device) -> None:
    """Move every parameter away from its initial value, as training would (a scale of exactly 1, a log-scale of
    exactly 0 or a weight-norm magnitude equal to the norm would hide a wrong conversion)."""
    generator = torch.Generator().manual_seed(SEED + 7)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_((0.3 * torch.randn(p.shape, generator=generator)).to(device))


_MODES = ("train", "eval")


def _record(model: nn.Module, example, device) -> list[tuple]:
    """What ``model`` computes, per mode, under one seed: (output, gradient of each floating input or None)."""
    found = []
    for k, mode in enumerate(_MODES):
        model.train(mode == "train")
        inputs = tuple(x.detach().clone().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor) else x
                       for x in _inputs(example, device))
        torch.manual_seed(SEED + 100 + k)
        output = model(*inputs)
        loss = _loss(output)
        if loss.requires_grad:
            loss.backward()
        found.append((_outputs(output), [x.grad if isinstance(x, torch.Tensor) else None for x in inputs]))
    return found


def _same_computation(title, where, yours, truth: list[tuple], example, device, what: str):
    """Fail unless ``yours`` computes what ``_record`` recorded of the other model: outputs and input gradients."""
    __tracebackhide__ = True
    for k, (mode, (expected, expected_grads)) in enumerate(zip(_MODES, truth)):
        yours.train(mode == "train")
        inputs = tuple(x.detach().clone().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor) else x
                       for x in _inputs(example, device))
        torch.manual_seed(SEED + 100 + k)
        out = _forward(yours, inputs, title, where)
        got = _outputs(out)
        if got.shape != expected.shape or not _close(got, expected):
            fail(title, f"{what}, your {mode}-mode output differs", _difference("output", got, expected)[-3:],
                 hint="each tensor must land where it plays the same part, holding the same value: print the "
                      "loaded model's tensors beside the checkpoint's", devices=where)
        if all(g is None for g in expected_grads):
            continue
        loss = _loss(out)
        if not loss.requires_grad:
            fail(title, f"{what}, your {mode}-mode output carries no autograd graph", hint=_CUT, devices=where)
        loss.backward()
        for i, (x, grad) in enumerate(zip(inputs, expected_grads)):
            if grad is None:
                continue
            label = "the input" if len(inputs) == 1 else f"input {i}"
            if x.grad is None:
                fail(title, f"{what}, no gradient reaches {label} in {mode} mode", hint=_CUT, devices=where)
            if not _close(x.grad, grad):
                fail(title, f"{what}, your outputs match but the gradient with respect to {label} differs in "
                            f"{mode} mode", _difference(f"{label}.grad", x.grad, grad), hint=_CUT, devices=where)


# --- a checkpoint from another version of the model -------------------------------------------------

def _versions(checkpoint) -> str:
    """"_metadata: versions 1, 3" or "no _metadata": what the checkpoint tells each module about its version."""
    versions = sorted({info.get("version") for info in getattr(checkpoint, "_metadata", {}).values()} - {None})
    if not hasattr(checkpoint, "_metadata"):
        return "no _metadata"
    return f"_metadata: version{'s' * (len(versions) > 1)} {', '.join(map(str, versions))}"


_UPGRADE_HINT = ("torch calls _load_from_state_dict(state_dict, prefix, local_metadata, ...) once per module, with "
                 "`prefix` its place in the model ('0.', 'block.', or '' at the root), in `state_dict` the "
                 "checkpoint's keys under that prefix, and local_metadata.get('version') the version of the class "
                 "that saved it (None when the checkpoint carries no _metadata): change the prefix + '...' keys of "
                 "state_dict, then call super()._load_from_state_dict(...) with it")


def _strict_failure(text: str) -> list[str]:
    """The key and shape lines of torch's strict-loading error."""
    lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
    return [line if len(line) < 200 else line[:197] + "..." for line in lines][:5]


@_check("loads checkpoint")
def check_loads_checkpoint(model, saved_by, example, *, metadata: bool = True, device):
    """A checkpoint written by ``saved_by()`` (its parameters moved as training would, then through torch.save and
    torch.load(weights_only=True)) loads into ``model()`` with strict=True, leaves the checkpoint's tensors as they
    were, and the loaded model computes what ``saved_by`` computed: outputs and input gradients, in train and eval
    mode. ``metadata=False``: the checkpoint lost its `_metadata` on the way (a plain dict copy of it)."""
    __tracebackhide__ = True
    title, where = "loads checkpoint", str(device)
    theirs = _build(saved_by, device, title)
    _as_trained(theirs, device)
    label, saved = type_name(theirs), theirs.state_dict()
    file = io.BytesIO()
    torch.save(saved, file)
    file.seek(0)
    checkpoint = torch.load(file, weights_only=True)
    if not metadata:
        checkpoint = dict(checkpoint)
    kept = {k: v.detach().clone() for k, v in checkpoint.items()}
    yours = _build(model, device, title)
    try:
        yours.load_state_dict(checkpoint)
    except RuntimeError as error:
        if not str(error).startswith("Error(s) in loading state_dict"):
            fail(title, f"load_state_dict(checkpoint of {label}) raised {describe_error(error)}",
                 hint=explain_error(error), devices=where)
        fail(title, f"{type_name(yours)} cannot load {label}'s checkpoint ({_versions(checkpoint)}) with strict=True",
             _strict_failure(str(error)), hint=_UPGRADE_HINT, devices=where)
    except Exception as error:  # the student's loading code: report any failure
        fail(title, f"load_state_dict(checkpoint of {label}) raised {describe_error(error)}",
             hint=explain_error(error), devices=where)
    changed = [k for k, v in checkpoint.items() if not (v.shape == kept[k].shape and torch.equal(v, kept[k]))]
    if changed:
        fail(title, "loading changed the checkpoint's own tensors in place", [_names(changed)],
             hint="the caller's checkpoint must stay as it was: build new tensors (`t.exp()`, not `t.exp_()`)",
             devices=where)
    source = _versions(checkpoint)
    _same_computation(title, where, yours, _record(theirs, example, device), example, device,
                      f"with {label}'s checkpoint ({source}) loaded")
    return (f"{type_name(yours)} loads the checkpoint of {label} ({source}) with strict=True and computes what it "
            "computed (outputs and input gradients, train and eval)"), None


# --- a parametrized model's state, as plain tensors ---------------------------------------------------

def _parametrized(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(plain key, module, tensor name) for every parametrized tensor, such as ('0.weight', layer, 'weight')."""
    return [(f"{name}.{tensor}" if name else tensor, module, tensor)
            for name, module in model.named_modules() if parametrize.is_parametrized(module)
            for tensor in module.parametrizations]


def _originals(module: nn.Module, tensor: str) -> dict[str, torch.Tensor]:
    found = {}
    for key, value in module.parametrizations[tensor].named_parameters():
        found[f"parametrizations.{tensor}.{key}"] = value
    return found


_DEEPCOPY = ("copy.deepcopy(model) shares each parametrized layer's class with the original, and "
             "remove_parametrizations on the copy deletes the property from that shared class, so the original "
             "can no longer compute it: build the plain dict from the model's tensors instead (getattr(module, name) "
             "computes the weight), without removing anything")


def _model_left_alone(title, where, model, before_modules, computed, before_state, output_before, example, device):
    __tracebackhide__ = True
    for key, module, tensor in computed:
        if not parametrize.is_parametrized(module, tensor):
            fail(title, f"plain_state_dict removed the parametrization of `{key}` from the model itself",
                 hint="the model must keep training as it is: work on tensors taken from it, not on the model",
                 devices=where)
        if not isinstance(getattr(type(module), tensor, None), property):
            fail(title, f"after plain_state_dict, the model's `{key.rpartition('.')[0] or 'model'}` can no longer "
                        f"compute `{tensor}`: its class lost the `{tensor}` property", hint=_DEEPCOPY, devices=where)
    if [id(m) for m in model.modules()] != before_modules:
        fail(title, "plain_state_dict changed which layers the model holds",
             hint="work on tensors taken from the model, not on the model", devices=where)
    now = model.state_dict()
    changed = [k for k, v in before_state.items() if k not in now or not torch.equal(now[k], v)]
    if changed:
        fail(title, "plain_state_dict changed the model's own tensors", [f"`{k}`" for k in changed[:4]],
             hint="read the model's tensors; never write into them (no copy_, no in-place operations)", devices=where)
    model.eval()
    with torch.no_grad():
        after = _outputs(model(*_inputs(example, device)))
    if not torch.equal(after, output_before):
        fail(title, "after plain_state_dict, the model computes something else", devices=where,
             hint="work on tensors taken from the model, not on the model")


@_check("plain state_dict")
def check_plain_state_dict(plain_state_dict, build, build_plain, example, *, parts=("loads", "model"), device):
    """``plain_state_dict(model)`` for a parametrized ``build()``: parts "loads": ``build_plain()`` (the same model,
    never parametrized) loads the result with strict=True, each parametrized tensor under its plain name holding
    the value the model computes, and then computes what the parametrized model computes; "model": the
    parametrized model keeps its parametrizations, tensors and outputs, and every tensor returned is detached."""
    __tracebackhide__ = True
    title, where = "plain state_dict", str(device)
    model = _build(build, device, title)
    _as_trained(model, device)
    computed = _parametrized(model)
    if not computed:
        raise ValueError("check_plain_state_dict: the model has no parametrization to take apart")
    # what the model computes, taken now (a copy: a train-mode call moves BatchNorm's statistics)
    truth = _record(copy.deepcopy(model), example, device) if "loads" in parts else None
    before_modules = [id(m) for m in model.modules()]
    before_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    values = {key: getattr(module, tensor).detach().clone() for key, module, tensor in computed}
    originals = {key: {name: t.detach().clone() for name, t in _originals(module, tensor).items()}
                 for key, module, tensor in computed}
    model.eval()
    with torch.no_grad():
        output_before = _outputs(model(*_inputs(example, device)))
    try:
        result = plain_state_dict(model)
    except Exception as error:  # the student's function: report any failure
        fail(title, f"plain_state_dict(model) raised {describe_error(error)}", hint=explain_error(error),
             devices=where)
    wrong = _not_a_state_dict(result) if result is not None else ("returned None", "return the dict you built")
    if wrong:
        fail(title, f"plain_state_dict(model) {wrong[0]}", hint=wrong[1], devices=where)
    if "model" in parts:
        _model_left_alone(title, where, model, before_modules, computed, before_state, output_before, example,
                          device)
        attached = [(k, v) for k, v in result.items() if v.requires_grad or v.grad_fn is not None]
        if attached:
            fail(title, "tensors in your dict are still attached to autograd",
                 [f"`{k}`: grad_fn={type(v.grad_fn).__name__ if v.grad_fn is not None else None}, "
                  f"requires_grad={v.requires_grad}" for k, v in attached[:4]],
                 hint="a state_dict holds plain tensors, as model.state_dict() does: .detach() what you compute "
                      "(a tensor attached to the graph keeps the model's graph alive and is trained through)",
                 devices=where)
    if "loads" in parts:
        _plain_loads(title, where, result, computed, values, originals, before_state, build_plain, truth, example,
                     device)
    label = _plain_name(model)
    done = []
    if "loads" in parts:
        done.append(f"the plain {label} loads it with strict=True and computes what the parametrized one does")
    if "model" in parts:
        done.append("the model keeps its parametrizations; every tensor is detached")
    return f"{plural(len(computed), 'parametrized tensor')} as plain ones: " + "; ".join(done), None


def _plain_name(model: nn.Module) -> str:
    """nn.Linear for a parametrized nn.Linear (whose class is ParametrizedLinear)."""
    cls = parametrize.type_before_parametrizations(model)
    return f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn") else cls.__name__


def _plain_loads(title, where, result, computed, values, originals, before_state, build_plain, truth, example, device):
    __tracebackhide__ = True
    leftover = [k for k in result if "parametrizations" in k.split(".")]
    if leftover:
        fail(title, "your dict still holds the parametrized model's own keys", [_names(leftover, 4)],
             hint="a plain model has no `parametrizations` submodule: each parametrized tensor appears under its "
                  "plain name (such as `0.weight`), holding the value the model computes", devices=where)
    empty_parts = [k for k in result if "" in k.split(".")]
    if empty_parts:
        fail(title, "some keys of your dict have an empty part", [_names(empty_parts, 4)],
             hint="a name is the module's name, a dot, the tensor's name; the model itself is named '', so its own "
                  "tensors take no dot in front (`weight`, not `.weight`)", devices=where)
    plain = _build(build_plain, device, title)
    lines = state_dict_mismatch(plain, result)
    if lines:
        fail(title, f"the plain {type_name(plain)} cannot load your dict with strict=True", lines,
             hint="every key of the plain model's state_dict, nothing else: the parametrized tensors under their plain "
                  "names, every other entry as model.state_dict() has it", devices=where)
    for key, _, _ in computed:
        got = result[key].detach()
        if _close(got, values[key]):
            continue
        raw = [name for name, t in originals[key].items() if t.shape == got.shape and _close(got, t)]
        if raw:
            fail(title, f"`{key}` holds the raw `{key.rpartition('.')[0] + '.' if '.' in key else ''}{raw[0]}`, not "
                        f"the `{key.rpartition('.')[2]}` the model computes from it",
                 hint="the model computes its weight from the `original` tensors on every access: store that "
                      "computed value, getattr(module, name)", devices=where)
        fail(title, f"`{key}` is not the tensor the model computes", _difference(key, got, values[key]),
             hint="store getattr(module, name): the value the model uses in forward", devices=where)
    for key, value in before_state.items():
        if key in result and not _close(result[key].detach(), value):
            fail(title, f"`{key}` differs from model.state_dict()'s", _difference(key, result[key], value),
                 hint="keep every tensor that is not parametrized as model.state_dict() holds it", devices=where)
    try:
        plain.load_state_dict(result)
    except Exception as error:  # a shape the mismatch lines above did not foresee
        fail(title, f"the plain model's load_state_dict raised {describe_error(error)}", hint=explain_error(error),
             devices=where)
    _same_computation(title, where, plain, truth, example, device, "with your dict loaded into the plain model")


# --- a model built on the meta device, materialised --------------------------------------------------

@contextlib.contextmanager
def _uninitialised_shows():
    """torch.empty (and to_empty) fill new memory with NaN (floats) or the largest integer while deterministic
    algorithms are on, so that memory nobody initialised cannot pass for values. (The debug mode "warn" is
    use_deterministic_algorithms(True, warn_only=True) without its import of torch._inductor, 8 s.)"""
    mode, fill = torch.get_deterministic_debug_mode(), torch.utils.deterministic.fill_uninitialized_memory
    torch.set_deterministic_debug_mode("warn")
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.set_deterministic_debug_mode(mode)


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    found = dict(model.named_parameters())
    found |= dict(model.named_buffers())
    return found


def _uninitialised(t: torch.Tensor) -> bool:
    if t.is_floating_point():
        return bool(torch.isnan(t).any())
    if t.dtype != torch.bool:
        return bool((t == torch.iinfo(t.dtype).max).any())
    return False


_META_HINT = ("a model built on the meta device has shapes but no data: model.to_empty(device=device) allocates "
              "memory for every tensor (uninitialised), then reset_parameters() on each module that has one fills it "
              "as the constructor did")
_REFERENCES = 4  # fresh models built to learn what each tensor's initialisation looks like


def _initialisation_problems(yours: dict, fresh: list[dict]) -> list[str]:
    """Tensors that do not look like a fresh model's: a different constant where torch's is deterministic, values
    outside the range or far from the spread of a fresh model's random draws, or one value repeated."""
    problems = []
    for name, t in yours.items():
        if not t.numel():
            continue
        samples = [f[name].detach().double().cpu() for f in fresh]
        got = t.detach().double().cpu()
        if all(torch.equal(samples[0], s) for s in samples[1:]):
            # deterministic: the same values (within rounding: a table computed on a GPU differs in the last bits)
            if got.shape != samples[0].shape or not torch.allclose(got, samples[0], rtol=1e-5, atol=1e-6):
                problems.append(f"`{name}` is {_few(got)}; a fresh model's is {_few(samples[0])}")
            continue
        pooled = torch.cat([s.flatten() for s in samples])
        limit = 1.5 * pooled.abs().max().item()
        spread, fresh_spread = got.std().item() if got.numel() > 1 else 0.0, pooled.std().item()
        if got.numel() > 1 and spread == 0:
            problems.append(f"`{name}` holds one value repeated ({got.flatten()[0].item():.4g}); a fresh model draws "
                            f"random values (spread {fresh_spread:.3g})")
        elif got.abs().max().item() > limit:
            problems.append(f"`{name}` reaches {got.abs().max().item():.3g}; a fresh model's stays within "
                            f"±{pooled.abs().max().item():.3g}")
        elif got.numel() >= 64 and not 0.5 <= spread / fresh_spread <= 2:
            problems.append(f"`{name}` has spread {spread:.3g}; a fresh model's is {fresh_spread:.3g}")
    return problems


def _names(names: list[str], limit: int = 8) -> str:
    """"`a`, `b`, `c` and 2 more": many names on one line."""
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _few(t: torch.Tensor) -> str:
    flat = t.flatten()
    shown = ", ".join(f"{v:.4g}" for v in flat[:4].tolist())
    return f"[{shown}{', ...' if flat.numel() > 4 else ''}]"


@_check("materializes")
def check_materializes(materialize, build, example, *, device):
    """``materialize(model, device)``, given ``build()`` made under ``torch.device('meta')``, returns the model on
    ``device`` with every parameter and buffer initialised as a freshly built model's: the same values where torch
    initialises deterministically, random draws of the same range and spread elsewhere; and it runs."""
    __tracebackhide__ = True
    title, where = "materializes", str(device)
    fresh = []
    for k in range(_REFERENCES):
        torch.manual_seed(SEED + 20 + k)
        fresh.append(_named_tensors(_build(build, device, title)))
    torch.manual_seed(SEED)
    with torch.device("meta"):
        model = _build(build, torch.device("meta"), title)
    label = type_name(model)
    with _uninitialised_shows():
        try:
            result = materialize(model, device)
        except Exception as error:  # the student's function: report any failure
            fail(title, f"materialize(model, {where!r}) raised {describe_error(error)}", hint=explain_error(error),
                 devices=where)
    if not isinstance(result, nn.Module):
        fail(title, f"materialize(model, device) returned {type(result).__name__}, not the model",
             hint="return the model (model.to_empty(...) returns it too)", devices=where)
    if result is not model:
        fail(title, f"materialize(model, device) returned another {type_name(result)}, not the model it was given",
             hint="materialise the model you are given, in place (to_empty works in place and returns it): a new "
                  "model would lose whatever the caller set up on this one", devices=where)
    tensors = _named_tensors(result)
    on_meta = [n for n, t in tensors.items() if t.is_meta]
    if on_meta:
        fail(title, f"after materialize, {plural(len(on_meta), 'tensor')} of {label} {'is' if len(on_meta) == 1 else 'are'}"
                    " still on the meta device", [_names(on_meta)], hint=_META_HINT, devices=where)
    elsewhere = [f"`{n}` is on {t.device}" for n, t in tensors.items() if t.device.type != device.type]
    if elsewhere:
        fail(title, f"after materialize, some tensors are not on {where}", elsewhere[:4],
             hint="to_empty(device=device): use the device you are given", devices=where)
    missing = sorted(set(fresh[0]) - set(tensors))
    if missing or sorted(tensors) != sorted(fresh[0]):
        fail(title, f"after materialize, {label} holds other tensors than a fresh one",
             [f"`{n}` is missing" for n in missing[:4]], hint="materialise the model you are given; do not rebuild "
             "or replace its layers", devices=where)
    empty = [n for n, t in tensors.items() if _uninitialised(t)]
    if empty:
        fail(title, f"after materialize, {plural(len(empty), 'tensor')} still {'holds' if len(empty) == 1 else 'hold'} "
                    "uninitialised memory (the grader has torch fill such memory with NaN, or the largest integer)",
             [_names(empty)],
             hint="to_empty allocates memory without initialising it; after it, call reset_parameters() on every "
                  "module that has one (model.modules() walks them all, nested ones included): parameters and "
                  "buffers alike", devices=where)
    kinds = [n for n, t in tensors.items() if isinstance(fresh[0][n], nn.Parameter) != isinstance(t, nn.Parameter)
             or fresh[0][n].requires_grad != t.requires_grad or fresh[0][n].dtype != t.dtype]
    if kinds:
        fail(title, "after materialize, some tensors are not what a fresh model holds",
             [f"`{n}`: {type(tensors[n]).__name__} {tensors[n].dtype} requires_grad={tensors[n].requires_grad}; a "
              f"fresh model's: {type(fresh[0][n]).__name__} {fresh[0][n].dtype} "
              f"requires_grad={fresh[0][n].requires_grad}" for n in kinds[:4]],
             hint="keep the model's own tensors and their dtypes: to_empty, then initialise them in place",
             devices=where)
    problems = _initialisation_problems(tensors, fresh)
    if problems:
        fail(title, f"after materialize, {label} is not initialised as a fresh {label}", problems[:4],
             hint="initialise each layer as its constructor does: reset_parameters() on every module that has one, "
                  "after to_empty (not before: to_empty throws away whatever the meta tensors were given)",
             devices=where)
    result.eval()
    with torch.no_grad():
        out = _outputs(_forward(result, _inputs(example, device), title, where))
    if not torch.isfinite(out).all():
        fail(title, "the materialised model's output holds NaN or Inf", hint=_META_HINT, devices=where)
    return (f"{label} built on meta: materialize gives its {plural(len(tensors), 'tensor')} on {device.type}, "
            "initialised as a fresh model's, and it runs"), None
