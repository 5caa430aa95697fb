"""Unit 08, state, devices and functional modules: each broken model and broken function of the assignment is
rejected with its hint, its demo cell prints that diagnosis, the reference answers pass; and the unit's checks
(check_loads_checkpoint, check_materializes, check_ensemble_forward, check_plain_state_dict) and the dotted-name
diagnosis of check_matches_reference hold on their own: right or silent, no state left behind, grader errors
reported as the grader's."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal, weight_norm

from conftest import printed_by, rejected, run_cells
from grader import (GraderError, check_ensemble_forward, check_loads_checkpoint, check_matches_reference,
                    check_materializes, check_plain_state_dict)
from grader.checks.diagnose import describe_error, explain_error

pytestmark = pytest.mark.device

NOTEBOOK = "solutions/08_state_devices_functional/state_devices_functional.ipynb"
CELLS = ("setup", "upgrade_classes", "upgrade_answer", "materialize_classes", "materialize_answer",
         "ensemble_classes", "ensemble_answer", "plain_classes", "plain_answer", "lora_classes", "lora_answer")


@pytest.fixture(scope="module")
def nb():
    """The assignment's own cells: the set-up, the given classes and the reference answers."""
    return run_cells(NOTEBOOK, *CELLS)


def verdicts(capsys) -> list[str]:
    out, err = capsys.readouterr()
    assert err == "", f"a check wrote to stderr: {err}"
    return out.splitlines()


# --- Part A: a checkpoint from an older version -------------------------------------------------------------

def test_old_checkpoint_demo_shows_strict_false_and_the_diagnosis(nb):
    demo = printed_by(NOTEBOOK, nb, "upgrade_demo")
    assert "versions in _metadata: {'': 1, 'fc': 1}" in demo
    assert "missing_keys=['linear.weight', 'linear.bias'], unexpected_keys=['fc.weight', 'fc.bias']" in demo
    assert "new(x) equals old(x): False" in demo
    assert ("✗ loads checkpoint [cpu]: NewScaledLinear cannot load OldScaledLinear's checkpoint (_metadata: version 1) "
            "with strict=True") in demo
    assert 'Unexpected key(s) in state_dict: "fc.weight", "fc.bias".' in demo and "local_metadata.get('version')" in demo


def test_reference_upgrade_loads_every_version(nb, capsys):
    upgraded, old, v2 = nb["ScaledLinear"], nb["OldScaledLinear"], nb["ScaledLinearV2"]
    for saved_by in (old, v2, upgraded):
        check_loads_checkpoint(lambda: nn.Sequential(upgraded(5, 4), nn.ReLU(), upgraded(4, 2)),
                               lambda: nn.Sequential(saved_by(5, 4), nn.ReLU(), saved_by(4, 2)), example=(3, 5))
    check_loads_checkpoint(lambda: upgraded(5, 4), lambda: old(5, 4), example=(3, 5), metadata=False)
    lines = verdicts(capsys)
    assert len(lines) == 4 and all(line.startswith("✓ loads checkpoint: ") for line in lines)
    assert "(_metadata: versions 1, 2)" in lines[1] and "(no _metadata)" in lines[3]


def test_a_new_class_without_upgrade_is_rejected_with_the_versions(nb):
    rejected(lambda: check_loads_checkpoint(lambda: nb["NewScaledLinear"](5, 4), lambda: nb["ScaledLinearV2"](5, 4),
                                            example=(3, 5)),
             "(_metadata: versions 1, 2)", 'Missing key(s) in state_dict: "linear.weight", "linear.bias".',
             "once per module")


def test_an_upgrade_applied_to_the_wrong_version_shows_the_outputs_side_by_side(nb):
    class Always(nb["NewScaledLinear"]):  # takes the exponential whatever the version
        def _load_from_state_dict(self, state_dict, prefix, *args):
            state_dict[prefix + "scale"] = state_dict[prefix + "scale"].exp()
            for name in ("weight", "bias"):
                if prefix + "fc." + name in state_dict:
                    state_dict[prefix + "linear." + name] = state_dict.pop(prefix + "fc." + name)
            super()._load_from_state_dict(state_dict, prefix, *args)

    rejected(lambda: check_loads_checkpoint(lambda: Always(5, 4), lambda: nb["ScaledLinearV2"](5, 4), example=(3, 5)),
             "with ScaledLinearV2's checkpoint (_metadata: versions 1, 2) loaded, your train-mode output differs",
             "yours:", "largest gap")


