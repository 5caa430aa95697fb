"""The grader's checks against a corpus of broken models: each is rejected with the right hint."""

import warnings

import pytest
import torch
from torch import nn

import broken_models as bm
from grader import (CheckFailed, check_counting, check_device_transfer, check_eval_behaviour,
                    check_gradient_flow, check_learning, check_model, check_names, check_trainable_count)
from grader.checks.runner import _agree

pytestmark = pytest.mark.device

COUNT = lambda model: check_trainable_count(model)  # noqa: E731
GRAD = lambda model: check_gradient_flow(model, bm.EXAMPLE)  # noqa: E731
EVAL = lambda model: check_eval_behaviour(model, bm.EXAMPLE)  # noqa: E731
LEARN = lambda model: check_learning(model, bm.EXAMPLE)  # noqa: E731
MOVE = lambda model: check_device_transfer(model, bm.EXAMPLE)  # noqa: E731

class _LayerList(list):
    pass


def _with_list_subclass():
    model = bm.ListOfLayers()
    vars(model)["layers"] = _LayerList(model.layers)
    return model


# (broken model, check that must reject it, fragments its message must contain)
REJECTIONS = [
    (bm.ListOfLayers, COUNT, ["3 nn.Linear layers sit in a plain list at `self.layers`", "use nn.ModuleList"]),
    (bm.ListOfLayers, GRAD, ["plain list at `self.layers`", "nn.ModuleList"]),
    (bm.ListOfLayers, LEARN, ["optimizer got an empty parameter list", "self.layers"]),
    (bm.ListOfLayers, MOVE, ["plain list at `self.layers`"]),
    (bm.ListBesideRegistered, COUNT, ["2 nn.Linear layers sit in a plain list at `self.blocks`", "2,112 more are hidden"]),
    (bm.DictOfHeads, COUNT, ["plain dict at `self.heads`", "use nn.ModuleDict"]),
    (lambda: _with_list_subclass(), COUNT, ["plain list at `self.layers`", "use nn.ModuleList"]),
    (bm.TupleOfLayers, COUNT, ["plain tuple at `self.pair`", "use nn.ModuleList"]),
    (bm.LocalLayerInForward, GRAD, ["shape [10, 32] takes part in forward but is not registered", "inside forward"]),
    (bm.LocalLayerInForward, LEARN, ["does not list", "a layer created inside forward"]),
    (bm.LocalLayerInForward, EVAL, ["different outputs", "created inside forward"]),
    (bm.AttributeLayerInForward, LEARN, ["`fc2.weight` is a new tensor after forward", "`self.fc2` is assigned inside forward"]),
    (bm.AttributeLayerInForward, GRAD, ["`self.fc2` is assigned inside forward"]),
    (bm.PlainTensorWeight, COUNT, ["plain tensor (shape [10]) at `self.scale`", "nn.Parameter", "10 more are hidden"]),
    (bm.PlainTensorWeight, GRAD, ["`self.scale`", "nn.Parameter"]),
    (bm.PlainTensorMask, MOVE, ["plain tensor (shape [10]) at `self.mask`", "register_buffer"]),
    (bm.TensorMadeInForward, MOVE, ["not on the expected device meta", "without device=x.device"]),
    (bm.ForgottenEval, EVAL, ["still in training mode", "`drop` has training=True", "super().train(mode)"]),
    (bm.FunctionalDropoutAlwaysOn, EVAL, ["different outputs", "training=self.training"]),
    (bm.DetachedOutput, GRAD, ["`fc1.weight` gets no gradient", "`fc1` runs", "detached"]),
    (bm.NumpyInForward, GRAD, ["Can't call numpy()", "forward calls .numpy()"]),
    (bm.UnusedLayer, GRAD, ["`extra.weight` gets no gradient", "`extra` never runs in forward (unused)"]),
    (bm.NoSuperInit, COUNT, ["cannot assign module before Module.__init__() call", "first line of __init__"]),
    (bm.NoSuperInit, GRAD, ["super().__init__()"]),
    (bm.BatchStatsInEval, EVAL, ["depends on the other samples in its batch", "running statistics"]),
    (bm.UpdatesStatsInEval, EVAL, ["buffers changed during an eval-mode forward", "`running_mean` changed"]),
    (bm.InplaceBreaksAutograd, GRAD, ["modified by an inplace operation", "out-of-place"]),
    (bm.InplaceBreaksAutograd, LEARN, ["modified by an inplace operation"]),
    (bm.HookEveryCall, GRAD, ["leaves hooks behind", "`fc1` gains a forward hook on every call (3 after 3 calls",
                              "fc1._forward_hooks", "handle.remove()"]),
    (bm.HookEveryCall, EVAL, ["`fc1` gains a forward hook on every call"]),
    (bm.HookEveryCall, LEARN, ["`fc1` gains a forward hook on every call"]),
    (bm.InplaceHook, GRAD, ["modified by an inplace operation", "`act` (nn.ReLU) has a forward hook `InplaceHook._cap`",
                            "return a new tensor from the hook"]),
    (bm.InplaceHook, LEARN, ["`act` (nn.ReLU) has a forward hook", "return a new tensor from the hook"]),
    (lambda: bm.FrozenLayer(), lambda m: check_trainable_count(m, expected=bm.linear_count(bm.IN, bm.HIDDEN, bm.OUT)),
     ["672 parameters are frozen (requires_grad=False): `fc1.weight`, `fc1.bias`"]),
    (bm.SharedWhereTwoMeant, lambda m: check_trainable_count(m, expected=bm.linear_count(bm.IN, bm.HIDDEN, bm.HIDDEN, bm.HIDDEN, bm.OUT)),
     ["`mid1` and `mid2` are one shared module", "counts its parameters once"]),
    (bm.ForwardCalledDirectly, GRAD, ["`fc1` (nn.Linear): its parameters are in the output's graph, but `fc1(...)` "
                                      "was never called", "not `self.layer.forward(x)`"]),
    (bm.ForwardCalledDirectly, LEARN, ["its hooks never ran"]),
    (bm.WeightsUsedDirectly, GRAD, ["`fc1` (nn.Linear)", "F.linear(x, self.layer.weight"]),
    (bm.GoodMLP, lambda m: check_trainable_count(m, expected=bm.GOOD_COUNT + 1), ["too few"]),
    (bm.GoodMLP, lambda m: check_trainable_count(m, expected=bm.GOOD_COUNT - 1), ["too many"]),
]


