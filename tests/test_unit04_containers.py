"""Unit 04: each broken model of the assignment is rejected with the right hint, its fix passes, and the
count checks name the container mistakes (plain list, shared `[block] * n`, lazy layers)."""

import pytest
import torch
from torch import nn

from conftest import rejected, run_cells
from grader import (check_counting, check_device_transfer, check_eval_behaviour, check_gradient_flow,
                    check_learning, check_matches_reference, check_trainable_count)

pytestmark = pytest.mark.device

NOTEBOOK = "solutions/04_containers/containers.ipynb"
EXAMPLE = (8, 20)
TASKS = {"digit": 10, "parity": 2}


@pytest.fixture(scope="module")
def nb():
    """The assignment's own cells: broken models, reference answers and helpers."""
    return run_cells(NOTEBOOK, "setup", "ensemble_broken", "ensemble_answer", "multitask_broken", "multitask_grow",
                     "multitask_answer", "skip_broken", "skip_answer", "stem_broken", "stem_answer",
                     "residual_answer", "counts_model", "counts_answer")


def passes_every_check(make, example, expected, capsys):
    check_trainable_count(make, expected=expected)
    check_gradient_flow(make, example)
    check_learning(make, example)
    check_eval_behaviour(make, example)
    check_device_transfer(make, example)
    out, err = capsys.readouterr()
    assert out.count("✓") == 5 and "✗" not in out and err == ""


# --- Part A: the ensemble in a plain list --------------------------------------------------------------

def test_ensemble_in_a_plain_list_is_rejected(nb, capsys):
    broken = lambda: nb["Ensemble"](20, 32, 10, members=3)  # noqa: E731
    rejected(lambda: check_trainable_count(broken),
             "sees 3 trainable parameters; 3,006 more are hidden from it",
             "3 nn.Sequential layers sit in a plain list at `self.members`", "use nn.ModuleList")
    rejected(lambda: check_learning(broken, EXAMPLE),
             "model.parameters() does not list", "plain list at `self.members`", "nn.ModuleList / nn.ModuleDict")
    rejected(lambda: check_gradient_flow(broken, EXAMPLE), "plain list at `self.members`")
    rejected(lambda: check_device_transfer(broken, EXAMPLE), ".to() moves only registered tensors", "`self.members`")
    assert capsys.readouterr().err == ""


def test_ensemble_demo_shows_what_the_optimizer_and_state_dict_hold():
    ns = run_cells(NOTEBOOK, "setup", "ensemble_broken", "ensemble_demo")
    assert [tuple(p.shape) for p in ns["optimizer"].param_groups[0]["params"]] == [(3,)]
    assert list(ns["model"].state_dict()) == ["mix"]


def test_ensemble_fix_passes(nb, capsys):
    passes_every_check(lambda: nb["FixedEnsemble"](20, 32, 10, members=3), EXAMPLE,
                       3 * ((20 * 32 + 32) + (32 * 10 + 10)) + 3, capsys)


# --- Part B: the dict of heads ----------------------------------------------------------------------------

def test_heads_in_a_plain_dict_are_rejected(nb, capsys):
    broken = lambda: nb["MultiTaskNet"](20, 32, TASKS)  # noqa: E731
    rejected(lambda: check_trainable_count(broken),
             "sees 672 trainable parameters; 396 more are hidden from it",
             "2 nn.Linear layers sit in a plain dict at `self.heads`", "use nn.ModuleDict")
    rejected(lambda: check_learning(broken, EXAMPLE), "plain dict at `self.heads`", "nn.ModuleList / nn.ModuleDict")
    rejected(lambda: check_device_transfer(broken, EXAMPLE), "plain dict at `self.heads`")
    assert capsys.readouterr().err == ""


def test_multitask_demo_trains_the_trunk_and_never_the_heads():
    ns = run_cells(NOTEBOOK, "setup", "multitask_broken", "multitask_demo")
    moved = {name: not torch.equal(w, ns["start"][name]) for name, w in ns["watched"].items()}
    assert moved == {"trunk[0].weight": True, "heads['digit'].weight": False, "heads['parity'].weight": False}
    assert all(w.grad is not None for w in ns["watched"].values())


