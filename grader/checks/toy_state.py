"""Stages 3, 5 and 6 of the toy module (unit 02): `state_dict`, `load_state_dict`, `to(dtype)` and `zero_grad`,
compared with torch's on the same tree filled with the same values.
"""

import collections.abc

import torch
from torch import nn

from .diagnose import describe_error
from .report import fail, plural
from .runner import SEED
from .toy_reach import _call, _explain, _locate_modules, _method, _path, _random_like, _tensor
from .toy_registry import _name_problems

def _fill(located, ref, generator, title, where) -> dict:
    """Write the same random values into both trees, by torch's state_dict names."""
    __tracebackhide__ = True
    values = {}
    with torch.no_grad():
        for key, truth in ref.state_dict(keep_vars=True).items():
            value = _random_like(truth, generator)
            truth.copy_(value)
            _tensor(located, key, title, where).copy_(value)
            values[key] = value
    return values


def _state_dict(toy, ref, title, where):
    """state_dict(): torch's keys in torch's order, detached values that share memory with the tensors."""
    __tracebackhide__ = True
    located = _locate_modules(toy, ref, title, where)
    _fill(located, ref, torch.Generator().manual_seed(SEED + 20), title, where)
    truth = ref.state_dict()
    mine = _call(toy, "state_dict", title=title, where=where)
    if not isinstance(mine, collections.abc.Mapping):
        fail(title, f"state_dict() returned a {type(mine).__name__}; torch returns a dict of name -> tensor",
             hint="return a dict (stage 3)", devices=where)
    yours, theirs = list(mine), list(truth)
    flat = [n for n, _ in ref.named_parameters()] + [n for n, _ in ref.named_buffers()]
    if yours != theirs:
        items = list(ref.state_dict(keep_vars=True).items())
        repeats = [k for i, (k, t) in enumerate(items) if any(t is u for _, u in items[:i])]
        missing = [k for k in theirs if k not in mine]
        if repeats and set(missing) == set(repeats) and set(yours) <= set(theirs):
            fail(title, f"state_dict() leaves out {', '.join(f'`{k}`' for k in missing)}",
                 hint="state_dict() does not skip repeats: a module registered under two names appears under both, "
                      "each with its own keys (named_parameters() yields it once): recurse through _modules (stage 3)",
                 devices=where)
        if yours == flat and flat != theirs:
            fail(title, f"state_dict() keys are {yours}; torch's are {theirs}",
                 hint="yours lists every parameter, then every buffer; torch goes module by module: a module's own "
                      "parameters, then its own buffers, then each child's state_dict (stage 3)", devices=where)
        buffers = {n for n, _ in ref.named_buffers()}
        if missing and set(missing) <= buffers and set(yours) <= set(theirs):
            fail(title, f"state_dict() leaves out {plural(len(missing), 'buffer')}: " + ", ".join(f"`{k}`" for k in missing),
                 hint="state_dict() saves parameters and buffers: a checkpoint without the running statistics or "
                      "counters cannot restore the model (stage 3)", devices=where)
        found = _name_problems("state_dict()", yours, theirs, "key")
        fail(title, found[0], hint=found[1] + " (stage 3)", devices=where)
    for key in theirs:
        value, tensor = mine[key], _tensor(located, key, title, where)
        if not isinstance(value, torch.Tensor):
            fail(title, f"state_dict()[{key!r}] is a {type(value).__name__}, not a tensor", devices=where,
                 hint="map each name to its tensor (stage 3)")
        if value.requires_grad:
            fail(title, f"state_dict()[{key!r}] requires grad; torch's value is `tensor.detach()`",
                 hint="store tensor.detach(): the same memory, without autograd (stage 3)", devices=where)
        if value.dtype != truth[key].dtype or not torch.equal(value.cpu(), truth[key].cpu()):
            fail(title, f"state_dict()[{key!r}] holds other values than `{_path(*key.rpartition('.')[::2])}`",
                 hint="map each name to the tensor registered under it (stage 3)", devices=where)
        if value.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
            fail(title, f"state_dict()[{key!r}] is a copy; torch's shares memory with the tensor",
                 hint="use tensor.detach(), not .clone(): torch's state_dict() is a view of the live tensors "
                      "(which is why a saved-aside state_dict changes as training goes on) (stage 3)", devices=where)
    return f"{plural(len(theirs), 'key')} in torch's order, detached values that share memory", len(theirs)


