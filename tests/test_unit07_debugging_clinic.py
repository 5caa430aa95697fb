"""Unit 07, the debugging clinic: every patient is rejected by its own graded cells with the right hint, its
demo cell prints that diagnosis, the reference fixes pass, and grader.checks.training names the usual mistakes of
training-loop code."""

import contextlib
import io

import pytest

from grader.checks.report import GraderError
import torch
import torch.nn.functional as F
from torch import nn

from conftest import rejected, run_cells
from grader import (CheckFailed, check_counter, check_log, check_model, check_optimizer, check_predict,
                    check_same_function, check_trainable_count, check_training_step)

pytestmark = pytest.mark.device

NOTEBOOK = "solutions/07_debugging_clinic/debugging_clinic.ipynb"
KEYS = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11", "p12"]


@pytest.fixture(scope="module")
def nb():
    """The assignment's own cells: the setup, every broken patient and every reference fix."""
    return run_cells(NOTEBOOK, "setup", *(f"{k}_broken" for k in KEYS), *(f"{k}_answer" for k in KEYS))


def upgrade_checkpoint(state_dict):
    """Patient 9 as it stands: no conversion at all, the old checkpoint as it is."""
    return state_dict


def run_cell(nb, grade_id, **names) -> str:
    """Run one notebook cell in a copy of the namespace (with ``names`` rebound); return what it printed."""
    namespace = dict(nb, **names)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_cells(NOTEBOOK, grade_id, namespace=namespace)
    return printed.getvalue()


# (patient, broken name (or the broken function itself), the name its fix has, its graded cells,
#  fragments the demo cell prints, fragments with which each graded cell rejects the broken code)
PATIENTS = [
    ("p1", "Regressor", "FixedRegressor", ["test_p1_regressor"],
     ["cannot assign module before Module.__init__() call", "(in `__init__`, line 3)"],
     ["building the model raised AttributeError", "make `super().__init__()` the first line of __init__"]),
    ("p2", "ClippedMLP", "FixedClippedMLP", ["test_p2_clipped"],
     ["Can't call numpy() on Tensor that requires grad", "(in `forward`, line 10)"],
     ["✗ gradient flow", "forward calls .numpy(), which leaves autograd"]),
    ("p3", "LoggedMLP", "FixedLoggedMLP", ["test_p3_logged"],
     ["`encoder.0.weight` gets no gradient", "`encoder.0` runs, but its result is cut from the graph", ".detach()"],
     ["`encoder.0.bias` gets no gradient", "cut from the graph"]),
    ("p4", "LazyClassifier", "FixedClassifier", ["test_p4_classifier"],
     ["calling the model registers new parameters, so an optimizer built before it holds stale ones",
      "`head.weight` is a new tensor after forward"],
     ["the model has 1,728 trainable parameters; the exercise asks for 1,893",
      "`self.head` is None when the model is built", "missing from this count and from any optimizer"]),
    ("p5", "setup_finetune", "fixed_setup_finetune", ["test_p5_finetune"],
     ["`head` was created or replaced after the optimizer was built",
      "2 trainable tensors of the model are not in the optimizer: `head.weight` and `head.bias`",
      "the optimizer holds 2 tensors that the model does not have (shapes [10, 16], [10])"],
     ["`head` was created or replaced after the optimizer was built", "build the optimizer last"]),
    ("p6", "predict", "fixed_predict", ["test_p6_predict"],
     ["Expected more than 1 value per channel when training", "(in `predict`, line 8)"],
     ["Expected more than 1 value per channel when training", "call model.eval() before single-sample inference"]),
    ("p7", "ProbedMLP", "FixedProbedMLP", ["test_p7_probed"],
     ["calling the model leaves hooks behind: every call registers more, and none is removed",
      "`fc1` gains a forward hook on every call (3 after 3 calls, in `fc1._forward_hooks`)"],
     ["calling the model leaves hooks behind", "`fc2` gains a forward hook on every call", "handle.remove()"]),
    ("p8", "CausalMixer", "FixedCausalMixer", ["test_p8_mixer"],
     ["a plain tensor (shape [6, 6]) at `self.mask` is not registered", "self.register_buffer(...)"],
     ["a plain tensor (shape [6, 6]) at `self.mask` is not registered", "self.register_buffer(...)"]),
    ("p9", upgrade_checkpoint, "upgrade_checkpoint", ["test_p9_upgrade", "test_p9_every_checkpoint"],
     ["SentimentV2 cannot load this state_dict with strict=True",
      "the checkpoint has `encoder.1.*` but the model registers `backbone.2.*` (5 keys)",
      "the checkpoint has `encoder.0.*` but the model registers `backbone.1.*` (2 keys)",
      "the checkpoint has `classifier.*` but the model registers `heads.sentiment.*`"],
     ["your model cannot take upgrade_checkpoint(SentimentV1's state_dict): the names differ",
      "the checkpoint has `encoder.1.*` but the model registers `backbone.2.*`"]),
    ("p10", "train_step", "fixed_train_step", ["test_p10_train_step", "test_p10_train_step_modes"],
     ["gradients accumulate across steps", "the update at step 2 used the sum of the gradients of batches 1 to 2",
      "nothing clears it between steps"],
     ["gradients accumulate across steps", "call optimizer.zero_grad() in every step"]),
    ("p11", "count_trainable", "fixed_count_trainable", ["test_p11_counter"],
     ["count_trainable(SharedStack) returned 1,316, but torch counts 772 trainable parameters",
      "`stages.0.shared`, `stages.1.shared` and `stages.2.shared` are one nn.Linear (272 parameters)",
      "counted once per name, that is 544 extra"],
     ["are one nn.Linear", "counts a shared tensor once per name"]),
    ("p12", "NoisyMLP", "FixedNoisyMLP", ["test_p12_dropout"],
     ["two eval-mode calls on the same input give different outputs", "the model holds no nn.Dropout module",
      "a call in forward that model.eval() does not switch off"],
     ["✗ eval behaviour", "training=self.training"]),
]
IDS = [p[0] for p in PATIENTS]


