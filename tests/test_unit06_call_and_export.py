"""Unit 06, `__call__` and export: the broken models and checkpoints are rejected with the right hint, their demo
cells print that diagnosis, the fixes pass; check_call_pipeline names the first difference of wrong pipelines
(always_call hooks run twice included), check_checkpoint_round_trip the usual mistakes of save/load functions (a
tensor step included), check_loads_state_dict renames and shape mismatches, check_key_upgrade renaming functions
that touch other keys or their input. Exports are slow (about a second each, several on the first), so each one
here is needed."""

import os
import subprocess
import sys

import nbformat
import pytest

from grader.checks.report import GraderError
import torch
from torch import nn
from torch.nn.modules import module as torch_module

from conftest import ROOT, printed_by, rejected, run_cells
from grader import (check_call_pipeline, check_checkpoint_round_trip, check_export_agrees, check_key_upgrade,
                    check_loads_state_dict, check_matches_reference, check_same_function)
from grader.checks.state_dict_keys import renamed_prefixes

pytestmark = pytest.mark.device

NOTEBOOK = "solutions/06_call_and_export/call_and_export.ipynb"
MLP = (lambda: nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10)))  # noqa: E731
EXAMPLE = (8, 20)


@pytest.fixture(scope="module")
def nb():
    """The assignment's own cells: the setup, the reference answers and the broken models."""
    return run_cells(NOTEBOOK, "setup", "pipeline_answer", "checkpoint_answer", "rename_broken", "rename_answer",
                     "export_broken", "export_answer")


def global_hooks() -> list[int]:
    return [len(d) for d in (torch_module._global_forward_pre_hooks, torch_module._global_forward_hooks,
                             torch_module._global_forward_hooks_with_kwargs,
                             torch_module._global_forward_hooks_always_called,
                             torch_module._global_backward_pre_hooks, torch_module._global_backward_hooks)]


# --- Part A: the call pipeline, against wrong pipelines made from the reference ------------------------

def variant(nb, *edits):
    """The reference call_module with each (old, new) replacement made exactly once."""
    cells = nbformat.read(ROOT / NOTEBOOK, as_version=4).cells
    code = next(c.source for c in cells if c.get("id") == "pipeline-answer")
    for old, new in edits:
        assert code.count(old) == 1, f"the reference no longer contains {old!r}: update this test"
        code = code.replace(old, new)
    namespace = dict(nb)
    exec(compile(code, "variant", "exec"), namespace)
    return namespace["call_module"]


def test_reference_pipeline_passes_every_part_and_leaves_no_hook(nb, capsys):
    before = global_hooks()
    check_call_pipeline(nb["call_module"], MLP, EXAMPLE)
    out, err = capsys.readouterr()
    assert ("✓ call pipeline: call_module matches module(...) with 28 hooks (forward, kwargs, always_call, backward)"
            in out)
    assert err == "" and global_hooks() == before