@pytest.mark.parametrize("model, check, fragments", REJECTIONS,
                         ids=[f"{getattr(m, '__name__', 'model')}-{i}" for i, (m, _, _) in enumerate(REJECTIONS)])
def test_broken_model_is_rejected_with_the_right_hint(model, check, fragments, capsys):
    with pytest.raises(CheckFailed) as failure:
        check(model)
    message = str(failure.value)
    for fragment in fragments:
        assert fragment in message, f"missing {fragment!r} in:\n{message}"
    assert capsys.readouterr().err == ""


def test_good_model_passes_every_check_with_one_verdict_line_each(capsys):
    check_model(bm.GoodMLP, bm.EXAMPLE, expected=bm.GOOD_COUNT)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "✓ trainable parameters", "✓ gradient flow", "✓ eval behaviour", "✓ learning", "✓ device transfer"]
    assert all(line.endswith("[cpu]") for line in lines)
    assert "1,066 in 6 tensors" in lines[0]
    assert err == ""


def test_an_instance_is_copied_not_mutated():
    model = bm.GoodMLP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_learning(model, bm.EXAMPLE)
    check_eval_behaviour(model, bm.EXAMPLE)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


class WarnsButCorrect(nn.Module):
    """Correct, but torch warns on every call (a full backward hook whose inputs need no grad)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(bm.IN, bm.OUT)
        self.fc.register_full_backward_hook(lambda module, grad_in, grad_out: None)

    def forward(self, x):
        warnings.warn("a warning from inside forward", UserWarning)
        return self.fc(x)


def test_torch_warnings_never_reach_stderr(capsys):
    check_model(WarnsButCorrect, bm.EXAMPLE)
    out, err = capsys.readouterr()
    assert err == ""
    assert out.count("✓") == 5


def test_warnings_are_quoted_in_a_failure(capsys):
    class WarnsAndBroken(WarnsButCorrect):
        def forward(self, x):
            return super().forward(x).detach()

    with pytest.raises(CheckFailed, match="torch warned: UserWarning: a warning from inside forward"):
        check_gradient_flow(WarnsAndBroken, bm.EXAMPLE)
    assert capsys.readouterr().err == ""


def test_a_factory_that_returns_something_else_is_named():
    with pytest.raises(CheckFailed, match="expected an nn.Module, got int"):
        check_trainable_count(lambda: 3)


def test_a_model_without_trainable_parameters_fails_gradient_flow():
    frozen = lambda: nn.Linear(3, 2).requires_grad_(False)  # noqa: E731
    with pytest.raises(CheckFailed, match="no trainable parameters"):
        check_gradient_flow(frozen, (4, 3))
    with pytest.raises(CheckFailed, match="empty parameter list"):
        check_learning(frozen, (4, 3))


def test_devices_that_disagree_are_reported():
    cpu = torch.device("cpu")
    with pytest.raises(CheckFailed, match=r"results on cpu differ from cpu \(largest gap 1.0\)"):
        _agree("gradient flow", [cpu, cpu], [torch.zeros(3), torch.ones(3)])
    _agree("gradient flow", [cpu, cpu], [1.0, 1.0 + 1e-6])


def test_check_counting_names_the_wrong_case(capsys):
    def linear_params(i, o):
        return i * o  # forgets the bias

    with pytest.raises(CheckFailed) as failure:
        check_counting(linear_params, nn.Linear, [(20, 64), (3, 2)])
    message = str(failure.value)
    assert "2 cases of 2 wrong" in message
    assert "linear_params(20, 64) returned 1280, but nn.Linear built with (20, 64) has 1,344 trainable parameters" in message
    check_counting(lambda i, o: i * o + o, nn.Linear, [(20, 64)])
    assert capsys.readouterr().out.startswith("✓ counting trainable parameters: <lambda> matches torch on 1 case")
    with pytest.raises(ValueError, match="counts must be one of"):
        check_counting(linear_params, nn.Linear, [(1, 1)], counts="weights")


def test_check_names_reports_missed_extra_and_repeated():
    model = bm.ListOfLayers()
    with pytest.raises(CheckFailed) as failure:
        check_names(lambda m: ["self.layers[0]", "self.layers[0]", "self.fc"], model,
                    ["self.layers[0]", "self.layers[1]", "self.layers[2]"])
    message = str(failure.value)
    assert "missed 'self.layers[1]'" in message and "missed 'self.layers[2]'" in message
    assert "reported 'self.fc', which it should not" in message
    assert "reported 'self.layers[0]' more than once" in message
    with pytest.raises(CheckFailed, match="returned None, not a list"):
        check_names(lambda m: None, model, [])


class HooksOnFirstCall(nn.Module):
    """Registers its hooks lazily, once, on the first call: not a leak."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(bm.IN, bm.OUT)
        self.seen = 0

    def _count(self, module, args, output):
        self.seen += 1

    def forward(self, x):
        if not self.fc._forward_hooks:
            self.fc.register_forward_hook(self._count)
            self.fc.weight.register_hook(lambda grad: None)
        return self.fc(x)