def test_patient_9_has_one_best_pairing_of_renamed_keys(nb):
    """check_loads_state_dict pairs renamed prefixes greedily, best rank first; patient 9 is built so that no two
    candidate pairings share a rank, so its demo names the same renames whatever the order of iteration."""
    from grader.checks.saving import _dotted_prefixes, _rests

    old, new = nb["SentimentV1"](20, 32, 3).state_dict(), nb["SentimentV2"](20, 32, 3).state_dict()
    unexpected, missing = [k for k in old if k not in new], [k for k in new if k not in old]
    ranks = [(len(_rests(unexpected, o)), len(o) + len(n))
             for o in {p for k in unexpected for p in _dotted_prefixes(k)}
             for n in {p for k in missing for p in _dotted_prefixes(k)}
             if o != n and _rests(unexpected, o) == _rests(missing, n)]
    assert len(ranks) == len(set(ranks)) == 5


def test_every_patient_is_covered():
    assert [p[0] for p in PATIENTS] == KEYS
    assert len(KEYS) >= 10


@pytest.mark.parametrize("key, broken, fixed, cells, demo, graded", PATIENTS, ids=IDS)
def test_demo_cell_prints_the_diagnosis(nb, key, broken, fixed, cells, demo, graded, capsys):
    printed = run_cell(nb, f"{key}_demo")
    assert "✗" in printed, printed
    for fragment in demo:
        assert fragment in printed, f"missing {fragment!r} in:\n{printed}"
    assert capsys.readouterr().err == ""


# What each patient's fix is, in the words a hint would use: the diagnosis cell must not print it.
FIXES = {
    "p1": ["first line of __init__"], "p2": [".clamp(", "torch.clamp"], "p3": ["return h", "detach().mean()"],
    "p4": ["build it once in __init__", "in __init__"], "p5": ["build the optimizer last", "SGD(model.parameters()"],
    "p6": ["model.eval()", "torch.no_grad()", "inference_mode"], "p7": ["register a hook once", "handle.remove()"],
    "p8": ["persistent="], "p9": ["startswith", "def upgrade"], "p10": ["zero_grad"],
    "p11": ["id()", "remember which ones"], "p12": ["training=self.training", "self.training"],
}


@pytest.mark.parametrize("key", KEYS)
def test_demo_cell_shows_what_is_wrong_but_not_the_fix(nb, key):
    """Issue 13: a diagnosis cell names the symptom and where to look; finding the fix is the exercise."""
    printed = run_cell(nb, f"{key}_demo")
    assert "Hint:" not in printed, printed
    for fix in FIXES[key]:
        assert fix not in printed, f"the diagnosis of {key} prints the fix {fix!r}:\n{printed}"


def test_a_failure_s_diagnosis_is_its_message_without_the_hint():
    with pytest.raises(CheckFailed) as failure:
        check_counter(lambda model: 0, [nn.Linear(2, 2)])
    message = str(failure.value)
    assert "\nHint: " in message
    assert failure.value.diagnosis == message.split("\nHint: ")[0]


@pytest.mark.parametrize("key, broken, fixed, cells, demo, graded", PATIENTS, ids=IDS)
def test_graded_cells_reject_the_broken_code_with_the_right_hint(nb, key, broken, fixed, cells, demo, graded, capsys):
    """Each graded cell, run with the broken code under the fix's name, fails with the patient's hint."""
    for cell in cells:
        rejected(lambda: run_cell(nb, cell, **{fixed: nb[broken] if isinstance(broken, str) else broken}), *graded)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("key, broken, fixed, cells, demo, graded", PATIENTS, ids=IDS)