def test_an_upgrade_in_place_is_caught_on_the_checkpoint(nb):
    class InPlace(nb["NewScaledLinear"]):
        def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
            if local_metadata.get("version", 1) < 2:
                state_dict[prefix + "scale"].exp_()
            for name in ("weight", "bias"):
                if prefix + "fc." + name in state_dict:
                    state_dict[prefix + "linear." + name] = state_dict.pop(prefix + "fc." + name)
            super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    rejected(lambda: check_loads_checkpoint(lambda: InPlace(5, 4), lambda: nb["OldScaledLinear"](5, 4), example=(3, 5)),
             "loading changed the checkpoint's own tensors in place", "`scale`", "not `t.exp_()`")


def test_an_error_inside_the_upgrade_names_the_students_line(nb):
    class Raises(nb["NewScaledLinear"]):
        def _load_from_state_dict(self, state_dict, prefix, *args):
            state_dict[prefix + "linear.weight"] = state_dict.pop("fc.weight")  # forgets the prefix
            super()._load_from_state_dict(state_dict, prefix, *args)

    rejected(lambda: check_loads_checkpoint(lambda: nn.Sequential(Raises(5, 4)),
                                            lambda: nn.Sequential(nb["OldScaledLinear"](5, 4)), example=(3, 5)),
             "raised KeyError: 'fc.weight'", "(in `_load_from_state_dict`, line")


# --- Part B: a model built on meta ---------------------------------------------------------------------------

def test_meta_demo_shows_the_failures_and_uninitialised_memory(nb):
    demo = printed_by(NOTEBOOK, nb, "materialize_demo")
    assert "embed.weight: meta (100, 16)" in demo and "a forward pass gives a tensor on meta" in demo
    assert "big.to('cpu'): NotImplementedError: Cannot copy out of meta tensor" in demo
    assert "✗ materializes [cpu]: after materialize, 8 tensors still hold uninitialised memory" in demo
    assert "`position.table`" in demo and "reset_parameters()" in demo


def test_reference_materialize_passes_and_leaves_torch_as_it_was(nb, capsys):
    mode, fill = torch.get_deterministic_debug_mode(), torch.utils.deterministic.fill_uninitialized_memory
    check_materializes(nb["materialize"], nb["TinyEncoder"], example=nb["tokens"])
    check_materializes(nb["materialize"], lambda: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), example=(2, 4))
    lines = verdicts(capsys)
    assert lines[0].startswith("✓ materializes: TinyEncoder built on meta: materialize gives its 8 tensors on cpu")
    assert len(lines) == 2
    assert torch.get_deterministic_debug_mode() == mode and torch.utils.deterministic.fill_uninitialized_memory == fill
    assert not torch.isnan(torch.empty(1000)).all() or mode  # empty memory is no longer filled


def test_meta_model_never_materialised_is_rejected(nb):
    rejected(lambda: check_materializes(lambda model, device: model, nb["TinyEncoder"], example=nb["tokens"]),
             "8 tensors of TinyEncoder are still on the meta device", "to_empty(device=device)")


def test_wrong_initialisation_is_named_by_tensor(nb):
    def normal_everywhere(model, device):
        model.to_empty(device=device)
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            with torch.no_grad():
                if tensor.is_floating_point():
                    tensor.normal_()
                else:
                    tensor.zero_()
        return model

    rejected(lambda: check_materializes(normal_everywhere, lambda: nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32)),
                                        example=(8, 20)),
             "is not initialised as a fresh nn.Sequential", "`0.weight` reaches", "`1.weight` is [", "a fresh model's is [1, 1, 1, 1")