WRONG_PIPELINES = {
    "forward hooks before forward": (
        [("        result = module.forward(*args, **kwargs)\n", ""),
         ("        if bw:\n            result = bw.setup_output_hook(result)",
          "        result = module.forward(*args, **kwargs)\n"
          "        if bw:\n            result = bw.setup_output_hook(result)")],
        ("forward",), ["call_module ran global forward hook `global_post` before forward()",
                       "torch: global pre-hook `global_pre` → pre-hook `pre_first`",
                       "then raised TypeError: unsupported operand", "call module.forward(*args, **kwargs) once, "
                       "after every pre-hook"]),
    "module pre-hooks skipped": (
        [("(*torch_module._global_forward_pre_hooks.items(), *module._forward_pre_hooks.items())",
          "torch_module._global_forward_pre_hooks.items()")],
        ("forward",), ["call_module never ran pre-hook `pre_first`", "run every hook in module._forward_pre_hooks"]),
    "global pre-hooks skipped": (
        [("(*torch_module._global_forward_pre_hooks.items(), *module._forward_pre_hooks.items())",
          "module._forward_pre_hooks.items()")],
        ("forward",), ["call_module never ran global pre-hook `global_pre`", "_global_forward_pre_hooks"]),
    "global forward hooks after the module's": (
        [("(*torch_module._global_forward_hooks.items(), *module._forward_hooks.items()):\n            ran",
          "(*module._forward_hooks.items(), *torch_module._global_forward_hooks.items()):\n            ran")],
        ("forward",), ["call_module ran forward hook `post_shift` before global forward hook `global_post`"]),
    "a single value from a pre-hook not wrapped": (
        [("args = new if isinstance(new, tuple) else (new,)", "args = new")],
        ("forward",), ["raised TypeError: Probe.forward() takes 2 positional arguments",
                       "a pre-hook that returns a single value (not a tuple) replaces args with (value,)"]),
    "forward hook return values ignored": (
        [("            if new is not None:\n                result = new\n        if bw", "        if bw")],
        ("forward",), ["forward hook `post_look` got other output than torch gives it",
                       "a forward hook that returns something replaces the output"]),
    "kwargs hooks called without kwargs": (
        [("            if hook_id in module._forward_pre_hooks_with_kwargs:", "            if False:")],
        ("kwargs",), ["call_module(module, x, scale=0.5) raised TypeError: pre_kwargs() missing 1 required "
                      "positional argument: 'kwargs'", "hook(module, args, kwargs)",
                      "module._forward_pre_hooks_with_kwargs"]),
    "global kwargs flags ignored": (
        [("{**torch_module._global_forward_hooks_with_kwargs, **module._forward_hooks_with_kwargs}",
          "module._forward_hooks_with_kwargs")],
        ("kwargs",), ["global_kwargs() missing 1 required positional argument: 'output'",
                      "_global_forward_hooks_with_kwargs"]),
    "kwargs not passed to forward": (
        [("result = module.forward(*args, **kwargs)", "result = module.forward(*args)")],
        ("kwargs",), ["forward() got other kwargs than torch gives it", "with_kwargs=True"]),
    "always_call not honoured": (
        [("            if hook_id in always and hook_id not in ran:", "            if False:")],
        ("always_call",), ["call_module never ran global forward hook `global_always`",
                           "registered with always_call=True", "then re-raise"]),
    "every forward hook run after an error": (
        [("            if hook_id in always and hook_id not in ran:", "            if hook_id not in ran:")],
        ("always_call",), ["call_module ran forward hook `post_plain`, which torch does not run here"]),
    "always_call hooks called without kwargs": (
        [("                    if hook_id in module._forward_hooks_with_kwargs:\n"
          "                        new = hook(module, args, kwargs, result)\n"
          "                    else:\n"
          "                        new = hook(module, args, result)",
          "                    new = hook(module, args, result)")],
        ("always_call",), ["call_module never ran forward hook `post_always_kwargs`",
                           "as hook(module, args, kwargs, result)"]),
    "always_call hooks run again after a forward hook raised": (
        [("            if hook_id in always and hook_id not in ran:", "            if hook_id in always:")],
        ("always_call",), ["call_module ran global forward hook `global_always` a second time, after forward hook "
                           "`post_raise`; torch runs it once", "yours: forward() → global forward hook `global_always` "
                           "→ forward hook `post_always` → forward hook `post_raise` → global forward hook",
                           "skip the ones that already ran"]),
    "always_call hooks called only when forward raises": (
        [("        result = module.forward(*args, **kwargs)\n",
          "        try:\n            result = module.forward(*args, **kwargs)\n        except Exception:\n"
          "            ran.add(None)\n            raise\n"),
         ("            if hook_id in always and hook_id not in ran:",
          "            if hook_id in always and hook_id not in ran and None in ran:")],
        ("always_call",), ["call_module never ran forward hook `post_always_late`",
                           "torch: forward() → global forward hook `global_always` → forward hook `post_always` → "
                           "forward hook `post_raise` → forward hook `post_always_late`", "when forward or a hook raises"]),
    "always_call results dropped after an error": (
        [("                    if new is not None:\n                        result = new\n                except Exception:",
          "                except Exception:")],
        ("always_call",), ["with call_module, forward hook `post_always_last` got other output than torch gives it",
                           "`post_always_late`: registered with always_call=True, after `post_raise`; returns output * 3",
                           "after an error, always_call hooks get the result so far"]),
    "the error swallowed": (
        [("        raise\n", "        return result\n")],
        ("always_call",), ["forward raised an error, but call_module returned normally", "re-raise"]),
    "no backward wiring": (
        [("        bw = BackwardHook(module, full, backward_pre) if (full or backward_pre) else None",
          "        bw = None")],
        ("backward",), ["call_module never ran global backward pre-hook `global_backward_pre`",
                        "torch.utils.hooks.BackwardHook(module, full, pre)"]),
    "output wrapped before the forward hooks": (
        [("        result = module.forward(*args, **kwargs)\n",
          "        result = module.forward(*args, **kwargs)\n        if bw:\n"
          "            result = bw.setup_output_hook(result)\n            bw = None\n")],
        ("backward",), ["global backward pre-hook `global_backward_pre` got other grad_output",
                        "setup_output_hook(result) after the forward hooks"]),
    "input wrapped before the pre-hooks": (
        [("        bw = BackwardHook(module, full, backward_pre) if (full or backward_pre) else None\n"
          "        if bw:\n            args = bw.setup_input_hook(args)\n", ""),
         ("        backward_pre = module._get_backward_pre_hooks()\n",
          "        backward_pre = module._get_backward_pre_hooks()\n"
          "        bw = BackwardHook(module, full, backward_pre) if (full or backward_pre) else None\n"
          "        if bw:\n            args = bw.setup_input_hook(args)\n")],
        ("backward",), ["backward hook `backward_hook` got other grad_input", "after the pre-hooks have run"]),
}