def test_graded_cells_pass_the_reference_fix(nb, key, broken, fixed, cells, demo, graded, capsys):
    for cell in cells:
        printed = run_cell(nb, cell)
        lines = printed.strip().splitlines()
        assert lines and all(line.startswith("✓ ") for line in lines), printed
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("key, broken, fixed, cells, demo, graded", PATIENTS, ids=IDS)
def test_graded_cells_reject_the_blank_stub(nb, key, broken, fixed, cells, demo, graded):
    def stub(*args, **kwargs):
        raise NotImplementedError("replace this line with your code")

    for cell in cells:
        with pytest.raises((CheckFailed, NotImplementedError)) as failure:
            run_cell(nb, cell, **{fixed: stub})
        if isinstance(failure.value, CheckFailed):
            assert "replace that line with your code" in str(failure.value)


# --- the fixes keep what the models compute ---------------------------------------------------------

def test_a_fix_that_drops_the_feature_is_rejected(nb):
    class NoClip(nb["FixedClippedMLP"]):
        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    check_model(lambda: NoClip(20, 32, 4), example=(8, 20))  # a "fix" that deletes the clipping trains fine...
    rejected(lambda: check_same_function(lambda: NoClip(20, 32, 4, limit=0.5), lambda: nb["ClippedMLP"](20, 32, 4, limit=0.5),
                                         example=(8, 20)),  # ...and computes something else
             "your model's eval-mode output differs from ClippedMLP's", "yours: [", "ClippedMLP: [", "fix only the bug")


def test_a_fix_that_renames_layers_is_told_to_keep_the_names(nb):
    class Renamed(nn.Module):
        def __init__(self, in_features, hidden, out_features):
            super().__init__()
            self.first = nn.Linear(in_features, hidden)
            self.head = nn.Linear(hidden, out_features)

        def forward(self, x):
            return self.head(torch.relu(self.first(x)))

    rejected(lambda: check_same_function(lambda: Renamed(20, 32, 4), lambda: nb["LoggedMLP"](20, 32, 4), example=(8, 20)),
             "your model cannot take LoggedMLP's state_dict", "LoggedMLP has `encoder.0.weight`, yours has not",
             "yours has `first.weight`, LoggedMLP has not", "keep LoggedMLP's attribute names")


def test_a_persistent_mask_is_also_a_fix(nb, capsys):
    class PersistentMask(nb["CausalMixer"]):
        def __init__(self, dim, max_len):
            super().__init__(dim, max_len)
            self.register_buffer("mask", vars(self).pop("mask"))

    check_model(lambda: PersistentMask(8, 6), example=(2, 6, 8), expected=3 * (8 * 8 + 8))
    check_same_function(lambda: PersistentMask(8, 6), lambda: nb["CausalMixer"](8, 6), example=(2, 6, 8))
    assert capsys.readouterr().out.count("✓") == 6


def test_the_mask_left_behind_fails_on_meta_like_on_a_gpu(nb):
    """What the patient's probe shows on a CPU-only machine."""
    mixer = nb["CausalMixer"](8, 6).to("meta")
    assert mixer.mask.device.type == "cpu"
    with pytest.raises(RuntimeError, match="not on the expected device"):
        mixer(torch.randn(2, 6, 8, device="meta"))


def test_hooks_removed_after_each_call_are_a_fix_too(nb, capsys):
    class RemovesItsHooks(nb["ProbedMLP"]):
        def forward(self, x):
            handles = [self.fc1.register_forward_hook(self.record("fc1")),
                       self.fc2.register_forward_hook(self.record("fc2"))]
            try:
                return self.fc2(torch.relu(self.fc1(x)))
            finally:
                for handle in handles:
                    handle.remove()

    printed = run_cell(nb, "test_p7_probed", FixedProbedMLP=RemovesItsHooks)
    lines = printed.strip().splitlines()
    assert len(lines) == 17 and all(line.startswith("✓ ") for line in lines), printed
    assert capsys.readouterr().err == ""


def test_a_hook_fix_that_drops_the_dashboard_is_rejected(nb):
    class NoDashboard(nb["ProbedMLP"]):
        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    rejected(lambda: run_cell(nb, "test_p7_probed", FixedProbedMLP=NoDashboard),
             "✗ training log", "after call 1 (train mode), the log has no `fc1`", "it holds nothing")