def test_the_stub_and_a_meta_copy_are_explained(nb):
    def stub(model, device):
        raise NotImplementedError("replace this line with your code")

    rejected(lambda: check_materializes(stub, nb["TinyEncoder"], example=nb["tokens"]), "replace that line with your code")
    error = pytest.raises(NotImplementedError, nn.Linear(2, 2, device="meta").to, "cpu").value
    assert "to_empty(device=...)" in explain_error(error) and "stub" not in explain_error(error)
    with torch.device("meta"):
        model = nn.BatchNorm1d(2)
    error = pytest.raises(RuntimeError, model, torch.randn(3, 2)).value
    assert "never materialised" in explain_error(error)


# --- Part C: an ensemble through functional_call --------------------------------------------------------------

def test_ensemble_demo_shows_member_zero_right_and_the_others_wrong(nb):
    demo = printed_by(NOTEBOOK, nb, "ensemble_demo")
    assert "each member's own output: [True, False, False]" in demo
    assert "✗ ensemble forward [cpu]: out[1] differs from member 1's output" in demo
    assert "member 0's buffers" in demo and "functional_call(model, (params, buffers), args)" in demo


def test_reference_ensemble_passes_with_a_copy_and_with_a_meta_template(nb, capsys):
    for template in ("copy", "meta"):
        check_ensemble_forward(nb["ensemble_forward"], nb["make_member"], example=(8, 20), template=template)
    check_ensemble_forward(nb["ensemble_forward"], lambda: nn.Linear(3, 2), example=(4, 3), members=1)
    lines = verdicts(capsys)
    assert len(lines) == 3
    assert lines[0].startswith("✓ ensemble forward: 3 members of nn.Sequential in one call: outputs, parameter and "
                               "input gradients match each member's own call (6 stacked parameters, 3 stacked buffers)")


def test_forgotten_buffers_fail_loudly_on_meta(nb):
    rejected(lambda: check_ensemble_forward(nb["ensemble_forward_params_only"], nb["make_member"], example=(8, 20),
                                            template="meta"),
             "raised RuntimeError: Tensor on device meta is not on the expected device cpu!",
             "every parameter and every buffer must come from the dicts")


def test_the_buffers_hint_is_silent_when_the_mistake_is_another(nb):
    def scaled(model, params, buffers, x):  # right buffers, wrong output: twice every member's
        return 2 * vmap(lambda p, b: functional_call(model, (p, b), (x,)))(params, buffers)

    message = rejected(lambda: check_ensemble_forward(scaled, nb["make_member"], example=(8, 20)),
                       "out[0] differs from member 0's output")
    assert "buffers" not in message


def test_an_ensemble_that_changes_its_dicts_is_rejected(nb):
    def pops(model, params, buffers, x):
        buffers = dict(buffers)
        out = nb["ensemble_forward"](model, params, buffers, x)
        params.pop(next(iter(params)))
        return out

    rejected(lambda: check_ensemble_forward(pops, nb["make_member"], example=(8, 20), gradients=False),
             "ensemble_forward changed `params`", "`0.weight`")


# --- Part D: a parametrized model's plain state_dict --------------------------------------------------------------

def test_plain_demo_shows_the_refused_keys(nb):
    demo = printed_by(NOTEBOOK, nb, "plain_demo")
    assert "'0.parametrizations.weight.original0', '0.parametrizations.weight.original1'" in demo
    assert "type of trained[0]: ParametrizedLinear | weight computed by: WeightNormInterfaceBackward0" in demo
    assert 'Missing key(s) in state_dict: "0.weight", "2.weight".' in demo


def test_reference_plain_state_dict_passes_both_parts(nb, capsys):
    check_plain_state_dict(nb["plain_state_dict"], nb["make_parametrized"], nb["make_plain"], example=(8, 20))
    check_plain_state_dict(nb["plain_state_dict"], lambda: weight_norm(nn.Linear(3, 2)), lambda: nn.Linear(3, 2),
                           example=(4, 3))
    lines = verdicts(capsys)
    assert lines == ["✓ plain state_dict: 2 parametrized tensors as plain ones: the plain nn.Sequential loads it with "
                     "strict=True and computes what the parametrized one does; the model keeps its parametrizations; "
                     "every tensor is detached [cpu]",
                     "✓ plain state_dict: 1 parametrized tensor as plain ones: the plain nn.Linear loads it with "
                     "strict=True and computes what the parametrized one does; the model keeps its parametrizations; "
                     "every tensor is detached [cpu]"]