@pytest.mark.parametrize("mistake", list(WRONG_PIPELINES))
def test_wrong_pipeline_is_rejected_with_its_first_difference(nb, mistake, capsys):
    edits, parts, fragments = WRONG_PIPELINES[mistake]
    before = global_hooks()
    rejected(lambda: check_call_pipeline(variant(nb, *edits), MLP, EXAMPLE, parts=parts), "✗ call pipeline",
             *fragments)
    assert global_hooks() == before, "the check left hooks registered after a failure"
    assert capsys.readouterr().err == ""


def test_a_pipeline_that_calls_the_module_is_refused(nb):
    def delegate(module, *args, **kwargs):
        return module(*args, **kwargs)

    rejected(lambda: check_call_pipeline(delegate, MLP, EXAMPLE, parts=("forward",)),
             "delegate calls module(...) itself", "call module.forward(*args, **kwargs)")


def test_forward_alone_skips_hooks_and_only_hooks(nb):
    def just_forward(module, *args, **kwargs):
        return module.forward(*args, **kwargs)

    check_call_pipeline(just_forward, MLP, EXAMPLE, parts=())  # no hooks: forward() is the whole call
    rejected(lambda: check_call_pipeline(just_forward, MLP, EXAMPLE, parts=("forward",)),
             "just_forward never ran global pre-hook `global_pre`", "yours: forward()")


def test_pipeline_stub_is_reported_as_the_stub():
    def call_module(module, *args, **kwargs):
        raise NotImplementedError("replace this line with your code")

    rejected(lambda: check_call_pipeline(call_module, MLP, EXAMPLE, parts=("forward",)),
             "call_module raised NotImplementedError", "replace that line with your code")


# --- Part B: checkpoints ---------------------------------------------------------------------------------

BN_MLP = (lambda: nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)))  # noqa: E731


def test_reference_checkpoint_round_trip_passes(nb, capsys):
    check_checkpoint_round_trip(nb["save_checkpoint"], nb["load_checkpoint"], BN_MLP, EXAMPLE)
    check_checkpoint_round_trip(nb["save_checkpoint"], nb["load_checkpoint"], lambda: nn.Linear(3, 2), (4, 3),
                                optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), steps=3)
    out, err = capsys.readouterr()
    assert out.count("✓ checkpoint round trip") == 2 and "the Adam state and step 2" in out and err == ""


def _load(path, model, optimizer):
    checkpoint = torch.load(path)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return checkpoint["step"]


def _save(path, model, optimizer, step):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, path)


def test_whole_model_pickle_is_refused_by_weights_only_and_the_demo_shows_it(nb):
    demo = printed_by(NOTEBOOK, nb, "checkpoint_demo")
    assert "UnpicklingError: Weights only load failed." in demo
    assert "Unsupported global: GLOBAL torch.nn.modules.container.Sequential was not an allowed global" in demo
    assert ("✗ checkpoint round trip [cpu]: torch.load(path, weights_only=True) refuses what save_whole_model wrote"
            in demo)
    assert "the checkpoint holds the model object itself" in demo and "since torch 2.6" in demo


def test_optimizer_state_not_saved_is_rejected(nb):
    def save(path, model, optimizer, step):
        torch.save({"model": model.state_dict(), "step": step}, path)

    def load(path, model, optimizer):
        checkpoint = torch.load(path)
        model.load_state_dict(checkpoint["model"])
        return checkpoint["step"]

    rejected(lambda: check_checkpoint_round_trip(save, load, BN_MLP, EXAMPLE),
             "after loading, the optimizer is not the one saved", "the restored optimizer has no state",
             "`exp_avg`, `exp_avg_sq`, `step` for 6 parameters", "optimizer.load_state_dict(checkpoint['optimizer'])")