def test_an_original_that_cannot_run_is_a_test_error_not_a_verdict(nb):
    class Crashes(nb["LoggedMLP"]):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(GraderError, match="ValueError: check_same_function: the original Crashes raised RuntimeError: boom"):
        check_same_function(lambda: nb["FixedLoggedMLP"](20, 32, 4), lambda: Crashes(20, 32, 4), example=(8, 20))


def test_an_upgrade_that_only_knows_old_keys_is_named(nb):
    renames = {"encoder.0.": "backbone.1.", "encoder.1.": "backbone.2.", "classifier.": "heads.sentiment."}

    def only_old_keys(state_dict):  # the lesson's pattern: every key must match an old prefix
        return {renames[next(p for p in renames if k.startswith(p))] + k.split(".", 2)[-1]
                if not k.startswith("classifier.") else "heads.sentiment." + k.split(".", 1)[1]: t
                for k, t in state_dict.items()}

    run_cell(nb, "test_p9_upgrade", upgrade_checkpoint=only_old_keys)  # old checkpoints: fine
    rejected(lambda: run_cell(nb, "test_p9_every_checkpoint", upgrade_checkpoint=only_old_keys),
             "only_old_keys(SentimentV2's state_dict) raised StopIteration")


def test_an_index_shift_missed_is_named_with_the_rename(nb):
    def missed_the_dropout(state_dict):
        return {k.replace("encoder.", "backbone.").replace("classifier.", "heads.sentiment."): t
                for k, t in state_dict.items()}

    rejected(lambda: run_cell(nb, "test_p9_upgrade", upgrade_checkpoint=missed_the_dropout),
             "the names differ", "missing from the checkpoint: `backbone.2.bias`",
             "`backbone.1.weight`: the checkpoint holds shape [32], the model registers [32, 20]")


def test_the_numpy_patient_runs_under_no_grad_as_reported(nb):
    with torch.no_grad():
        assert nb["ClippedMLP"](20, 32, 4)(torch.randn(2, 20)).shape == (2, 4)
    with pytest.raises(RuntimeError, match="Can't call numpy"):
        nb["ClippedMLP"](20, 32, 4)(torch.randn(2, 20))


# --- check_training_step: the usual mistakes of a training step -----------------------------------------

def _mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _step(order, returns="item"):
    """A training step built from its parts, in the given order."""
    def step(model, optimizer, loss_fn, x, y):
        loss = None
        for part in order:
            if part == "zero":
                optimizer.zero_grad()
            elif part == "forward":
                loss = loss_fn(model(x), y)
            elif part == "backward":
                loss.backward()
            elif part == "step":
                optimizer.step()
        return {"item": lambda: loss.item(), "tensor": lambda: loss, "none": lambda: None,
                "double": lambda: 2 * loss.item(), "float": lambda: float(loss), "detached": lambda: loss.detach(),
                "list": lambda: [loss.item()]}[returns]()
    return step


STEP_MISTAKES = [
    (["forward", "backward", "step"], "item", ["gradients accumulate across steps", "optimizer.zero_grad()"]),
    (["forward", "backward", "zero", "step"], "item", ["after step 1, no parameter has changed",
                                                       "zero_grad() does not sit between them"]),
    (["zero", "forward", "step"], "item", ["after step 1, no parameter has changed", "backward() and step()"]),
    (["zero", "forward", "backward"], "item", ["after step 1, no parameter has changed"]),
    (["zero", "forward", "backward", "step"], "none", ["returned None", "loss.item()"]),
    (["zero", "forward", "backward", "step"], "tensor", ["returned the loss as a tensor with its autograd graph, not as a "
                                                         "number", "holds on to the whole graph", "loss.item()"]),
    (["zero", "forward", "backward", "step"], "detached", ["returned the loss as a tensor, not as a number",
                                                           "as a Python float: loss.item()"]),
    (["zero", "forward", "backward", "step"], "list", ["returned list, not a number"]),
    (["zero", "forward", "backward", "step"], "double", ["at step 1, step returned", "but the loss on this batch is"]),
    (["zero", "forward", "backward", "step", "step"], "item", ["after step 1, the parameters differ from one SGD step",
                                                               "is off by up to"]),
]


@pytest.mark.parametrize("order, returns, fragments", STEP_MISTAKES, ids=["-".join(o) + "-" + r for o, r, _ in STEP_MISTAKES])
def test_each_training_step_mistake_is_named(order, returns, fragments, capsys):
    rejected(lambda: check_training_step(_step(order, returns), _mlp, example=(5, 6)), *fragments)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("order, returns", [(["zero", "forward", "backward", "step"], "item"),
                                            (["forward", "backward", "step", "zero"], "float")])