def test_deepcopy_then_remove_breaks_the_original_and_is_named(nb):
    def deepcopy_and_remove(model):
        copied = copy.deepcopy(model)
        for module in copied.modules():
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations):
                    parametrize.remove_parametrizations(module, name)
        return copied.state_dict()

    check_plain_state_dict(deepcopy_and_remove, nb["make_parametrized"], nb["make_plain"], example=(8, 20),
                           parts=("loads",))  # the dict itself is right
    rejected(lambda: check_plain_state_dict(deepcopy_and_remove, nb["make_parametrized"], nb["make_plain"],
                                            example=(8, 20), parts=("model",)),
             "the model's `0` can no longer compute `weight`", "shares each parametrized layer's class")


def test_torch_really_shares_the_class_between_copies():
    """The fact the diagnosis above relies on (torch 2.13): a deepcopy keeps the parametrized class object."""
    layer = orthogonal(nn.Linear(3, 3))
    twin = copy.deepcopy(layer)
    assert type(twin) is type(layer)
    parametrize.remove_parametrizations(twin, "weight")
    with pytest.raises(AttributeError, match="has no attribute 'weight'"):
        layer.weight


def test_a_model_without_parametrizations_is_the_tests_error_not_the_students(nb):
    with pytest.raises(GraderError, match="check_plain_state_dict"):
        check_plain_state_dict(nb["plain_state_dict"], nb["make_plain"], nb["make_plain"], example=(8, 20))


def test_plain_state_dict_that_returns_nothing_or_a_model_is_rejected(nb):
    rejected(lambda: check_plain_state_dict(lambda model: None, nb["make_parametrized"], nb["make_plain"],
                                            example=(8, 20)), "plain_state_dict(model) returned None")
    rejected(lambda: check_plain_state_dict(lambda model: model, nb["make_parametrized"], nb["make_plain"],
                                            example=(8, 20)), "got a model", "model.state_dict()")


# --- Part E: model surgery -----------------------------------------------------------------------------------------

def test_lora_demo_shows_unused_parameters_and_the_dotted_children(nb):
    demo = printed_by(NOTEBOOK, nb, "lora_demo")
    assert "the output depends on them: False" in demo
    assert "children of the model: ['body', 'heads', 'body.0', 'body.2', 'heads.0', 'heads.1']" in demo
    assert "registers a layer under a name with a dot" in demo and "model.set_submodule('body.0', layer)" in demo


def test_reference_add_lora_passes(nb, capsys):
    lora = nb["LoRALinear"]

    class WithLoRA(nb["Classifier"]):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(lora(nn.Linear(20, 32), 2), nn.ReLU(), lora(nn.Linear(32, 32), 2), nn.ReLU())
            self.heads = nn.ModuleList([lora(nn.Linear(32, 10), 2), lora(nn.Linear(32, 2), 2)])

    check_matches_reference(lambda: nb["with_random_lora"](nb["add_lora"](nb["Classifier"](), 2)), WithLoRA,
                            example=(8, 20))
    assert verdicts(capsys) == ["✓ matches the reference: Classifier's outputs, input gradients and 8 parameter "
                                "gradients agree with the exercise's model in train and eval mode [cpu]"]


def test_a_dotted_child_is_named_only_when_there_is_one(nb):
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 3))

        def forward(self, x):
            return self.body(x)

    dotted = Holder()
    setattr(dotted, "body.0", nn.Linear(3, 3))  # a new child named "body.0"; body[0] stays
    rejected(lambda: check_matches_reference(dotted, lambda: nn.Sequential(nn.Linear(3, 3)), (2, 3)),
             "`body.0` is a child of its own")
    message = rejected(lambda: check_matches_reference(Holder, lambda: nn.Sequential(nn.Linear(3, 4)), (2, 3)),
                       "your model does not hold the tensors the exercise describes")
    assert "a name with a dot" not in message


def test_endless_recursion_names_the_line_that_keeps_calling():
    def walk(depth):
        return [walk(depth + 1)]

    error = pytest.raises(RecursionError, walk, 0).value
    assert "(in `walk`, line" in describe_error(error) and ": `return [walk(depth + 1)]`)" in describe_error(error)