def test_step_lost_is_rejected(nb):
    def save(path, model, optimizer, step):
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)

    def load(path, model, optimizer):
        checkpoint = torch.load(path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])

    rejected(lambda: check_checkpoint_round_trip(save, load, BN_MLP, EXAMPLE),
             "load(path, model, optimizer) returned None, not the step", "return checkpoint['step']")

    def load_zero(path, model, optimizer):
        load(path, model, optimizer)
        return 0

    rejected(lambda: check_checkpoint_round_trip(save, load_zero, BN_MLP, EXAMPLE),
             "load_zero(...) returned 0; the step saved was 2")


def test_weights_only_false_is_rejected(nb):
    def load(path, model, optimizer):
        checkpoint = torch.load(path, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        return checkpoint["step"]

    rejected(lambda: check_checkpoint_round_trip(_save, load, BN_MLP, EXAMPLE),
             "load calls torch.load(..., weights_only=False)", "arbitrary code")


def test_other_unsafe_objects_are_named(nb):
    import numpy as np

    def save_optimizer_object(path, model, optimizer, step):
        torch.save({"model": model.state_dict(), "optimizer": optimizer, "step": step}, path)

    def save_numpy_step(path, model, optimizer, step):
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": np.int64(step)}, path)

    rejected(lambda: check_checkpoint_round_trip(save_optimizer_object, _load, BN_MLP, EXAMPLE),
             "the optimizer object itself (class `torch.optim.adam.Adam`)")
    rejected(lambda: check_checkpoint_round_trip(save_numpy_step, _load, BN_MLP, EXAMPLE),
             "a NumPy value", "int(step)")


def test_a_load_into_a_new_model_or_a_partial_state_is_rejected(nb):
    def load_rebound(path, model, optimizer):
        model = BN_MLP()  # a new local model: the caller's stays as it was
        return _load(path, model, optimizer)

    def save_parameters_only(path, model, optimizer, step):
        torch.save({"model": dict(model.named_parameters()), "optimizer": optimizer.state_dict(), "step": step}, path)

    def load_loose(path, model, optimizer):
        checkpoint = torch.load(path)
        model.load_state_dict(checkpoint["model"], strict=False)
        optimizer.load_state_dict(checkpoint["optimizer"])
        return checkpoint["step"]

    rejected(lambda: check_checkpoint_round_trip(_save, load_rebound, BN_MLP, EXAMPLE),
             "the model's tensors are not the ones saved", "`0.weight` was not restored", "rebinding a local name")
    rejected(lambda: check_checkpoint_round_trip(save_parameters_only, load_loose, BN_MLP, EXAMPLE),
             "`1.running_mean` was not restored", "`1.num_batches_tracked` was not restored")


# --- Part C: a renamed attribute ---------------------------------------------------------------------------

RENAME = ["✗ loads state_dict [cpu]: Classifier cannot load this state_dict with strict=True",
          "the checkpoint has `fc.*` but the model registers `head.*` (2 keys): an attribute was renamed; "
          "rename it back, or remap the keys before load_state_dict", "strict=False would only hide the problem"]


def test_renamed_attribute_is_rejected_and_the_demo_shows_both_messages(nb):
    old = nb["OldClassifier"](20, 32, 10).state_dict()
    rejected(lambda: check_loads_state_dict(lambda: nb["Classifier"](20, 32, 10), old, example=EXAMPLE), *RENAME)
    demo = printed_by(NOTEBOOK, nb, "rename_demo")
    assert 'Missing key(s) in state_dict: "head.weight", "head.bias".' in demo
    assert 'Unexpected key(s) in state_dict: "fc.weight", "fc.bias".' in demo
    assert all(fragment in demo for fragment in RENAME)


def test_rename_fix_passes(nb, capsys):
    upgrade, old = nb["upgrade_state_dict"], nb["OldClassifier"](20, 32, 10).state_dict()
    check_loads_state_dict(lambda: nb["Classifier"](20, 32, 10), upgrade(old), example=EXAMPLE)
    check_same_function(lambda: nb["Classifier"](20, 32, 10), lambda: nb["OldClassifier"](20, 32, 10),
                        example=EXAMPLE, convert=upgrade)
    out, err = capsys.readouterr()
    assert "✓ loads state_dict: Classifier takes all 4 tensors with strict=True and runs [cpu]" in out and err == ""


def test_an_upgrade_that_swaps_the_wrong_keys_is_rejected(nb):
    def swap_everything(state_dict):  # renames `fc` but also mangles unrelated keys
        return {key.replace("fc", "head").replace("body", "trunk"): value for key, value in state_dict.items()}

    old = nb["OldClassifier"](20, 32, 10).state_dict()
    rejected(lambda: check_loads_state_dict(lambda: nb["Classifier"](20, 32, 10), swap_everything(old)),
             "the checkpoint has `trunk.*` but the model registers `body.*` (2 keys)")


class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width))
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.body(x))


