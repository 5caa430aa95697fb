"""A state_dict's keys: why a checkpoint does not fit a model, and functions that rename keys (unit 06).

* ``state_dict_mismatch(model, state_dict)``: one line per problem that stops ``load_state_dict``: renames
  (a whole group of keys under another prefix, a wrapper's prefix), keys only one side has, shape mismatches.
* ``check_key_upgrade(upgrade, reference, keys)``: ``upgrade(state_dict)`` returns a new dict whose keys are
  ``reference(key)`` (the rule, written in the test) with every value kept, and leaves its input as it was.
  The check builds a checkpoint with the given keys and values of several dtypes.
"""

import os
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .runner import _check
from .diagnose import describe_error, explain_error, type_name
from .report import GraderError, fail, plural

# Prefixes that wrappers put in front of every key, and what to do about each.
_WRAPPERS = {
    "module.": ("nn.DataParallel or DistributedDataParallel", "model.module"),
    "_orig_mod.": ("torch.compile", "model._orig_mod"),
}


# --- describing a state_dict that does not fit -------------------------------------------------

def _dotted_prefixes(key: str) -> list[str]:
    """'a.b.weight' -> ['', 'a.', 'a.b.']: every place a rename can start."""
    parts = key.split(".")
    return [".".join(parts[:i]) + "." if i else "" for i in range(len(parts))]


def _rests(keys, prefix: str) -> frozenset:
    return frozenset(k[len(prefix):] for k in keys if k.startswith(prefix))


def renamed_prefixes(unexpected, missing) -> list[tuple[str, str, int]]:
    """(checkpoint prefix, model prefix, keys) for each rename that explains a whole group of keys.

    ``fc.weight, fc.bias`` unexpected and ``head.weight, head.bias`` missing pair up as ('fc.', 'head.', 2):
    everything under the one prefix is exactly what is missing under the other. The largest groups
    are taken first, then the shortest prefixes, then the prefixes that sort first (so that the answer never
    depends on the order of a set); each key belongs to at most one rename.
    """
    unexpected, missing = set(unexpected), set(missing)
    found = []
    while unexpected and missing:
        best = None
        for old in sorted({p for k in unexpected for p in _dotted_prefixes(k)}):
            theirs = _rests(unexpected, old)
            for new in sorted({p for k in missing for p in _dotted_prefixes(k)}):
                if old == new or _rests(missing, new) != theirs:
                    continue
                rank = (len(theirs), -len(old) - len(new))
                if best is None or rank > best[0]:
                    best = (rank, old, new, theirs)
        if best is None:
            break
        _, old, new, rests = best
        unexpected -= {old + r for r in rests}
        missing -= {new + r for r in rests}
        found.append((old, new, len(rests)))
    return found


def _pattern(prefix: str) -> str:
    return f"`{prefix}*`" if prefix else "keys without a prefix"


def _rename_line(old: str, new: str, count: int) -> str:
    keys = plural(count, "key")
    if not new and old in _WRAPPERS:
        wrapper, inner = _WRAPPERS[old]
        return (f"the checkpoint's {keys} start with `{old}`, the model's do not: it was saved from a model wrapped "
                f"in {wrapper}; save the inner model ({inner}.state_dict()), or strip the prefix: "
                f"{{k.removeprefix({old!r}): v for k, v in state_dict.items()}}")
    if not old and new in _WRAPPERS:
        wrapper, inner = _WRAPPERS[new]
        return (f"the model's {keys} start with `{new}`, the checkpoint's do not: the model is wrapped in "
                f"{wrapper}; load into the inner model ({inner}.load_state_dict(...))")
    return (f"the checkpoint has {_pattern(old)} but the model registers {_pattern(new)} ({keys}): an attribute was "
            f"renamed; rename it back, or remap the keys before load_state_dict")