def test_multitask_fix_passes_with_an_added_task(nb, capsys):
    base = (20 * 32 + 32) + (32 * 10 + 10) + (32 * 2 + 2)
    passes_every_check(lambda: nb["grown"](20, 32, TASKS, {"size": 3}), EXAMPLE, base + (32 * 3 + 3), capsys)
    model = nb["grown"](20, 32, TASKS, {"size": 3})
    assert list(model(torch.randn(2, 20))) == ["digit", "parity", "size"]
    assert "heads.size.weight" in model.state_dict()


def test_add_task_into_a_plain_dict_is_rejected(nb):
    """A ModuleDict in __init__ but a plain dict rebuilt in add_task: the added head is hidden again."""
    class Rebuilds(nb["FixedMultiTaskNet"]):
        def add_task(self, task, classes):
            heads = dict(self.heads.items())
            heads[task] = nn.Linear(self.trunk[0].out_features, classes)
            del self.heads
            self.heads = heads

    def grown():
        model = Rebuilds(20, 32, TASKS)
        model.add_task("size", 3)
        return model

    rejected(lambda: check_trainable_count(grown, expected=(20 * 32 + 32) + (32 * 10 + 10) + (32 * 2 + 2) + (32 * 3 + 3)),
             "3 nn.Linear layers sit in a plain dict at `self.heads`", "use nn.ModuleDict")


def test_eval_check_compares_each_output_of_a_dict_on_its_own(nb):
    """Several outputs per sample: batch statistics in eval mode are still caught, tensor by tensor."""
    class BatchStatsHead(nb["FixedMultiTaskNet"]):
        def forward(self, x):
            out = super().forward(x)
            out["digit"] = out["digit"] - out["digit"].mean(dim=0)  # centred on the batch's mean, even in eval
            return out

    rejected(lambda: check_eval_behaviour(lambda: BatchStatsHead(20, 32, TASKS), EXAMPLE),
             "a sample's output depends on the other samples in its batch")


# --- Part C: a local layer in forward ------------------------------------------------------------------------

def test_local_projection_in_forward_is_rejected(nb, capsys):
    broken = lambda: nb["SkipNet"](20, 32, 10)  # noqa: E731
    rejected(lambda: check_learning(broken, EXAMPLE),
             "model.parameters() does not list", "a trainable tensor of shape [10, 20]", "a layer created inside forward")
    rejected(lambda: check_eval_behaviour(broken, EXAMPLE), "two eval-mode calls on the same input give different outputs",
             "created inside forward", "build every layer once in __init__")
    rejected(lambda: check_gradient_flow(broken, EXAMPLE), "takes part in forward but is not registered")
    rejected(lambda: check_trainable_count(broken, expected=(20 * 32 + 32) + (32 * 10 + 10) + 20 * 10), "too few")
    assert capsys.readouterr().err == ""


def test_local_projection_fix_passes(nb, capsys):
    passes_every_check(lambda: nb["FixedSkipNet"](20, 32, 10), EXAMPLE,
                       (20 * 32 + 32) + (32 * 10 + 10) + 20 * 10, capsys)


# --- Part D: self.stem assigned in forward --------------------------------------------------------------------

def test_stem_assigned_in_forward_is_rejected(nb, capsys):
    broken = lambda: nb["StemNet"](32, 10)  # noqa: E731
    for check in (check_learning, check_gradient_flow, check_eval_behaviour):
        rejected(lambda: check(broken, EXAMPLE),
                 "calling the model registers new parameters, so an optimizer built before it holds stale ones",
                 "`stem.weight` is a new tensor after forward", "`self.stem` is assigned inside forward")
    rejected(lambda: check_trainable_count(broken, expected=(20 * 32 + 32) + (32 * 10 + 10)),
             "the model has 330 trainable parameters; the exercise asks for 1,002", "too few")
    assert capsys.readouterr().err == ""


def test_stem_demo_shows_the_optimizer_holding_a_stale_layer():
    ns = run_cells(NOTEBOOK, "setup", "stem_broken", "stem_demo")
    stale = ns["held"]["stem.weight"]
    assert ns["model"].stem.weight is not stale and stale.grad is None
    assert ns["model"].stem.weight.grad is not None


def test_stem_fix_passes(nb, capsys):
    passes_every_check(lambda: nb["FixedStemNet"](20, 32, 10), EXAMPLE, (20 * 32 + 32) + (32 * 10 + 10), capsys)