class TensorHookEveryCall(HooksOnFirstCall):
    """A tensor hook on a parameter outlives the call: registered in forward, it piles up."""
    def forward(self, x):
        self.fc.weight.register_hook(lambda grad: grad.clamp(-1, 1))
        return self.fc(x)


def test_hooks_registered_once_are_not_a_leak(capsys):
    check_model(HooksOnFirstCall, bm.EXAMPLE)
    assert capsys.readouterr().out.count("✓") == 5


def test_a_tensor_hook_left_on_a_parameter_every_call_is_a_leak():
    with pytest.raises(CheckFailed) as failure:
        check_learning(TensorHookEveryCall, bm.EXAMPLE)
    message = str(failure.value)
    assert "`fc.weight` gains a tensor hook on every call (3 after 3 calls, in `fc.weight._backward_hooks`)" in message
    assert "handle.remove()" in message


def test_a_forward_without_hooks_at_fault_keeps_the_usual_inplace_hint():
    with pytest.raises(CheckFailed) as failure:
        check_gradient_flow(bm.InplaceBreaksAutograd, bm.EXAMPLE)
    assert "forward hook" not in str(failure.value)


def test_dropout_does_not_break_agreement_across_devices_with_other_random_streams(monkeypatch, capsys):
    """CUDA draws other dropout masks than the CPU under one seed: a two-device matrix whose random
    streams differ (simulated on the CPU) must still pass a correct dropout model, and still catch a
    model that really computes something else on the second device."""
    from grader.checks import devices
    monkeypatch.setattr(devices, "selected", lambda: [torch.device("cpu"), torch.device("cpu")])
    monkeypatch.setattr(devices, "label", lambda matrix: "cpu, cpu*")
    rounds = []  # each device starts with torch.manual_seed(SEED): count them
    seed, dropout = torch.manual_seed, torch.nn.functional.dropout
    monkeypatch.setattr(torch, "manual_seed", lambda s: (rounds.append(s), seed(s))[1])
    # another device, another random stream: skip ahead by the round number before each dropout draw
    monkeypatch.setattr(torch.nn.functional, "dropout",
                        lambda x, *a, **k: (torch.rand(len(rounds)), dropout(x, *a, **k))[1])
    for check in (GRAD, EVAL, LEARN, MOVE):
        check(bm.GoodMLP)
    assert capsys.readouterr().out.count("✓") == 4

    calls = iter(range(100))

    class DeviceDependent(nn.Module):  # a different result on the second "device"
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(bm.IN, bm.OUT)
            self.offset = next(calls) * 0.5

        def forward(self, x):
            return self.fc(x) + self.offset

    with pytest.raises(CheckFailed, match="differ from cpu"):
        check_gradient_flow(DeviceDependent, bm.EXAMPLE)