def test_correct_training_steps_pass(order, returns, capsys):
    check_training_step(_step(order, returns), _mlp, example=(5, 6), steps=4)
    check_training_step(_step(order, returns), lambda: nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)),
                        example=(5, 6), loss_fn=F.l1_loss)
    assert capsys.readouterr().out.count("✓ training step: ") == 2


def test_a_batch_of_one_through_batchnorm_in_a_step_is_explained(capsys):
    def step_one_at_a_time(model, optimizer, loss_fn, x, y):
        optimizer.zero_grad()
        loss = loss_fn(model(x[:1]), y[:1])
        loss.backward()
        optimizer.step()
        return loss.item()

    rejected(lambda: check_training_step(step_one_at_a_time, lambda: nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)),
                                         example=(5, 6)),
             "Expected more than 1 value per channel when training", "batches of 2 or more", "drop_last=True")


# --- check_predict, check_optimizer, check_counter ------------------------------------------------------------

def _scorer():
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))


def test_each_prediction_mistake_is_named(nb):
    def no_grad_missing(model, sample):
        model.eval()
        return model(sample.unsqueeze(0))[0]

    def batch_kept(model, sample):
        model.eval()
        with torch.no_grad():
            return model(sample.unsqueeze(0))

    def batches_of_two(model, sample):  # dodges the error, still in train mode
        with torch.no_grad():
            return model(torch.stack([sample, sample]))[0]

    def dropout_only_eval(model, sample):  # eval() on the Dropout layers, BatchNorm left in train mode
        for layer in model.modules():
            if isinstance(layer, nn.Dropout):
                layer.eval()
        with torch.no_grad():
            return model(torch.stack([sample, sample]))[0]

    rejected(lambda: check_predict(no_grad_missing, _scorer, example=(4, 6)),
             "returns a tensor attached to an autograd graph", "model.eval() does not turn autograd off", "torch.no_grad()")
    rejected(lambda: check_predict(batch_kept, _scorer, example=(4, 6)),
             "returned shape [1, 3]; the model's output for one sample has shape [3]", ".squeeze(0)")
    for fn in (batches_of_two, dropout_only_eval):
        rejected(lambda: check_predict(fn, _scorer, example=(4, 6)),
                 "changed the model's buffers, so it ran the model in train mode", "`1.running_mean` changed", "model.eval()")
    rejected(lambda: check_predict(nb["predict"], lambda: nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5)), example=(4, 6)),
             "for sample 0, predict differs from the model's eval-mode output", "yours: [", "eval:  [", "dropout is active")


def test_a_prediction_that_restores_train_mode_passes(capsys):
    def polite_predict(model, sample):
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            scores = model(sample.unsqueeze(0)).squeeze(0)
        model.train(was_training)
        return scores

    check_predict(polite_predict, _scorer, example=(4, 6))
    assert "✓ single-sample prediction: polite_predict" in capsys.readouterr().out


def test_an_optimizer_missing_a_new_layer_is_named():
    def added_after(lr=0.1):
        model = nn.Sequential(nn.Linear(4, 4))
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        model.append(nn.Linear(4, 2))
        return model, optimizer

    message = rejected(lambda: check_optimizer(added_after),
                       "`1` is not in it: it was built before that layer existed, or from only part of the model",
                       "2 trainable tensors of the model are not in the optimizer: `1.weight` and `1.bias`")
    assert "does not have" not in message


def test_an_optimizer_with_a_zero_learning_rate_is_named():
    def frozen_by_lr():
        model = nn.Linear(4, 2)
        return model, torch.optim.SGD(model.parameters(), lr=0.0)

    check_optimizer(frozen_by_lr)  # it holds the right tensors...
    rejected(lambda: check_optimizer(frozen_by_lr, example=(3, 4)),  # ...but a step moves none of them
             "one optimizer.step() left some trainable tensors unchanged", "`weight` did not move", "learning rate")


def test_an_optimizer_built_from_another_instance_is_named():
    def two_instances():
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        return model, torch.optim.SGD(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).parameters(), lr=0.1)

    rejected(lambda: check_optimizer(two_instances), "it holds none of them", "another model",
             "the optimizer holds 4 tensors that the model does not have")


def test_a_setup_that_returns_something_else_is_named():
    rejected(lambda: check_optimizer(lambda: nn.Linear(2, 2)), "returned Linear, not (model, optimizer)")