def _loose(keys) -> str:
    shown = ", ".join(f"`{k}`" for k in sorted(keys)[:6])
    return shown + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def state_dict_mismatch(model: nn.Module, state_dict: Mapping) -> list[str]:
    """One line per problem that stops ``model.load_state_dict(state_dict)`` (strict=True): renames, keys
    only one side has, shape mismatches. Empty when the keys and shapes fit."""
    mine = model.state_dict()
    missing = [k for k in mine if k not in state_dict]
    unexpected = [k for k in state_dict if k not in mine]
    lines, paired_old, paired_new = [], set(), set()
    for old, new, count in renamed_prefixes(unexpected, missing):
        lines.append(_rename_line(old, new, count))
        rests = _rests(unexpected, old) & _rests(missing, new)
        paired_old |= {old + r for r in rests}
        paired_new |= {new + r for r in rests}
    left_missing = [k for k in missing if k not in paired_new]
    left_unexpected = [k for k in unexpected if k not in paired_old]
    if left_missing:
        lines.append(f"missing from the checkpoint: {_loose(left_missing)} (the model registers "
                     f"{'it' if len(left_missing) == 1 else 'them'}, the checkpoint has no value for "
                     f"{'it' if len(left_missing) == 1 else 'them'})")
    if left_unexpected:
        lines.append(f"unexpected in the checkpoint: {_loose(left_unexpected)} (the model has no such "
                     f"{'parameter or buffer' if len(left_unexpected) == 1 else 'parameters or buffers'})")
    for key, value in state_dict.items():
        if key in mine and isinstance(value, torch.Tensor) and value.shape != mine[key].shape:
            lines.append(f"`{key}`: the checkpoint holds shape {list(value.shape)}, the model registers "
                         f"{list(mine[key].shape)}")
    return lines


def _mismatch_hint(lines: list[str]) -> str:
    shapes = any(": the checkpoint holds shape" in line for line in lines)
    keys = len(lines) > sum(": the checkpoint holds shape" in line for line in lines)
    parts = []
    if keys:
        parts.append("load_state_dict(strict=True) needs the same names on both sides: the names come from the "
                     "attributes in __init__ (print(list(model.state_dict())) beside the checkpoint's keys). "
                     "strict=False would only hide the problem: the missing tensors keep their random values")
    if shapes:
        parts.append("a shape mismatch means the model was built with other sizes than the saved one: build it "
                     "with the checkpoint's sizes (strict=False does not help: a shape mismatch raises anyway)")
    return "; ".join(parts)


def _not_a_state_dict(state_dict) -> tuple[str, str] | None:
    """(problem, hint) when ``state_dict`` is something else: a model, a whole checkpoint, a path."""
    if isinstance(state_dict, nn.Module):
        return (f"got a model ({type_name(state_dict)}), not a state_dict",
                "pass model.state_dict(): a dict from names to tensors")
    if isinstance(state_dict, (str, os.PathLike)):
        return ("got a path, not a state_dict", "load the file first: torch.load(path, weights_only=True)")
    if not isinstance(state_dict, Mapping):
        return (f"got {type(state_dict).__name__}, not a state_dict",
                "a state_dict is a dict from names (such as 'fc.weight') to tensors: model.state_dict()")
    nested = [k for k, v in state_dict.items() if isinstance(v, Mapping)]
    if nested:
        return (f"this looks like a whole checkpoint (keys {_loose(list(state_dict))}), not a model's state_dict",
                f"pass the model's part of it, such as checkpoint[{nested[0]!r}]")
    odd = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if odd:
        return (f"{_loose(odd)} {'is not a tensor' if len(odd) == 1 else 'are not tensors'}",
                "a model's state_dict maps every name to a tensor: build it with model.state_dict()")
    return None




# --- a function that renames keys ------------------------------------------------------------------------

_VALUE_DTYPES = (torch.float32, torch.float64, torch.int64, torch.bool, torch.float16)


def _checkpoint(keys, device) -> dict:
    """A state_dict with the given keys: each value distinct (its own shape), dtypes taken in turn."""
    generator = torch.Generator().manual_seed(7)
    made = {}
    for i, key in enumerate(keys):
        dtype = _VALUE_DTYPES[i % len(_VALUE_DTYPES)]
        values = torch.randn(i + 1, generator=generator) * 10
        made[key] = (values > 0 if dtype == torch.bool else values.to(dtype)).to(device)
    return made


def _same_value(a, b) -> bool:
    if a is b:
        return True
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
            and a.shape == b.shape and a.device == b.device and torch.equal(a, b))


def input_changes(name: str, before: list, given: Mapping, values: dict) -> list[str]:
    """What ``name`` changed in the dict it was given: ``before`` holds its (key, value) pairs from before the
    call, ``values`` a copy of each value."""
    now = dict(given.items())
    keys = [k for k, _ in before]
    lines = [f"`{k}` was removed from it" for k in keys if k not in now]
    lines += [f"`{k}` was added to it" for k in now if k not in values]
    lines += [f"`{k}` holds another value than before" for k, v in before
              if k in now and not (now[k] is v and _same_value(v, values[k]))]
    if not lines and list(now) != keys:
        lines.append("its keys are in another order")
    return lines


def _lost_characters(expected: str, got: str) -> bool:
    """`head.ls.weight` for `head.cls.weight`: characters cut out of the key between a common start and end."""
    if len(got) >= len(expected):
        return False
    start = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), len(got))
    return expected.endswith(got[start:])