@pytest.mark.parametrize("model, example", [(bm.TiedByWeight, lambda device: torch.arange(6, device=device)),
                                            (bm.WithAttention, (2, 5, bm.HIDDEN))], ids=["tied", "attention"])
def test_layers_used_through_their_weights_by_design_are_not_flagged(model, example, capsys):
    """Weight tying (the embedding is also called) and torch's own modules (MultiheadAttention's out_proj) pass."""
    check_gradient_flow(model, example)
    assert capsys.readouterr().out.startswith("✓ gradient flow")


def test_a_crash_inside_a_check_is_the_graders_error_not_a_verdict(monkeypatch):
    """An exception raised in the grader's own code is a GraderError naming the check, never a CheckFailed."""
    from grader.checks import models
    from grader.checks.report import GraderError

    monkeypatch.setattr(models, "find_hidden", {}.__getitem__)  # a lookup that fails inside the grader's own code
    with pytest.raises(GraderError) as failure:
        check_trainable_count(bm.GoodMLP)
    message = str(failure.value)
    assert message.startswith("⚠ grader error in `check_trainable_count`: KeyError: GoodMLP(")
    assert "not in your code" in message
    assert not isinstance(failure.value, CheckFailed)


def test_an_unexpected_error_in_the_students_code_names_their_line():
    """An error the check did not anticipate, raised in the student's code, is the student's, with its line."""
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(bm.IN, bm.OUT)

        def named_parameters(self, *args, **kwargs):
            raise LookupError("no names today")

    with pytest.raises(CheckFailed) as failure:
        check_trainable_count(Odd)
    assert "LookupError: no names today (in `named_parameters`, line " in str(failure.value)


def test_a_subclass_of_a_torch_batchnorm_is_checked_not_crashed(capsys):
    class MyBatchNorm1d(nn.BatchNorm1d):
        pass

    check_eval_behaviour(lambda: MyBatchNorm1d(6), (5, 6))
    assert capsys.readouterr().out.startswith("✓ eval behaviour")


def test_a_failure_shows_at_most_ten_lines_in_a_notebook():
    """IPython shows `_render_traceback_` instead of the traceback: the diagnosis alone, at most 10 lines."""
    with pytest.raises(CheckFailed) as failure:
        check_trainable_count(lambda: bm.GoodMLP(), expected=1)
    shown = failure.value._render_traceback_()
    assert shown[0].startswith("✗ trainable parameters")
    assert len(shown) <= 10 and not any("Traceback" in line or "File " in line for line in shown)
    long = CheckFailed("\n".join(["✗ title: problem"] + [f"  - detail {i}" for i in range(30)] + ["Hint: look here"]))
    shown = long._render_traceback_()
    assert len(shown) == 10 and shown[-1] == "Hint: look here" and "... and 23 more" in shown[-2]