def test_each_counting_mistake_is_named(nb):
    def tied_lm():
        embed, unembed = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
        unembed.weight = embed.weight
        return nn.Sequential(embed, nn.Linear(4, 4), unembed)

    def per_module(model):
        return sum(p.numel() for m in model.modules() for p in m.parameters(recurse=False))

    def state_dict_sum(model):
        return sum(t.numel() for t in model.state_dict().values())

    def all_parameters(model):
        return sum(p.numel() for p in model.parameters())

    frozen = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    frozen[0].requires_grad_(False)
    rejected(lambda: check_counter(per_module, [tied_lm]),
             "per_module(nn.Sequential) returned 100, but torch counts 60", "`0.weight` and `2.weight` are one tensor (40 elements), tied",
             "counts a shared tensor once per name")
    rejected(lambda: check_counter(nb["count_trainable"], [tied_lm]), "are one tensor (40 elements), tied")
    rejected(lambda: check_counter(state_dict_sum, [lambda: nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))]),
             "the model has 5 buffer elements", "count parameters(), not state_dict()")
    rejected(lambda: check_counter(all_parameters, [frozen]), "12 parameters are frozen", "skip frozen parameters")
    check_counter(all_parameters, [frozen], counts="parameters")


def test_a_counter_that_raises_is_reported():
    def broken(model):
        return model.num_parameters

    rejected(lambda: check_counter(broken, [nn.Linear(2, 2)]), "broken(nn.Linear) raised AttributeError")


def test_the_stub_is_reported_as_the_stub():
    def stub(*args):
        raise NotImplementedError("replace this line with your code")

    for check in (lambda: check_training_step(stub, _mlp, example=(5, 6)), lambda: check_predict(stub, _scorer, example=(4, 6)),
                  lambda: check_optimizer(stub), lambda: check_counter(stub, [nn.Linear(2, 2)])):
        rejected(check, "raised NotImplementedError", "replace that line with your code")


def test_a_layer_left_as_none_is_named_by_the_count_check(nb):
    """The count check's extra detail for layers built later (patient 4), and nothing extra when the count is right."""
    rejected(lambda: check_trainable_count(lambda: nb["LazyClassifier"](4, 3, 2), expected=4 * 3 + 3 + 3 * 3 + 3 + 3 * 2 + 2),
             "`self.head` is None when the model is built")
    check_trainable_count(lambda: nb["LazyClassifier"](4, 3, 2), expected=4 * 3 + 3 + 3 * 3 + 3)


# --- the device matrix: train-mode randomness differs between devices --------------------------------

class DeviceDependentNoise(nn.Module):
    """Train-mode noise that is the same within one device's run and differs between runs, as dropout
    masks differ between the CPU and CUDA generators under the same seed."""

    builds = 0

    def __init__(self):
        super().__init__()
        DeviceDependentNoise.builds += 1
        self.keep = 0.5 if DeviceDependentNoise.builds % 2 else 0.3
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        if self.training:
            x = x * (torch.rand(x.shape, device=x.device) > self.keep).float()
        return self.fc(x)


def test_training_checks_compare_each_device_with_its_own_reference(monkeypatch, capsys):
    """With two runs that draw different noise, the checks still agree: each run is compared with torch's
    loop on its own device, and the fingerprints do not carry the noise."""
    from grader.checks import devices

    monkeypatch.setattr(devices, "selected", lambda: [torch.device("cpu"), torch.device("cpu")])
    check_training_step(_step(["zero", "forward", "backward", "step"]), DeviceDependentNoise, example=(5, 6))

    def setup():
        model = DeviceDependentNoise()
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    check_optimizer(setup, example=(5, 6))
    assert capsys.readouterr().out.count("✓") == 2


# --- check_optimizer(like=...): the steps of the exercise's optimizer --------------------------------------

def _setup(make_optimizer):
    def setup():
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        return model, make_optimizer(model.parameters())
    return setup


def _sgd(lr):
    return lambda parameters: torch.optim.SGD(parameters, lr=lr)


@pytest.mark.parametrize("make, fragments", [
    (lambda ps: torch.optim.Adam(ps, lr=0.05), ["after 1 step", "yours is Adam; the exercise's is SGD"]),
    (lambda ps: torch.optim.SGD(ps, lr=0.1), ["differently from SGD(lr=0.05)", "yours has lr=0.1; the exercise's has lr=0.05"]),
    (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), ["after 2 steps", "yours has momentum=0.9"]),
    (lambda ps: torch.optim.SGD(ps, lr=0.05, nesterov=True, momentum=0.5), ["yours has momentum=0.5", "nesterov=True"]),
    (lambda ps: torch.optim.SGD(ps, lr=0.05, weight_decay=1e-4), ["yours has weight_decay=0.0001"]),
], ids=["adam", "lr", "momentum", "nesterov", "weight decay"])
def test_an_optimizer_that_steps_otherwise_is_named(make, fragments, capsys):
    check_optimizer(_setup(make), example=(3, 4))  # it holds the right tensors, and a step moves each...
    rejected(lambda: check_optimizer(_setup(make), example=(3, 4), like=_sgd(0.05)),  # ...but not as SGD(lr=0.05)
             "your optimizer has moved the parameters differently", "is off by up to",
             "with the learning rate you are given and no other options", *fragments)
    assert capsys.readouterr().err == ""