def test_state_dict_mismatches_are_named(capsys):
    saved = Net().state_dict()
    rejected(lambda: check_loads_state_dict(lambda: Net(5), saved),
             "`body.0.weight`: the checkpoint holds shape [4, 3], the model registers [5, 3]",
             "strict=False does not help: a shape mismatch raises anyway")
    rejected(lambda: check_loads_state_dict(Net, {f"module.{k}": v for k, v in saved.items()}),
             "the checkpoint's 9 keys start with `module.`", "DataParallel", "k.removeprefix('module.')")
    rejected(lambda: check_loads_state_dict(Net, {f"_orig_mod.{k}": v for k, v in saved.items()}),
             "torch.compile", "model._orig_mod.state_dict()")
    partial = {k: v for k, v in saved.items() if k != "body.1.running_mean"} | {"extra": torch.zeros(1)}
    rejected(lambda: check_loads_state_dict(Net, partial),
             "missing from the checkpoint: `body.1.running_mean`", "unexpected in the checkpoint: `extra`")
    rejected(lambda: check_loads_state_dict(Net, {"model": saved, "step": 3}),
             "this looks like a whole checkpoint (keys `model`, `step`)", "checkpoint['model']")
    rejected(lambda: check_loads_state_dict(Net, Net()), "got a model (Net), not a state_dict")
    check_loads_state_dict(Net, saved, example=(6, 3))
    out, err = capsys.readouterr()
    assert "✓ loads state_dict: Net takes all 9 tensors with strict=True and runs [cpu]" in out and err == ""


def test_renamed_prefixes_pairs_whole_groups():
    assert renamed_prefixes(["encoder.0.weight", "encoder.0.bias", "encoder.2.weight", "fc.weight"],
                            ["body.0.weight", "body.0.bias", "body.2.weight", "head.weight"]) == \
        [("encoder.", "body.", 3), ("fc.", "head.", 1)]
    assert renamed_prefixes(["a.weight", "a.bias"], ["b.weight"]) == []  # not the same keys under each prefix


# --- Part D: a branch on the batch size, and torch.export -------------------------------------------------

BRANCH = ["✗ export agrees with eager [cpu]: the exported program disagrees with eager BatchCentred at 1 batch size "
          "(of 1, 2, 3, 8)", "batch 1: largest gap", "on the example batch of 4",
          "export assumes a dynamic size is at least 2, so `x.shape[0] > 1` is True without any guard",
          "torch.cond(pred, true_fn, false_fn, (h,))"]


def test_batch_size_branch_is_rejected_and_the_demo_prints_the_diagnosis(nb, capsys):
    demo = printed_by(NOTEBOOK, nb, "export_demo")
    assert all(fragment in demo for fragment in BRANCH), demo
    assert capsys.readouterr().err == ""


def test_cond_fix_passes(nb, capsys):
    fixed, broken = (lambda: nb["CondCentred"](20, 10)), (lambda: nb["BatchCentred"](20, 10))  # noqa: E731
    check_export_agrees(fixed, example=(4, 20), batch_sizes=(1, 2, 3, 8))
    check_same_function(fixed, broken, example=(1, 20))
    check_same_function(fixed, broken, example=(6, 20))
    out, err = capsys.readouterr()
    assert out.count("✓") == 3 and err == ""


def test_a_fix_that_drops_the_branch_exports_but_computes_something_else(nb):
    class AlwaysCentred(nb["BatchCentred"]):
        def forward(self, x):
            h = self.fc(x)
            return h - h.mean(dim=0, keepdim=True)

    rejected(lambda: check_same_function(lambda: AlwaysCentred(20, 10), lambda: nb["BatchCentred"](20, 10),
                                         example=(1, 20)),
             "your model's eval-mode output differs from BatchCentred's")