def _load(toy, ref, title, where):
    """load_state_dict(): in-place copies, missing and unexpected reports, strict errors, size mismatches."""
    __tracebackhide__ = True
    located = _locate_modules(toy, ref, title, where)
    generator = torch.Generator().manual_seed(SEED + 30)
    _fill(located, ref, generator, title, where)
    keys = list(ref.state_dict())
    before = {k: _tensor(located, k, title, where) for k in keys}
    # New values, as a checkpoint of this tree would hold them: a tensor shared under two keys (tied weights) has
    # the same values under both, so the order in which the keys are copied does not matter.
    drawn, source = {}, {}
    for key, tensor in ref.state_dict(keep_vars=True).items():
        if id(tensor) not in drawn:
            drawn[id(tensor)] = _random_like(tensor, generator)
        source[key] = drawn[id(tensor)]

    # 1. A complete state_dict: everything copied in place, nothing reported.
    result = _load_call(toy, dict(source), True, title, where)
    _compare_report(result, ref.load_state_dict(dict(source)), "a complete state_dict", title, where)
    loaded = ref.state_dict()
    for key in keys:
        now = _tensor(located, key, title, where)
        if now is not before[key]:
            fail(title, f"load_state_dict replaced the tensor at `{key}` with a new object",
                 hint="torch copies into the existing tensor (tensor.copy_(value) under torch.no_grad()), so an "
                      "optimizer built before the load still holds the model's parameters (stage 3)", devices=where)
        if not torch.equal(now.detach().cpu(), loaded[key].cpu()):
            fail(title, f"after load_state_dict, `{key}` does not hold the loaded value",
                 hint="copy each value into the tensor of the same name (stage 3)", devices=where)

    # 2. Keys missing: reported with strict=False, an error with strict=True.
    if keys:
        dropped = [keys[0]] + ([keys[-1]] if len(keys) > 1 else [])
        partial = {k: v for k, v in source.items() if k not in dropped}
        result = _load_call(toy, dict(partial), False, title, where)
        _compare_report(result, ref.load_state_dict(dict(partial), strict=False),
                        f"a state_dict without {', '.join(repr(k) for k in dropped)} (strict=False)", title, where)
        _strict_raises(toy, ref, dict(partial), dropped, "missing", title, where)

    # 3. Keys unexpected: reported with strict=False, an error with strict=True.
    children = [n for n, _ in ref.named_children()]
    extra = ["no_such_key"] + ([f"{children[0]}.no_such_key"] if children else [])
    bigger = dict(source) | {k: torch.zeros(1) for k in extra}
    result = _load_call(toy, dict(bigger), False, title, where)
    _compare_report(result, ref.load_state_dict(dict(bigger), strict=False),
                    f"a state_dict with extra keys {', '.join(repr(k) for k in extra)} (strict=False)", title, where)
    _strict_raises(toy, ref, dict(bigger), extra, "unexpected", title, where)

    # 4. A shape that does not fit: an error even with strict=False.
    if keys:
        key = keys[0]
        wrong = dict(source) | {key: torch.zeros(source[key].numel() + 1, dtype=source[key].dtype)}
        try:
            ref.load_state_dict(dict(wrong), strict=False)
            torch_message = None
        except RuntimeError as error:
            torch_message = str(error).splitlines()[-1].strip()
        raised = _load_raises(toy, dict(wrong), False, title, where)
        if raised is None:
            fail(title, f"load_state_dict(strict=False) accepted `{key}` with shape {list(wrong[key].shape)}, where "
                        f"the model's is {list(source[key].shape)}",
                 [f"torch raises RuntimeError: {torch_message}"],
                 hint="a size mismatch is an error even with strict=False: check shapes before copying (stage 3)",
                 devices=where)
        if key not in str(raised):
            fail(title, f"your size-mismatch error does not name `{key}`: {describe_error(raised)}",
                 [f"torch says: {torch_message}"], hint="name the key whose shape does not fit (stage 3)", devices=where)
    return "in-place copies; missing and unexpected keys reported as torch does; strict and size errors raised", len(keys)


