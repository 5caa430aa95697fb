"""Unit 01: the reference answers pass every graded cell; the two broken models are rejected with the hint that
names their mistake; counting must be a formula (a layer built to count is named, sizes too large to build are
counted on the meta device); find_unregistered's check says which kind of mistake it sees; and the grader's own
diagnosis of hidden tensors is not a solution of Part D."""

import gc

import pytest
import torch
from torch import nn
from torch.nn.modules import module as torch_module

from conftest import printed_by, rejected, run_cells
from grader import check_counting, check_names, check_trainable_count
from grader.checks.diagnose import find_hidden

pytestmark = pytest.mark.device

NOTEBOOK = "solutions/01_registration/registration.ipynb"
GRADED = ("test_linear_params", "test_batchnorm_counts", "test_mlp_params", "test_super_net", "test_list_mlp_count",
          "test_list_mlp_trains", "test_find_unregistered_visible", "test_find_unregistered_hidden")


@pytest.fixture(scope="module")
def nb():
    return run_cells(NOTEBOOK, "setup", "counting_functions", "super_broken", "super_answer", "list_broken",
                     "list_answer", "find_answer")


def test_reference_passes_every_graded_cell_visible_and_hidden(nb, capsys):
    capsys.readouterr()
    run_cells(NOTEBOOK, *GRADED, namespace=nb)
    out, err = capsys.readouterr()
    assert err == "" and "✗" not in out
    assert out.count("✓") == 36  # 8 counting, 9 SuperNet, 3 + 10 FixedListMLP, 3 + 3 find_unregistered
    assert out.count("✓ matches the reference") == 7


# --- the broken models --------------------------------------------------------------------------------------

def test_missing_super_init_is_named(nb):
    rejected(lambda: check_trainable_count(lambda: nb["NoSuperNet"](20, 64, 10)),
             "cannot assign module before Module.__init__() call", "make `super().__init__()` the first line")
    assert "super().__init__()" in printed_by(NOTEBOOK, nb, "super_demo")


def test_plain_list_of_layers_is_named(nb):
    rejected(lambda: check_trainable_count(lambda: nb["ListMLP"]([20, 64, 32, 10])),
             "3 nn.Linear layers sit in a plain list at `self.layers` and are not registered: use nn.ModuleList")
    assert "use nn.ModuleList" in printed_by(NOTEBOOK, nb, "list_demo")


# --- counting by formula ------------------------------------------------------------------------------------

def test_a_function_that_builds_a_layer_is_named(capsys):
    def built(i, o):
        return sum(p.numel() for p in nn.Linear(i, o).parameters())

    def built_on_meta(c):
        return sum(b.numel() for b in nn.BatchNorm1d(c, device="meta").buffers())

    check_counting(built, nn.Linear, [(20, 64)])  # without formula=True, building is allowed
    rejected(lambda: check_counting(built, nn.Linear, [(20, 64)], formula=True),
             "built(20, 64) builds a layer to count: nn.Linear registered `weight` while it ran",
             "formula of the sizes")
    rejected(lambda: check_counting(built_on_meta, nn.BatchNorm1d, [4], counts="buffer elements", formula=True),
             "nn.BatchNorm1d registered `weight`")


def test_registration_hooks_are_removed_after_the_check():
    registries = (torch_module._global_parameter_registration_hooks, torch_module._global_buffer_registration_hooks,
                  torch_module._global_module_registration_hooks)
    before = [dict(r) for r in registries]
    check_counting(lambda i, o: i * o + o, nn.Linear, [(2, 3)], formula=True)
    with pytest.raises(Exception):
        check_counting(lambda i, o: sum(p.numel() for p in nn.Linear(i, o).parameters()), nn.Linear, [(2, 3)],
                       formula=True)
    assert [dict(r) for r in registries] == before


def test_sizes_too_large_to_build_are_counted_on_meta(capsys):
    check_counting(lambda i, o: (i + 1) * o, nn.Linear, [(10**7, 10**7)], formula=True)
    check_counting(lambda c: 2 * c + 1, nn.BatchNorm1d, [10**14], counts="buffer elements", formula=True)
    assert capsys.readouterr().out.count("✓") == 2
    rejected(lambda: check_counting(lambda i, o: torch.empty(o, i).numel() + o, nn.Linear, [(10**7, 10**7)],
                                    formula=True),
             "can't allocate memory", "too large for any machine to allocate")
    gc.collect()


def test_a_build_that_cannot_live_on_meta_is_built_for_real(capsys):
    class ItemInInit(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.fc = nn.Linear(n, int(torch.tensor(n).item()))  # .item() has no value on meta

    check_counting(lambda n: n * n + n, ItemInInit, [3], formula=True)
    assert "✓" in capsys.readouterr().out


# --- find_unregistered's check ------------------------------------------------------------------------------

class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.cache = [self.fc.weight]
        self.heads = {"cls": nn.Linear(2, 2)}
        self.stages = [[nn.Linear(2, 2)]]


@pytest.mark.parametrize("answer, fragments", [
    (["self.cache[0]", "self.heads['cls']", "self.stages[0][0]"],
     ["reported 'self.cache[0]', which it should not", "compare objects by identity"]),
    (["self.heads['cls']"], ["missed 'self.stages[0][0]'", "at any depth"]),
    (["self.heads[cls]", "self.stages[0][0]"], ["missed \"self.heads['cls']\"", "`[repr(key)]` for a dict item"]),
    (["self.heads['cls']", "self.stages[0][0]", "self.stages[0][0]"], ["more than once", "report each place once"]),
], ids=["registered alias", "nested", "key spelled with str", "twice"])
def test_check_names_hint_fits_the_mistake(answer, fragments):
    expected = ["self.heads['cls']", "self.stages[0][0]"]
    rejected(lambda: check_names(lambda model: answer, Holder(), expected), *fragments)


def test_reference_find_unregistered_reports_nested_and_skips_registered(nb, capsys):
    check_names(nb["find_unregistered"], Holder(), ["self.heads['cls']", "self.stages[0][0]"])
    assert "✓ find_unregistered: finds all 2 names in Holder" in capsys.readouterr().out


def test_graders_diagnosis_is_not_a_solution_of_part_d():
    """find_hidden reports containers, one level deep: a list of lists hides its layers from it, so a
    find_unregistered built on it fails Part D (the corpus grades such an answer: 'built on the grader's own
    diagnosis')."""
    found = {h.where: h for h in find_hidden(Holder())}
    assert set(found) == {"self.heads"}
    assert found["self.heads"].container == "dict"