def test_cond_mistakes_get_their_own_hints(nb):
    class LenPredicate(nb["BatchCentred"]):
        def forward(self, x):
            h = self.fc(x)
            return torch.cond(len(x) > 1, lambda h: h - h.mean(dim=0, keepdim=True), lambda h: h.clone(), (h,))

    class ReturnsInput(nb["BatchCentred"]):
        def forward(self, x):
            h = self.fc(x)
            return torch.cond(x.shape[0] > 1, lambda h: h - h.mean(dim=0, keepdim=True), lambda h: h, (h,))

    class ValueBranch(nb["BatchCentred"]):
        def forward(self, x):
            h = self.fc(x)
            if h.sum() > 0:
                return h
            return -h

    rejected(lambda: check_export_agrees(lambda: LenPredicate(4, 3), (4, 4), (1, 2)),
             "forward's code fixed the batch size to 4 (Constraints violated)", "not len(x)",
             "(torch warned: UserWarning: Pred is a Python constant.")
    rejected(lambda: check_export_agrees(lambda: ReturnsInput(4, 3), (4, 4), (1, 2)),
             "torch.cond refused a branch that returns its input", "return h.clone(), not h")
    rejected(lambda: check_export_agrees(lambda: ValueBranch(4, 3), (4, 4), (1, 2)),
             "torch.export.export stopped at a branch on tensor values", "if h.sum() > 0")


def test_a_static_guard_is_reported_as_refused_batch_sizes(nb):
    class NeedsThree(nb["BatchCentred"]):
        def forward(self, x):
            h = self.fc(x)
            if x.shape[0] > 2:
                h = h - h.mean(dim=0, keepdim=True)
            return h

    rejected(lambda: check_export_agrees(lambda: NeedsThree(4, 3), (4, 4), (1, 2)),
             "forward's code works only for some batch sizes (guard 3 <= L['x'].size()[0]")


def test_export_check_needs_an_example_batch_of_two():
    """A test that gives the export check a batch of one is the test's mistake: a grader error, never a verdict."""
    with pytest.raises(GraderError, match="ValueError: .*at least 2"):
        check_export_agrees(lambda: nn.Linear(2, 2), (1, 2), (1, 2))


def test_what_torch_accepts_is_accepted(capsys):
    """An old BatchNorm checkpoint without `num_batches_tracked` loads with strict=True: BatchNorm's own loading code
    fills it in. The check lets torch decide, and names keys only when torch refuses."""
    saved = {k: v for k, v in Net().state_dict().items() if k != "body.1.num_batches_tracked"}
    check_loads_state_dict(Net, saved, example=(6, 3))
    assert "✓ loads state_dict: Net takes all 8 tensors with strict=True and runs" in capsys.readouterr().out


def test_a_cast_checkpoint_loads_and_a_diverged_one_is_named():
    as_float64 = {k: v.double() for k, v in Net().state_dict().items()}
    check_loads_state_dict(Net, as_float64, example=(6, 3))  # load_state_dict casts to the model's dtype
    diverged = Net().state_dict()
    diverged["head.weight"][0, 0] = float("nan")
    rejected(lambda: check_loads_state_dict(Net, diverged, example=(6, 3)),
             "the loaded model's output holds NaN or Inf", "saved after training diverged")


# --- issue 13 and 16: what the checks used to let through, and what the hints used to claim --------------------

def test_a_tensor_or_float_step_is_rejected(nb):
    def save_tensor_step(path, model, optimizer, step):
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": torch.tensor(step)}, path)

    def save_float_step(path, model, optimizer, step):
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": float(step)}, path)

    rejected(lambda: check_checkpoint_round_trip(save_tensor_step, _load, BN_MLP, EXAMPLE),
             "_load(...) returned tensor(2), a tensor; the step is the int 2", "'step': step", "json.dumps")
    message = rejected(lambda: check_checkpoint_round_trip(save_float_step, _load, BN_MLP, EXAMPLE),
                       "returned 2.0, a float; the step is the int 2")
    assert "tensor" not in message


def test_the_weights_only_hint_says_what_the_allowlist_holds():
    """Issue 16: weights_only=True loads more than tensors, dicts, lists, numbers and strings, and add_safe_globals
    admits any class; the hint says so, and torch 2.13 does what it says."""
    import collections
    import io

    from grader.checks.saving import _SAFE_HINT

    def round_trip(value):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        buffer.seek(0)
        return torch.load(buffer)

    for value in (collections.OrderedDict(a=1), {1, 2}, (1, 2), torch.Size([2, 3]), torch.device("cpu"),
                  torch.float16):
        assert round_trip(value) == value
    with pytest.raises(Exception, match="Unsupported global"):
        round_trip(Net())
    with torch.serialization.safe_globals([Net, *{type(m) for m in Net().modules()}]):
        assert isinstance(round_trip(Net()), Net)
    for claim in ("OrderedDicts", "sets", "torch.Size", "torch.device", "dtypes", "add_safe_globals"):
        assert claim in _SAFE_HINT
    assert "refuses any other class" not in _SAFE_HINT


