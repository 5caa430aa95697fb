"""check_matches_reference: the student's model beside a reference written in the test, from the same weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grader import CheckFailed, GraderError, check_matches_reference

pytestmark = pytest.mark.device
EXAMPLE = (6, 5)


class Reference(nn.Module):
    """fc -> BatchNorm -> ReLU -> dropout -> head, with a skip around `block`."""

    def __init__(self, p=0.0):
        super().__init__()
        self.fc = nn.Linear(5, 4)
        self.norm = nn.BatchNorm1d(4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.head = nn.Linear(4, 3)
        self.p = p

    def forward(self, x):
        h = F.dropout(torch.relu(self.norm(self.fc(x))), self.p, self.training)
        return self.head(h + self.block(h))


def student(forward):
    """A model with the reference's layers and this forward."""
    return type("Model", (Reference,), {"forward": forward})


def reference_function(state, x, training):
    """The same model as a function of the student's tensors (a functional reference)."""
    h = F.linear(x, state["fc.weight"], state["fc.bias"])
    h = torch.relu(F.batch_norm(h, state["norm.running_mean"], state["norm.running_var"], state["norm.weight"],
                                state["norm.bias"], training=training))
    skip = torch.tanh(F.linear(h, state["block.0.weight"], state["block.0.bias"]))
    return F.linear(h + skip, state["head.weight"], state["head.bias"])


class OtherStyle(nn.Module):
    """The same model written with explicit layers and other names (another style of a correct answer)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 4)
        self.bn = nn.BatchNorm1d(4)
        self.inner = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.inp(x)))
        return self.out(h + torch.tanh(self.inner(h)))


def rejected(build, reference=Reference, example=EXAMPLE, **kwargs) -> str:
    with pytest.raises(CheckFailed) as failure:
        check_matches_reference(build, reference, example, **kwargs)
    return str(failure.value)


@pytest.mark.parametrize("build, reference", [(Reference, Reference), (OtherStyle, Reference),
                                              (Reference, reference_function)],
                         ids=["same model", "another style, matched by position", "functional reference"])
def test_a_correct_model_passes_with_one_verdict_line(build, reference, capsys):
    check_matches_reference(build, reference, EXAMPLE)
    out = capsys.readouterr()
    assert out.out.count("\n") == 1 and out.out.startswith("✓ matches the reference: ")
    assert "outputs, input gradients and 8 parameter gradients agree" in out.out and out.err == ""


def test_a_wrong_forward_is_shown_side_by_side_with_its_largest_gap():
    message = rejected(student(lambda self, x: self.head(torch.relu(self.norm(self.fc(x))))))  # no skip
    assert "your train-mode `output` differs from the exercise's" in message
    assert "yours:" in message and "reference:" in message and "largest gap" in message


def test_a_detached_skip_fails_on_the_gradient_with_the_autograd_hint():
    def forward(self, x):
        h = torch.relu(self.norm(self.fc(x)))
        return self.head(h.detach() + self.block(h))

    message = rejected(student(forward))
    assert "your outputs match, but the gradient with respect to the input differs" in message
    assert "hidden from autograd" in message and "`.detach()`" in message


def test_a_data_hack_fails_on_the_gradient():
    """ReLU applied through `.data`: the right values, the wrong graph."""
    def forward(self, x):
        h = self.norm(self.fc(x))
        h.data.clamp_(min=0)
        return self.head(h + self.block(h))

    message = rejected(student(forward))
    assert "your outputs match, but the gradient" in message and "`.data`" in message


class Dropped(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return F.dropout(self.fc(x), 0.5, self.training)


def test_a_layer_that_ignores_the_mode_is_named():
    """Where the whole output equals the exercise's in the other mode, the check says so; otherwise it is silent."""
    always_on = student(lambda self, x: F.dropout(self.fc(x), 0.5, training=True))
    message = rejected(type("AlwaysOn", (Dropped,), {"forward": always_on.forward}), Dropped)
    assert "your eval-mode `output` differs" in message
    assert "what the exercise's model gives in train mode" in message and "self.training" in message
    def forward(self, x):  # dropout always on, but BatchNorm follows the mode: no such claim
        h = F.dropout(torch.relu(self.norm(self.fc(x))), self.p, training=True)
        return self.head(h + self.block(h))

    message = rejected(lambda: student(forward)(p=0.5), lambda: Reference(p=0.5))
    assert "your eval-mode `output` differs" in message and "train mode:" not in message


def test_a_buffer_updated_the_wrong_way_is_named():
    def build():
        model = Reference()
        model.norm.momentum = 0.5
        return model

    message = rejected(build)
    assert "after a train-mode call, buffer `norm.running_mean` differs" in message


def test_other_tensors_than_the_exercise_describes_are_named():
    def build():
        model = Reference()
        model.head = nn.Linear(4, 3, bias=False)
        return model

    message = rejected(build)
    assert "does not hold the tensors the exercise describes" in message
    assert "the exercise's model has `head.bias` [3], yours has not" in message


def test_a_layer_bypassed_with_forward_is_rejected():
    def forward(self, x):
        h = torch.relu(self.norm(self.fc.forward(x)))
        return self.head(h + self.block(h))

    message = rejected(student(forward))
    assert "`fc` (nn.Linear): its parameters are in the output's graph, but `fc(...)` was never called" in message


def test_a_students_block_bypassed_with_forward_is_rejected():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, h):
            return torch.tanh(self.lin(h))

    class Model(Reference):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            h = torch.relu(self.norm(self.fc(x)))
            return self.head(h + self.block.forward(h))

    message = rejected(Model)
    assert "`block` (Block)" in message


def test_a_reference_that_fails_is_the_graders_error():
    def broken(state, x, training):
        raise KeyError("no such tensor")

    with pytest.raises(GraderError, match="grader error in `check_matches_reference"):
        check_matches_reference(Reference, broken, EXAMPLE)


def test_token_inputs_need_no_input_gradient(capsys):
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, tokens):
            return self.head(self.embed(tokens))

    check_matches_reference(Tagger, Tagger, lambda device: torch.tensor([[1, 2, 3], [4, 5, 9]], device=device))
    assert capsys.readouterr().out.startswith("✓ matches the reference")