def test_a_lazy_stem_is_named_by_the_count_check(nb, capsys):
    class LazyStem(nb["FixedStemNet"]):
        def __init__(self, in_features, hidden, out_features):
            super().__init__(in_features, hidden, out_features)
            self.stem = nn.LazyLinear(hidden)

    rejected(lambda: check_trainable_count(lambda: LazyStem(20, 32, 10), expected=(20 * 32 + 32) + (32 * 10 + 10)),
             "2 parameters have no size yet", "`stem.weight` is uninitialized", "nn.Linear(in_features, out_features)")
    check_learning(lambda: LazyStem(20, 32, 10), EXAMPLE)  # sized in place at the first call: nothing stale
    assert capsys.readouterr().err == ""


# --- Part E: the residual MLP ----------------------------------------------------------------------------------

def block_count(width, hidden):
    return (width * hidden + hidden) + 2 * hidden + (hidden * width + width) + 2 * width


def test_residual_mlp_passes_and_matches_the_facts(nb, capsys):
    passes_every_check(lambda: nb["ResidualMLP"](20, 64, 16, 3, 10), EXAMPLE,
                       (20 * 64 + 64) + 2 * 64 + 3 * block_count(64, 16) + (64 * 10 + 10), capsys)
    model = nb["ResidualMLP"](784, 256, 128, 4, 10)
    assert sum(p.numel() for p in model.parameters()) == 470_794
    assert sum(p.numel() for p in model.blocks[0].parameters()) == block_count(256, 128) == 66_688
    assert isinstance(model.blocks, nn.ModuleList) and "blocks.3.4.running_var" in model.state_dict()


def test_residual_blocks_in_a_plain_list_are_rejected(nb):
    class ListBlocks(nb["ResidualMLP"]):
        def __init__(self, *sizes):
            super().__init__(*sizes)
            blocks = list(self.blocks)
            del self.blocks
            self.blocks = blocks

    rejected(lambda: check_trainable_count(lambda: ListBlocks(20, 64, 16, 3, 10)),
             "3 nn.Sequential layers sit in a plain list at `self.blocks`", "use nn.ModuleList")
    rejected(lambda: check_device_transfer(lambda: ListBlocks(20, 64, 16, 3, 10), EXAMPLE), "plain list at `self.blocks`")


def test_one_block_repeated_is_named_as_shared(nb):
    """nn.ModuleList([branch] * n) holds one branch n times: parameters() counts it once."""
    class Repeated(nb["ResidualMLP"]):
        def __init__(self, in_features, width, hidden, blocks, out_features):
            super().__init__(in_features, width, hidden, blocks, out_features)
            self.blocks = nn.ModuleList([self.blocks[0]] * blocks)

    rejected(lambda: check_trainable_count(lambda: Repeated(20, 64, 16, 3, 10),
                                           expected=(20 * 64 + 64) + 2 * 64 + 3 * block_count(64, 16) + (64 * 10 + 10)),
             "too few", "`blocks.0` and `blocks.1` and `blocks.2` are one shared module", "counts its parameters once")


# --- Part F: counting by hand ---------------------------------------------------------------------------------

def test_reference_formulas_match_torch(nb, capsys):
    check_counting(nb["residual_mlp_params"], nb["ResidualMLP"], [(20, 64, 16, 3, 10), (5, 6, 3, 0, 2)])
    check_counting(nb["multitask_params"], lambda i, h, t: nb["FixedMultiTaskNet"](i, h, t), [(20, 32, TASKS), (5, 4, {})])
    check_counting(nb["tied_lm_params"], nb["TiedLM"], [(100, 16)])
    check_counting(nb["tied_lm_saved"], nb["TiedLM"], [(100, 16)], counts="state_dict elements")
    assert capsys.readouterr().out.count("✓") == 4