RENAMED_TIE = """
from grader.checks.state_dict_keys import renamed_prefixes
print(renamed_prefixes(["a.x", "a.y"], ["c.x", "c.y", "b.x", "b.y"]), renamed_prefixes(["q.w"], ["z.w", "m.w", "k.w"]))
"""


def test_renamed_prefixes_breaks_ties_the_same_way_whatever_the_hash_seed():
    """Issue 16: ties were broken by set order, which PYTHONHASHSEED changes."""
    answers = set()
    for seed in ("0", "1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run([sys.executable, "-c", RENAMED_TIE], capture_output=True, text=True, env=env,
                              cwd=ROOT, check=True)
        answers.add(done.stdout.strip())
    assert answers == {"[('a.', 'b.', 2)] [('q.', 'k.', 1)]"}


def upgrade(rule):
    def upgrade_state_dict(state_dict):
        return {rule(k): v for k, v in state_dict.items()}
    return upgrade_state_dict


def renamed(key):  # the exercise's rule, as the hidden test writes it
    return "head." + key[len("fc."):] if key.startswith("fc.") else key


KEYS = ["body.0.weight", "fc.weight", "body.fc.weight", "fc.cls.bias", "fcx.weight", "fc.bias"]


def test_key_upgrade_accepts_the_rule_in_any_style(nb, capsys):
    check_key_upgrade(nb["upgrade_state_dict"], renamed, KEYS)
    check_key_upgrade(upgrade(lambda k: "head." + k.removeprefix("fc.") if k.startswith("fc.") else k), renamed, KEYS)
    out, err = capsys.readouterr()
    assert out.count("✓ key upgrade: upgrade_state_dict renames 3 keys and keeps 3 other keys as they are, values "
                     "untouched, input unchanged [cpu]") == 2 and err == ""


@pytest.mark.parametrize("rule, fragments", [
    (lambda k: k.replace("fc", "head"),
     ["`body.fc.weight` must stay as it is; yours renamed it to `body.head.weight`", "str.replace changes the name"]),
    (lambda k: k.replace("fc.", "head."), ["`body.fc.weight` must stay as it is", "dot included"]),
    (lambda k: "head." + k.lstrip("fc.") if k.startswith("fc.") else k,
     ["`fc.cls.bias` must become `head.cls.bias`; yours made it `head.ls.bias`", "str.lstrip(chars)",
      "key.removeprefix(prefix)"]),
    (lambda k: "head" + k[2:] if k.startswith("fc") else k,
     ["`fcx.weight` must stay as it is; yours renamed it to `headx.weight`", "a test without the dot"]),
    (lambda k: "head." + k[2:] if k.startswith("fc.") else k,
     ["`fc.weight` must become `head.weight`; yours made it `head..weight`", "new + key[len(old):]"]),
])
def test_key_upgrades_that_touch_other_keys_are_named(rule, fragments, capsys):
    rejected(lambda: check_key_upgrade(upgrade(rule), renamed, KEYS), "✗ key upgrade", *fragments)
    assert capsys.readouterr().err == ""


def test_key_upgrades_that_change_their_input_or_the_values_are_named():
    def in_place(state_dict):
        for key in [k for k in state_dict if k.startswith("fc.")]:
            state_dict["head." + key[3:]] = state_dict.pop(key)
        return state_dict

    def keeps_old(state_dict):
        return dict(state_dict) | {renamed(k): v for k, v in state_dict.items() if k.startswith("fc.")}

    def casts(state_dict):
        return {renamed(k): v.float() for k, v in state_dict.items()}

    def as_list(state_dict):
        return [(renamed(k), v) for k, v in state_dict.items()]

    rejected(lambda: check_key_upgrade(in_place, renamed, KEYS), "in_place changed the state_dict it was given",
             "`fc.weight` was removed from it", "`head.weight` was added to it", "build and return a new dict")
    rejected(lambda: check_key_upgrade(keeps_old, renamed, KEYS),
             "yours keeps the old key `fc.weight` beside its new one `head.weight`", "each entry appears once")
    rejected(lambda: check_key_upgrade(casts, renamed, KEYS),
             "`head.weight` (from `fc.weight`) holds another value: a tensor of dtype float32 and shape [2], not a "
             "tensor of dtype float64 and shape [2]", "keep every value as it is")
    rejected(lambda: check_key_upgrade(as_list, renamed, KEYS), "returned list, not a dict")