def test_an_optimizer_that_steps_alike_passes_in_any_grouping(capsys):
    def grouped(parameters):
        parameters = list(parameters)
        return torch.optim.SGD([{"params": parameters[:2]}, {"params": parameters[2:]}], 0.05)

    check_optimizer(_setup(_sgd(0.05)), example=(3, 4), like=_sgd(0.05))
    check_optimizer(_setup(grouped), example=(3, 4), like=_sgd(0.05))
    out = capsys.readouterr().out
    assert out.count("its steps update them as SGD(lr=0.05) does") == 2, out


def test_like_without_an_example_is_the_tests_error():
    with pytest.raises(GraderError, match="`like` compares steps, so it needs an example"):
        check_optimizer(_setup(_sgd(0.1)), like=_sgd(0.1))


# --- check_log: the values a model keeps for a log ------------------------------------------------------------

class Logged(nn.Module):
    """Keeps the mean of its hidden layer in `self.log["hidden"]`, the way `keep` says."""

    def __init__(self, keep):
        super().__init__()
        self.fc, self.head, self.keep, self.log = nn.Linear(5, 3), nn.Linear(3, 2), keep, {}

    def forward(self, x):
        h = torch.relu(self.fc(x))
        self.keep(self.log, h)
        return self.head(h)


def _log_check(keep):
    return lambda: check_log(lambda: Logged(keep), (4, 5), lambda m: m.log,
                             lambda m, x: {"hidden": torch.relu(m.fc(x)).mean()})


def _set(log, h, value):
    log["hidden"] = value


LOG_MISTAKES = [
    (lambda log, h: _set(log, h, h.mean()), ["after call 1 (train mode), `hidden` is a tensor attached to the autograd "
                                             "graph", "let go of the graph"]),
    (lambda log, h: None, ["after call 1 (train mode), the log has no `hidden`", "it holds nothing"]),
    (lambda log, h: _set(log, h, None), ["`hidden` is None: nothing sets it"]),
    (lambda log, h: _set(log, h, h.detach().mean(0)), ["`hidden` has shape [3]; the log keeps one number per name"]),
    (lambda log, h: _set(log, h, [h.mean().item()]), ["`hidden` is a list, not a number"]),
    (lambda log, h: log.setdefault("hidden", h.mean().item()), ["after call 2 (train mode)",
                                                                "still holds the previous call's value"]),
    (lambda log, h: _set(log, h, h.sum().item()), ["after call 1 (train mode), `hidden` is"]),
]


@pytest.mark.parametrize("keep, fragments", LOG_MISTAKES,
                         ids=["graph", "missing", "none", "shape", "list", "stale", "wrong value"])
def test_each_log_mistake_is_named(keep, fragments, capsys):
    rejected(_log_check(keep), *fragments)
    assert capsys.readouterr().err == ""


def test_a_value_of_another_name_is_named():
    def swapped(log, h):
        log["first"], log["second"] = h[:, 1].mean().item(), h[:, 0].mean().item()

    rejected(lambda: check_log(lambda: Logged(swapped), (4, 5), lambda m: m.log,
                               lambda m, x: {"first": torch.relu(m.fc(x))[:, 0].mean(),
                                             "second": torch.relu(m.fc(x))[:, 1].mean()}),
             "`first` is", "it holds what `second` should hold")


@pytest.mark.parametrize("keep", [lambda log, h: _set(log, h, h.mean().item()),
                                  lambda log, h: _set(log, h, h.detach().mean()),
                                  lambda log, h: _set(log, h, h.detach().double().mean().reshape(1))],
                         ids=["float", "detached tensor", "float64 one-element tensor"])
def test_a_log_of_numbers_or_detached_tensors_passes(keep, capsys):
    _log_check(keep)()
    assert "✓ training log: `hidden` holds each call's value (train and eval mode)" in capsys.readouterr().out


# --- check_predict and check_same_function: what must stay as it was --------------------------------------

def test_a_prediction_that_leaves_autograd_off_is_named_and_autograd_is_back_on():
    def switches_off(model, sample):
        model.eval()
        torch.set_grad_enabled(False)
        return model(sample.unsqueeze(0))[0]

    rejected(lambda: check_predict(switches_off, _scorer, example=(4, 6)), "switches_off left autograd switched off",
             "training after it raises or learns nothing")
    assert torch.is_grad_enabled()