def _load_call(toy, state_dict, strict, title, where):
    __tracebackhide__ = True
    return _call(toy, "load_state_dict", state_dict, strict=strict, title=title, where=where,
                 shown=f"load_state_dict(..., strict={strict})")


def _load_raises(toy, state_dict, strict, title, where):
    """The exception load_state_dict raised, or None."""
    __tracebackhide__ = True
    method = _method(toy, "load_state_dict", title, where)
    try:
        method(state_dict, strict=strict)
    except Exception as error:
        if not isinstance(error, RuntimeError):
            fail(title, f"load_state_dict(..., strict={strict}) raised {describe_error(error)}; torch raises RuntimeError",
                 hint="collect every problem first, then raise one RuntimeError that names them all (stage 3)"
                 if not isinstance(error, NotImplementedError) else _explain(error), devices=where)
        return error
    return None


def _compare_report(result, truth, case, title, where):
    __tracebackhide__ = True
    try:
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except Exception:
        fail(title, f"load_state_dict on {case} returned {result!r}",
             hint="return IncompatibleKeys(missing_keys, unexpected_keys), as torch does (stage 3)", devices=where)
    if missing != list(truth.missing_keys):
        found = _name_problems("missing_keys", missing, list(truth.missing_keys), "key")
        fail(title, f"on {case}, missing_keys is {missing}; torch reports {list(truth.missing_keys)}",
             hint=("missing keys are the model's state_dict keys absent from the given dict, in the model's "
                   "state_dict order" + (f": {found[1]}" if found and "order" in found[0] else "") + " (stage 3)"),
             devices=where)
    if sorted(unexpected) != sorted(truth.unexpected_keys) or len(unexpected) != len(truth.unexpected_keys):
        fail(title, f"on {case}, unexpected_keys is {unexpected}; torch reports {list(truth.unexpected_keys)}",
             hint="unexpected keys are the given dict's keys that the model's state_dict does not have; "
                  "report them even with strict=False (stage 3)", devices=where)


def _strict_raises(toy, ref, state_dict, keys, kind, title, where):
    __tracebackhide__ = True
    try:
        ref.load_state_dict(dict(state_dict))
        torch_message = "nothing"
    except RuntimeError as error:
        torch_message = " ".join(str(error).split())
    raised = _load_raises(toy, dict(state_dict), True, title, where)
    if raised is None:
        fail(title, f"load_state_dict(strict=True) accepted a state_dict with {plural(len(keys), kind + ' key')} "
                    f"({', '.join(repr(k) for k in keys)})",
             [f"torch raises RuntimeError: {torch_message}"],
             hint="with strict=True, missing or unexpected keys are an error: raise RuntimeError naming them; "
                  "strict=False only reports them (stage 3)", devices=where)
    unnamed = [k for k in keys if k not in str(raised)]
    if unnamed:
        fail(title, f"your strict error does not name the {kind} key {unnamed[0]!r}: {describe_error(raised)}",
             [f"torch says: {torch_message}"], hint="name every missing and unexpected key (stage 3)", devices=where)