def test_tied_counts_that_miss_the_sharing_are_rejected(nb):
    params, saved = nb["tied_lm_params"], nb["tied_lm_saved"]

    def tied_lm_params(vocab, dim):  # counts the shared matrix twice
        return params(vocab, dim) + vocab * dim

    def tied_lm_saved(vocab, dim):  # assumes state_dict() keeps one key per tensor, like parameters()
        return params(vocab, dim)

    # 100 * 16 (the shared matrix) + (16 * 16 + 16) + 100 = 1,972 trainable; the matrix is saved twice: 3,572
    rejected(lambda: check_counting(tied_lm_params, nb["TiedLM"], [(100, 16)]),
             "tied_lm_params(100, 16) returned 3572", "TiedLM built with (100, 16) has 1,972 trainable parameters")
    rejected(lambda: check_counting(tied_lm_saved, nb["TiedLM"], [(100, 16)], counts="state_dict elements"),
             "tied_lm_saved(100, 16) returned 1972", "has 3,572 state_dict elements")
    assert (params(100, 16), saved(100, 16)) == (1972, 3572)


def test_tied_lm_shares_one_parameter_under_two_keys(nb):
    model = nb["TiedLM"](10, 4)
    assert model.out.weight is model.embed.weight
    assert [n for n, _ in model.named_parameters()] == ["embed.weight", "mix.weight", "mix.bias", "out.bias"]
    assert list(model.state_dict()) == ["embed.weight", "mix.weight", "mix.bias", "out.weight", "out.bias"]


# --- what the models compute: the hidden references ----------------------------------------------------------

class SkipReference(nn.Module):
    def __init__(self, in_features, hidden, out_features):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))
        self.project = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x):
        return self.body(x) + self.project(x)


def test_a_bare_parameter_projection_is_matched_to_the_reference_by_shape(nb, capsys):
    """state_dict() lists a module's own parameters before its children: the reference pairs tensors by shape."""
    class BareProjection(nn.Module):
        def __init__(self, in_features, hidden, out_features):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))
            self.project = nn.Parameter(torch.randn(out_features, in_features) / in_features ** 0.5)

        def forward(self, x):
            return self.body(x) + x @ self.project.T

    assert list(BareProjection(3, 5, 7).state_dict())[0] == "project"
    check_matches_reference(lambda: BareProjection(3, 5, 7), lambda: SkipReference(3, 5, 7), (2, 3))
    assert "✓ matches the reference" in capsys.readouterr().out

    class Subtracts(BareProjection):
        def forward(self, x):
            return self.body(x) - x @ self.project.T

    rejected(lambda: check_matches_reference(lambda: Subtracts(3, 5, 7), lambda: SkipReference(3, 5, 7), (2, 3)),
             "your train-mode `output` differs from the exercise's")


def test_a_dict_of_outputs_in_another_key_order_matches(nb, capsys):
    class Sorted(nb["FixedMultiTaskNet"]):
        def forward(self, x):
            out = super().forward(x)
            return {task: out[task] for task in sorted(out, reverse=True)}

    check_matches_reference(lambda: Sorted(5, 4, {"a": 1, "b": 7}),
                            lambda: nb["FixedMultiTaskNet"](5, 4, {"a": 1, "b": 7}), (3, 5))
    assert "✓ matches the reference" in capsys.readouterr().out


@pytest.mark.parametrize("step, fragments", [
    ("x = torch.relu(branch(x))", ["your train-mode `output` differs from the exercise's"]),
    ("x = x + branch(x)", ["your train-mode `output` differs from the exercise's"]),
    ("x = torch.relu(x - branch(x))", ["your train-mode `output` differs from the exercise's"]),
    ("x += branch(x); x = torch.relu(x)", ["backward() through your train-mode output raised RuntimeError",
                                           "modified by an inplace operation"]),
])
def test_residual_forwards_that_differ_are_rejected(nb, step, fragments):
    namespace = {"torch": torch}
    exec(f"def forward(self, x):\n    x = self.stem(x)\n    for branch in self.blocks:\n        {step}\n"
         "    return self.head(x)\n", namespace)
    wrong = type("Wrong", (nb["ResidualMLP"],), {"forward": namespace["forward"]})
    message = rejected(lambda: check_matches_reference(lambda: wrong(5, 6, 3, 2, 2),
                                                       lambda: nb["ResidualMLP"](5, 6, 3, 2, 2), (4, 5)), *fragments)
    assert "enable anomaly detection" not in message
    check_matches_reference(lambda: nb["ResidualMLP"](5, 6, 3, 0, 2), lambda: wrong(5, 6, 3, 0, 2), (4, 5))  # 0 blocks