def test_a_conversion_that_changes_its_input_is_named(nb):
    def in_place(state_dict):
        for key in list(state_dict):
            state_dict["copy." + key] = state_dict.pop(key)
        return {k.removeprefix("copy."): v for k, v in state_dict.items()}

    def scaled(state_dict):
        for tensor in state_dict.values():
            tensor.mul_(1)  # touches every tensor in place, and changes none
        state_dict["encoder.0.weight"].mul_(2)
        return {k.replace("classifier.", "heads.sentiment."): v for k, v in state_dict.items()}

    rejected(lambda: check_same_function(lambda: nb["SentimentV2"](3, 4, 2), lambda: nb["SentimentV2"](3, 4, 2),
                                         example=(2, 3), convert=in_place),
             "in_place(SentimentV2's state_dict) changed the checkpoint it was given",
             "`backbone.1.weight` was removed from it", "build a new dict")
    rejected(lambda: check_same_function(lambda: nb["SentimentV2"](3, 4, 2), lambda: nb["SentimentV1"](3, 4, 2),
                                         example=(2, 3), convert=scaled),
             "`encoder.0.weight` was changed in place")


# --- check_counter: the hints fit what is counted (issue 16) ---------------------------------------------------

def _shared_norm():
    norm = nn.BatchNorm1d(3)
    return nn.Sequential(nn.Linear(2, 3), norm, norm)


def _plain_norm():
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))


@pytest.mark.parametrize("counts, model, counter, fragments, absent", [
    ("buffer elements", _shared_norm, lambda m: sum(b.numel() for b in m.buffers()) + 1,
     ["returned 8, but torch counts 7 buffer elements", "print([(n, tuple(t.shape)) for n, t in model.named_buffers()])"],
     ["named_parameters", "count parameters()"]),
    ("buffer elements", _shared_norm, lambda m: sum(b.numel() for _, b in m.named_buffers(remove_duplicate=False)),
     ["returned 14, but torch counts 7", "`1` and `2` are one nn.BatchNorm1d (7 buffer elements) registered under 2 names",
      "buffers() yields each tensor once"], ["parameters() yields"]),
    ("state_dict elements", _shared_norm, lambda m: sum(p.numel() for p in m.parameters()),
     ["returned 15, but torch counts 35 state_dict elements", "model.state_dict().items()"],
     ["named_parameters", "count parameters()"]),
    ("trainable parameters", _plain_norm, lambda m: sum(t.numel() for t in m.state_dict().values()),
     ["the model has 7 buffer elements", "count parameters(), not state_dict()"], []),
], ids=["buffers: listing", "buffers: shared module", "state_dict: listing", "parameters: buffers counted"])
def test_counting_hints_name_the_listing_of_what_is_counted(counts, model, counter, fragments, absent):
    message = rejected(lambda: check_counter(counter, [model], counts=counts), *fragments)
    for fragment in absent:
        assert fragment not in message, message


def test_a_repeat_is_named_only_where_it_explains_the_count(nb):
    message = rejected(lambda: check_counter(lambda m: 12, [lambda: nb["SharedStack"](20, 16, 4, depth=3)]),
                       "returned 12, but torch counts 772")
    assert "registered under 3 names" not in message and "  - " not in message


def test_a_count_that_is_not_a_number_is_rejected():
    class EqualsEverything(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    rejected(lambda: check_counter(lambda m: torch.tensor(6), [nn.Linear(2, 2)]), "returned tensor(6)", "as an int")
    rejected(lambda: check_counter(lambda m: EqualsEverything(5), [nn.Linear(2, 2)]), "returned 5, but torch counts 6")


# --- a model that keeps a graph cannot be copied: the student's error, not the grader's -----------------------

def test_a_model_that_keeps_a_graph_is_rejected_not_a_grader_error():
    class KeepsGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.last = {}

        def forward(self, x):
            out = self.fc(x)
            self.last["out"] = out
            return out

    model = KeepsGraph()
    model(torch.randn(2, 3))
    rejected(lambda: check_model(model, example=(2, 3)), "building the model raised RuntimeError",
             "support the deepcopy protocol", "still attached to an autograd graph", "must let go of the graph")

    def fresh():  # a factory: the check's own copy (device transfer) meets the graph that the hook kept
        built = KeepsGraph()
        keep = built.last
        built.fc.register_forward_hook(lambda module, args, output: keep.update(hooked=output))
        return built

    from grader import check_device_transfer

    rejected(lambda: check_device_transfer(fresh, example=(2, 3)), "✗ check_device_transfer: the model cannot be copied",
             "still attached to an autograd graph")


def test_eval_randomness_without_dropout_modules_names_the_forward():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x) + torch.randn(2)

    from grader import check_eval_behaviour

    rejected(lambda: check_eval_behaviour(Noisy, example=(4, 3)), "two eval-mode calls",
             "the model holds no nn.Dropout module: the randomness comes from a call in forward")