def test_key_upgrade_stub_and_reference_errors():
    def upgrade_state_dict(state_dict):
        raise NotImplementedError("replace this line with your code")

    rejected(lambda: check_key_upgrade(upgrade_state_dict, renamed, KEYS), "raised NotImplementedError",
             "replace that line with your code")
    with pytest.raises(GraderError, match="check_key_upgrade \\(the reference\\)"):
        check_key_upgrade(upgrade(renamed), lambda key: key.missing, KEYS)


def test_loading_a_converted_checkpoint_goes_through_the_check(nb):
    """Issue 15: the test cell called upgrade_state_dict itself, so the stub showed a bare NotImplementedError."""
    def upgrade_state_dict(state_dict):
        raise NotImplementedError("replace this line with your code")

    def in_place(state_dict):
        state_dict["head.weight"] = state_dict.pop("fc.weight")
        state_dict["head.bias"] = state_dict.pop("fc.bias")
        return state_dict

    old = nb["OldClassifier"](20, 32, 10).state_dict()
    classifier = lambda: nb["Classifier"](20, 32, 10)  # noqa: E731
    rejected(lambda: check_loads_state_dict(classifier, old, convert=upgrade_state_dict),
             "upgrade_state_dict(state_dict) raised NotImplementedError", "replace that line with your code")
    rejected(lambda: check_loads_state_dict(classifier, dict(old), convert=in_place),
             "in_place changed the state_dict it was given", "`fc.weight` was removed from it")
    check_loads_state_dict(classifier, old, example=EXAMPLE, convert=nb["upgrade_state_dict"])


def test_cond_branches_may_differ_in_size_but_not_in_dtype_or_dimensions(capfd):
    """Issue 16: torch 2.13 export accepts torch.cond branches of different sizes; it refuses a dtype or a
    number of dimensions that differ, and a different number of outputs. A refused export logs nothing to stderr."""
    class Sizes(nn.Module):
        def forward(self, x):
            return torch.cond(x.shape[0] > 1, lambda h: h.sum(0, keepdim=True), lambda h: h.clone(), (x,))

    class Dtypes(nn.Module):
        def forward(self, x):
            return torch.cond(x.shape[0] > 1, lambda h: h.double(), lambda h: h.clone(), (x,))

    class Dims(nn.Module):
        def forward(self, x):
            return torch.cond(x.shape[0] > 1, lambda h: h.sum(0), lambda h: h.clone(), (x,))

    program = torch.export.export(Sizes(), (torch.randn(4, 3),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert program.module()(torch.randn(5, 3)).shape == (1, 3)
    capfd.readouterr()
    rejected(lambda: check_export_agrees(Dtypes, (4, 3), (1, 2)),
             "torch.cond refused branches that do not match: the two branches return tensors with a different dtype "
             "(torch.float64 and torch.float32)", "the sizes may differ")
    rejected(lambda: check_export_agrees(Dims, (4, 3), (1, 2)), "with a different number of dimensions (1 and 2)",
             "the same dtype and number of dimensions")
    assert capfd.readouterr().err == ""


def test_cond_centred_mistakes_that_export_fine_fail_against_the_reference(nb):
    """Issue 13: a detached linear layer and a predicate off by one passed every test."""
    def centred_reference(state, x):
        h = torch.nn.functional.linear(x, state["fc.weight"], state["fc.bias"])
        return h - h.mean(dim=0, keepdim=True) if x.shape[0] > 1 else h

    class Detached(nb["BatchCentred"]):
        def forward(self, x):
            h = self.fc(x).detach()
            return torch.cond(x.shape[0] > 1, lambda h: h - h.mean(dim=0, keepdim=True), lambda h: h.clone(), (h,))

    class FromThree(nb["BatchCentred"]):
        def forward(self, x):
            h = self.fc(x)
            return torch.cond(x.shape[0] > 2, lambda h: h - h.mean(dim=0, keepdim=True), lambda h: h.clone(), (h,))

    rejected(lambda: check_matches_reference(lambda: Detached(7, 3), centred_reference, (3, 7)),
             "your output carries no autograd graph", "`.detach()`")
    check_same_function(lambda: FromThree(7, 3), lambda: nb["BatchCentred"](7, 3), example=(3, 7))
    rejected(lambda: check_matches_reference(lambda: FromThree(7, 3), centred_reference, (2, 7)),
             "your train-mode `output` differs from the exercise's (input of shape [2, 7])")
    check_matches_reference(lambda: nb["CondCentred"](7, 3), centred_reference, (2, 7))