@_check("key upgrade")
def check_key_upgrade(upgrade: Callable, reference: Callable, keys, *, device):
    """``upgrade(state_dict)`` returns a new dict in which the value of each key ``k`` is under ``reference(k)``,
    unchanged, and nothing else; the dict it was given stays as it was (same keys, same values, same order).

    ``reference`` (key -> new key) is written in the test; ``keys`` are the keys of the checkpoint the check builds
    (values of several dtypes: float32, float64, int64, bool, float16)."""
    __tracebackhide__ = True
    title, where = "key upgrade", str(device)
    name = getattr(upgrade, "__name__", "upgrade")
    keys = list(keys)
    try:
        expected = {k: reference(k) for k in keys}
    except Exception as error:
        raise GraderError("check_key_upgrade (the reference)", error) from None
    saved = _checkpoint(keys, device)
    before, values = list(saved.items()), {k: v.clone() for k, v in saved.items()}
    try:
        result = upgrade(saved)
    except Exception as error:  # the student's function: report any failure
        fail(title, f"{name}(state_dict) raised {describe_error(error)}", hint=explain_error(error), devices=where)
    changed = input_changes(name, before, saved, values)
    if changed:
        fail(title, f"{name} changed the state_dict it was given", changed[:4],
             hint="build and return a new dict (for example a dict comprehension over state_dict.items()) and leave "
                  "the one you are given as it was: the caller may still need the old checkpoint", devices=where)
    if not isinstance(result, Mapping):
        fail(title, f"{name}(state_dict) returned {type(result).__name__}, not a dict",
             hint="return a dict that maps each (new) key to its tensor", devices=where)
    lines, renamed_too, cut, kept_old, changed_values = [], False, False, False, False
    for key in keys:
        want, value = expected[key], values[key]
        if want in result and _same_value(result[want], value):
            continue
        went = [k for k, v in result.items() if _same_value(v, value) and k != want]
        if want in result:
            source = next((k for k in keys if k != key and _same_value(result[want], values[k])), None)
            if source is not None:
                lines.append(f"`{want}` holds the value of `{source}`, not the value of `{key}`")
            else:
                changed_values = True
                lines.append(f"`{want}` (from `{key}`) holds another value: {_describe(result[want])}, not "
                             f"{_describe(value)}")
        elif went and want == key:
            renamed_too = True
            lines.append(f"`{key}` must stay as it is; yours renamed it to `{went[0]}`")
        elif went:
            cut = cut or _lost_characters(want, went[0])
            lines.append(f"`{key}` must become `{want}`; yours made it `{went[0]}`")
        else:
            lines.append(f"`{key}` is missing: it should be `{want}`")
    extra = [k for k in result if k not in expected.values()]
    for k in extra:
        if k in expected and _same_value(result[k], values[k]):
            kept_old = True
            lines.append(f"yours keeps the old key `{k}` beside its new one `{expected[k]}`")
        elif not any(f"yours made it `{k}`" in line or f"renamed it to `{k}`" in line for line in lines):
            lines.append(f"yours has `{k}`, which is none of the upgraded keys")
    if lines:
        fail(title, f"{name}(state_dict) does not give the upgraded keys "
                    f"({plural(len(lines), 'difference')} in {plural(len(keys), 'key')})", lines[:6],
             hint=_upgrade_hint(renamed_too, cut, kept_old, changed_values), devices=where)
    moved = sum(expected[k] != k for k in keys)
    return (f"{name} renames {plural(moved, 'key')} and keeps {plural(len(keys) - moved, 'other key')} as they are, "
            f"values untouched, input unchanged"), len(keys)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of dtype {str(value.dtype).removeprefix('torch.')} and shape {list(value.shape)}"
    return type(value).__name__


def _upgrade_hint(renamed_too: bool, cut: bool, kept_old: bool, changed_values: bool) -> str:
    if renamed_too:
        return ("change only the keys that start with the old prefix, dot included (key.startswith(...)), and only "
                "that start: str.replace changes the name wherever it appears in a key, and a test without the dot "
                "also matches longer names")
    if cut:
        return ("characters went missing after the prefix: str.lstrip(chars) and str.strip(chars) remove any of the "
                "given characters, as many as they find, not a prefix; use key.removeprefix(prefix) or "
                "key[len(prefix):]")
    if kept_old:
        return "each entry appears once, under its new key: do not keep the old key beside it"
    if changed_values:
        return "keep every value as it is: only the keys change (no cast, no copy of another tensor)"
    return "the new key is the new prefix followed by the rest of the old key: new + key[len(old):]"