def _to(toy, ref, title, where, dtype=torch.float64):
    """to(dtype): floating tensors cast, integer ones kept, Parameters kept as the same objects; returns the module."""
    __tracebackhide__ = True
    located = _locate_modules(toy, ref, title, where)
    names = [n for n, _ in ref.named_parameters()] + [n for n, _ in ref.named_buffers()]
    params = {n for n, _ in ref.named_parameters()}
    before = {n: _tensor(located, n, title, where) for n in names}
    values = {n: t.detach().clone() for n, t in before.items()}
    grads = {n: before[n].requires_grad for n in names}
    result = _call(toy, "to", dtype, title=title, where=where, shown=f"to({dtype})")
    if result is not toy:
        fail(title, f"to({dtype}) returned {result!r}; torch returns the module itself",
             hint="return self, so that `model = model.to(dtype)` keeps working (stage 5)", devices=where)
    ref.to(dtype)
    truths = dict(ref.named_parameters()) | dict(ref.named_buffers())
    for name in names:
        now = _tensor(located, name, title, where)
        kind = "parameter" if name in params else "buffer"
        if now.dtype != truths[name].dtype:
            if not values[name].is_floating_point():
                hint = (".to(dtype) casts only floating-point tensors; integer buffers such as counters keep "
                        "their dtype")
            elif now.dtype == values[name].dtype:
                hint = (f"cast every floating-point {kind} of every module"
                        + (": buffers too" if kind == "buffer" else ""))
            else:
                hint = "cast to the dtype you are given"
            fail(title, f"after to({dtype}), {kind} `{name}` is {now.dtype} in yours, {truths[name].dtype} in torch",
                 hint=hint + " (stage 5)", devices=where)
        if name in params:
            if now is not before[name]:
                fail(title, f"to({dtype}) replaced the Parameter at `{name}` with a new object",
                     hint="torch keeps the same Parameter and swaps its data (p.data = p.data.to(dtype)), so an "
                          "optimizer built before .to() still holds the model's parameters (stage 5)", devices=where)
            if not isinstance(now, nn.Parameter) or now.requires_grad != grads[name]:
                fail(title, f"after to({dtype}), `{name}` is no longer a trainable nn.Parameter",
                     hint="change p.data, not p itself (stage 5)", devices=where)
        if not torch.equal(now.detach().cpu(), values[name].to(now.dtype).cpu()):
            fail(title, f"after to({dtype}), `{name}` holds other values", hint="cast the values, nothing else (stage 5)",
                 devices=where)
    return f"{plural(len(names), 'tensor')} cast like torch's, Parameters kept", len(names)


def _zero_grad(toy, ref, title, where):
    """zero_grad(): every .grad set to None; zero_grad(set_to_none=False): zeroed in place."""
    __tracebackhide__ = True
    located = _locate_modules(toy, ref, title, where)
    names = [n for n, _ in ref.named_parameters()]
    generator = torch.Generator().manual_seed(SEED + 40)
    without = names[-1:]  # one parameter never gets a gradient

    def give_grads():
        kept = {}
        for name in names:
            mine, theirs = _tensor(located, name, title, where), ref.get_parameter(name)
            grad = None if name in without else _random_like(theirs, generator)
            mine.grad = None if grad is None else grad.clone()
            theirs.grad = None if grad is None else grad.clone()
            kept[name] = mine.grad
        return kept

    for args, shown in (((), "zero_grad()"), ((False,), "zero_grad(set_to_none=False)")):
        kept = give_grads()
        kwargs = {"set_to_none": args[0]} if args else {}
        _call(toy, "zero_grad", title=title, where=where, shown=shown, **kwargs)
        ref.zero_grad(**kwargs)
        for name in names:
            mine, theirs = _tensor(located, name, title, where).grad, ref.get_parameter(name).grad
            if theirs is None and mine is not None:
                filled = isinstance(mine, torch.Tensor) and not mine.any()
                if name in without:
                    hint = "a parameter that had no gradient keeps None"
                elif filled:
                    hint = ("torch's zero_grad() sets .grad to None by default (set_to_none=True): it uses less "
                            "memory, and torch's optimizers skip a parameter whose grad is None")
                else:
                    hint = "reach every parameter of the tree: self.parameters()"
                fail(title, f"after {shown}, `{name}.grad` is "
                            f"{'a tensor of zeros' if filled else 'still a tensor'} in yours, None in torch",
                     hint=hint + " (stage 6)", devices=where)
            if theirs is not None:
                if mine is None:
                    fail(title, f"after {shown}, `{name}.grad` is None in yours; torch zeroes it in place",
                         hint="with set_to_none=False, keep the tensor and fill it with zeros: p.grad.zero_() (stage 6)",
                         devices=where)
                if mine.any():
                    fail(title, f"after {shown}, `{name}.grad` still holds non-zero values",
                         hint="reach every parameter of the tree: self.parameters() (stage 6)", devices=where)
                if mine is not kept[name]:
                    fail(title, f"after {shown}, `{name}.grad` is a new tensor; torch zeroes the old one in place",
                         hint="use p.grad.zero_() rather than assigning a new tensor (stage 6)", devices=where)
    return f"{plural(len(names), 'gradient')} set to None, or zeroed in place with set_to_none=False", len(names)

