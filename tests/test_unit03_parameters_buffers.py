"""Unit 03: the broken models of the assignment are rejected with the right hint, their fixes pass, and
check_matches_torch names the usual BatchNorm mistakes."""

import functools

import pytest
import torch
from torch import nn

from conftest import rejected, run_cells
from grader import (GraderError, check_device_transfer, check_gradient_flow, check_learning,
                    check_matches_reference, check_matches_torch, check_roles, check_tensors, check_trainable_count)

pytestmark = pytest.mark.device

NOTEBOOK = "solutions/03_parameters_buffers/parameters_buffers.ipynb"
BN_NAMES = dict(parameters=["weight", "bias"], buffers=["running_mean", "running_var", "num_batches_tracked"])


@pytest.fixture(scope="module")
def nb():
    """The assignment's own cells: broken models, reference answers and helpers."""
    return run_cells(NOTEBOOK, "setup", "bn_answer", "mask_broken", "mask_answer", "stats_broken", "stats_answer",
                     "ema_names", "ema_answer", "ema_helpers", "freeze_model", "freeze_answer")


# --- Part A: the reference BatchNorm passes; each usual mistake is named ---------------------------

@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"momentum": 0.3, "eps": 1e-3}])
def test_reference_batchnorm_matches_torch(nb, kwargs, capsys):
    check_matches_torch(nb["MyBatchNorm1d"], nn.BatchNorm1d, 5, example=(7, 5), steps=4, **kwargs)
    check_roles(lambda: nb["MyBatchNorm1d"](5, **kwargs), **BN_NAMES)
    out, err = capsys.readouterr()
    assert out.count("✓") == 2 and err == ""
    assert "matches nn.BatchNorm1d(5" in out and "agree over 4 train steps and eval" in out


class VariantBN(nn.Module):
    """A BatchNorm1d re-implementation with a switch for each mistake the check must name."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, *, norm_var=0, running_var=1, count=True,
                 none_as=None, eval_stats="running", stats_as="buffer", counter_dtype=torch.long,
                 swap_momentum=False, detach=True, update_in_eval=False, swap_affine=False, shape=None):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.norm_var, self.running_var_correction, self.count = norm_var, running_var, count
        self.none_as, self.eval_stats, self.swap_momentum = none_as, eval_stats, swap_momentum
        self.detach, self.update_in_eval, self.swap_affine = detach, update_in_eval, swap_affine
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        stats = torch.zeros(shape or num_features), torch.ones(shape or num_features)
        if stats_as == "buffer":
            self.register_buffer("running_mean", stats[0])
            self.register_buffer("running_var", stats[1])
        elif stats_as == "parameter":
            self.running_mean = nn.Parameter(stats[0], requires_grad=False)
            self.running_var = nn.Parameter(stats[1], requires_grad=False)
        else:  # plain tensors
            self.running_mean, self.running_var = stats
        if count:
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=counter_dtype))

    def forward(self, x):
        if self.training or self.eval_stats == "batch":
            mean, var = x.mean(0), x.var(0, correction=self.norm_var)
        else:
            mean, var = self.running_mean, self.running_var
        if self.training or self.update_in_eval:
            batch_mean, batch_var = x.mean(0), x.var(0, correction=self.running_var_correction)
            if self.count:
                self.num_batches_tracked += 1
            f = self.momentum
            if f is None:
                f = self.none_as if self.none_as is not None else 1.0 / float(self.num_batches_tracked)
            if self.swap_momentum:
                f = 1 - f
            if self.detach:
                with torch.no_grad():
                    self.running_mean.lerp_(batch_mean.view_as(self.running_mean), f)
                    self.running_var.lerp_(batch_var.view_as(self.running_var), f)
            else:  # keeps the graph in the buffers
                self.running_mean = (1 - f) * self.running_mean + f * batch_mean
                self.running_var = (1 - f) * self.running_var + f * batch_var
        weight, bias = (self.bias, self.weight) if self.swap_affine else (self.weight, self.bias)
        return (x - mean.flatten()) / torch.sqrt(var.flatten() + self.eps) * weight + bias


# (variant options, nn.BatchNorm1d options, fragments the failure must contain)
MISTAKES = [
    ({"norm_var": 1}, {}, ["at train step 1, the output differs from torch", "yours: [", "torch: [",
                          "normalise with the unbiased variance (divided by N - 1)"]),
    ({"running_var": 0}, {}, ["after train step 1, `running_var` differs from torch",
                              "running_var must hold the unbiased variance (divided by N - 1)"]),
    ({"count": False}, {}, ["torch has a buffer `num_batches_tracked` (shape [], torch.int64); yours has no tensor",
                            "register `num_batches_tracked` as a buffer"]),
    ({"count": False}, {"momentum": None}, ["`num_batches_tracked`"]),
    ({"none_as": 0.1}, {"momentum": None}, ["`running_mean` differs from torch",
                                            "momentum=None is treated like momentum=0.1",
                                            "1 / num_batches_tracked"]),
    ({"eval_stats": "batch"}, {}, ["in eval mode, the output differs from torch",
                                   "torch normalises with running_mean and running_var"]),
    ({"stats_as": "parameter"}, {}, ["`running_mean` is an nn.Parameter in yours, a buffer in torch",
                                     "`running_var` is an nn.Parameter in yours", "self.register_buffer"]),
    ({"stats_as": "plain"}, {}, ["yours keeps a plain tensor at `self.running_mean`", "register_buffer"]),
    ({"counter_dtype": torch.float32}, {}, ["`num_batches_tracked` is torch.float32 in yours, torch.int64 in torch",
                                            "torch.tensor(0, dtype=torch.long)"]),
    ({"swap_momentum": True}, {}, ["`running_mean` differs", "(1 - momentum) * running_mean + momentum * batch"]),
    ({"detach": False}, {}, ["after train step 1, a buffer holds an autograd graph",
                             "buffer `running_mean` requires grad", "torch.no_grad()"]),
    ({"update_in_eval": True}, {}, ["buffers changed during an eval-mode forward",
                                    "`num_batches_tracked` was 3 before the call, 4 after", "self.training"]),
    ({"swap_affine": True}, {}, ["weight and bias are swapped"]),
    ({"shape": (1, 6)}, {}, ["`running_mean` has shape [1, 6] in yours, [6] in torch", "shape (num_features,)"]),
]


@pytest.mark.parametrize("options, torch_options, fragments", MISTAKES,
                         ids=[f"{'-'.join(map(str, o))}-{'-'.join(map(str, t)) or 'default'}" for o, t, _ in MISTAKES])
def test_each_batchnorm_mistake_is_named(options, torch_options, fragments, capsys):
    build = lambda *args, **kwargs: VariantBN(*args, **kwargs, **options)  # noqa: E731
    rejected(lambda: check_matches_torch(build, nn.BatchNorm1d, 6, example=(8, 6), **torch_options), *fragments)
    assert capsys.readouterr().err == ""


def test_the_variant_without_mistakes_passes():
    check_matches_torch(VariantBN, nn.BatchNorm1d, 6, example=(8, 6))
    check_matches_torch(VariantBN, nn.BatchNorm1d, 6, momentum=None, example=(8, 6), steps=5)


def test_wrong_initial_values_are_reported():
    def zeros_var(n):
        layer = VariantBN(n)
        layer.running_var.zero_()
        return layer

    rejected(lambda: check_matches_torch(zeros_var, nn.BatchNorm1d, 4, example=(6, 4)),
             "before any step, `running_var` differs from torch's initial value", "yours: [0.0000", "torch: [1.0000")


def test_the_stub_is_reported_as_the_stub():
    class Stub(nn.Module):
        def __init__(self, n):
            super().__init__()
            raise NotImplementedError("replace this line with your code")

    rejected(lambda: check_matches_torch(Stub, nn.BatchNorm1d, 4, example=(6, 4)),
             "building the model raised NotImplementedError", "replace that line with your code")


def test_gradients_cut_from_the_batch_statistics_are_reported(nb):
    class DetachedStats(nb["MyBatchNorm1d"]):
        def forward(self, x):
            if not self.training:
                return super().forward(x)
            super().forward(x)  # updates the running statistics
            mean, var = x.mean(0).detach(), x.var(0, correction=0).detach()
            return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias

    rejected(lambda: check_matches_torch(DetachedStats, nn.BatchNorm1d, 4, example=(6, 4)),
             "the outputs agree but the gradient of the input differs",
             "the batch mean and variance you normalise with are cut from the autograd graph")


class EpsVariant(VariantBN):
    """eps misplaced: outside the square root, or left out. With the default eps=1e-5 the outputs stay within
    tolerance, so only the gradient can tell; the hint must name eps, not a graph cut that is not there."""

    def __init__(self, *args, eps_at="missing", **kwargs):
        super().__init__(*args, **kwargs)
        self.eps_at = eps_at

    def forward(self, x):
        super().forward(x)  # the running statistics, as torch updates them
        mean, var = (x.mean(0), x.var(0, correction=0)) if self.training else (self.running_mean, self.running_var)
        scale = torch.sqrt(var) + self.eps if self.eps_at == "outside" else torch.sqrt(var)
        return (x - mean) / scale * self.weight + self.bias


@pytest.mark.parametrize("eps, fragments", [
    (1e-5, ["the outputs agree but the gradient of the input differs", "largest gap", "eps is missing"]),
    (1e-3, ["the output differs from torch", "eps is missing: torch divides by sqrt(var + eps)"]),
])
def test_a_missing_eps_is_named_not_blamed_on_the_graph(eps, fragments):
    message = rejected(lambda: check_matches_torch(EpsVariant, nn.BatchNorm1d, 6, eps=eps, example=(8, 6)), *fragments)
    assert "autograd graph" not in message


def test_eps_outside_the_square_root_is_named():
    build = lambda *args, **kwargs: EpsVariant(*args, eps_at="outside", **kwargs)  # noqa: E731
    rejected(lambda: check_matches_torch(build, nn.BatchNorm1d, 17, eps=1e-3, example=(32, 17)),
             "eps goes inside the square root")


def test_a_generic_layer_is_compared_too():
    class MyLinear(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(o, i))
            self.bias = nn.Parameter(torch.zeros(o))

        def forward(self, x):
            return x @ self.weight.T + self.bias

    check_matches_torch(MyLinear, nn.Linear, 3, 2, example=(4, 3))
    no_bias = lambda i, o: nn.Linear(i, o, bias=False)  # noqa: E731
    rejected(lambda: check_matches_torch(MyLinear, no_bias, 3, 2, example=(4, 3)),
             "yours has an nn.Parameter `bias`, which torch does not")


# --- Part B: the plain-tensor mask ---------------------------------------------------------------

def test_plain_tensor_mask_is_rejected_and_the_fix_passes(nb, capsys):
    broken, fixed = nb["MaskedLinear"], nb["FixedMaskedLinear"]
    rejected(lambda: check_device_transfer(lambda: broken(4), example=(2, 4)),
             "plain tensor (shape [4, 4]) at `self.mask` is not registered", "register_buffer")
    rejected(lambda: check_roles(lambda: broken(4), parameters=["weight", "bias"], non_persistent=["mask"]),
             "yours keeps a plain tensor at `self.mask`", "register_buffer")
    check_roles(lambda: fixed(4), parameters=["weight", "bias"], non_persistent=["mask"])
    check_device_transfer(lambda: fixed(4), example=(2, 4))
    check_gradient_flow(lambda: fixed(4), example=(2, 4))
    assert capsys.readouterr().err == ""


def test_the_mask_moved_to_meta_fails_like_a_device_mix_up(nb):
    """What the demo cell shows on a CPU machine: .to() leaves the plain mask behind."""
    layer = nb["MaskedLinear"](4).to("meta")
    assert layer.mask.device.type == "cpu"
    with pytest.raises(RuntimeError, match="not on the expected device meta"):
        layer(torch.randn(2, 4, device="meta"))


def test_a_persistent_mask_is_told_to_use_persistent_false(nb):
    class PersistentMask(nb["MaskedLinear"]):
        def __init__(self, features):
            super().__init__(features)
            mask = vars(self).pop("mask")
            self.register_buffer("mask", mask)

    rejected(lambda: check_roles(lambda: PersistentMask(4), parameters=["weight", "bias"], non_persistent=["mask"]),
             "`mask` is a buffer in yours, a non-persistent buffer in the exercise", "persistent=False")


# --- Part C: statistics stored as parameters -----------------------------------------------------------

def test_statistics_as_parameters_are_rejected_and_the_fix_passes(nb, capsys):
    mean, std = torch.tensor([3.0, -20.0, 0.5, 0.0]), torch.tensor([1.0, 10.0, 0.1, 5.0])
    broken = lambda: nb["Classifier"](nb["Standardize"](mean, std), 4, 3)  # noqa: E731
    fixed = lambda: nb["Classifier"](nb["FixedStandardize"](mean, std), 4, 3)  # noqa: E731
    rejected(lambda: check_trainable_count(broken, expected=4 * 3 + 3),
             "the model has 23 trainable parameters; the exercise asks for 15",
             "`norm.mean` and `norm.std` account for exactly the 8 extra", "belong in buffers")
    rejected(lambda: check_roles(broken, parameters=["fc.weight", "fc.bias"], buffers=["norm.mean", "norm.std"]),
             "`norm.mean` is an nn.Parameter in yours, a buffer in the exercise", "self.register_buffer")
    check_trainable_count(fixed, expected=4 * 3 + 3)
    check_roles(fixed, parameters=["fc.weight", "fc.bias"], buffers=["norm.mean", "norm.std"])
    check_device_transfer(fixed, example=(8, 4))
    assert capsys.readouterr().err == ""


def test_the_demo_shows_the_optimizer_moving_the_statistics():
    ns = run_cells(NOTEBOOK, "setup", "stats_broken", "stats_demo")
    model, train_x = ns["model"], ns["train_x"]
    assert not torch.allclose(model.norm.mean.detach(), train_x.mean(0), atol=0.05)


def test_a_torch_layer_bias_is_not_blamed_on_buffers():
    """Too many parameters from a bias that should be off: the hint stays the generic one."""
    message = rejected(lambda: check_trainable_count(lambda: nn.Linear(4, 3), expected=12), "too many")
    assert "belong in buffers" not in message


# --- Part D: the EMA of weights ---------------------------------------------------------------------

def test_reference_ema_matches_averaged_model(nb, capsys):
    yours, torchs = nb["ema_after_training"](nb["small_net"](), decay=0.8, steps=4, batch=(3, 6))
    check_tensors(yours, torchs, "EMA of weights", source="torch's AveragedModel")
    assert "4 tensors match torch's AveragedModel" in capsys.readouterr().out


def _ema_variant(nb, update=None, persistent=True, as_parameters=False):
    base, shadow = nb["WeightEMA"], nb["shadow_name"]

    class Variant(base):
        def __init__(self, model):
            nn.Module.__init__(self)
            self.model = model
            for name, p in model.named_parameters():
                if as_parameters:
                    self.register_parameter(shadow(name), nn.Parameter(p.detach().clone()))
                else:
                    self.register_buffer(shadow(name), p.detach().clone(), persistent=persistent)

        def update(self, decay):
            if update is None:
                return super().update(decay)
            for name, p in self.model.named_parameters():
                update(self.get_parameter(shadow(name)) if as_parameters else self.get_buffer(shadow(name)), p, decay)

    return Variant


def _ema_names(nb):
    names = [n for n, _ in nb["small_net"]().named_parameters()]
    return dict(parameters=["model." + n for n in names], buffers=[nb["shadow_name"](n) for n in names])


def test_ema_with_the_decay_the_wrong_way_round_is_rejected(nb):
    def backwards(avg, p, decay):
        with torch.no_grad():
            avg.lerp_(p, decay)

    nb["WeightEMA"], original = _ema_variant(nb, update=backwards), nb["WeightEMA"]
    try:
        rejected(lambda: check_tensors(*nb["ema_after_training"](nb["small_net"](), 0.9, 3, (4, 6)),
                                       "EMA of weights", source="torch's AveragedModel"),
                 "`0.weight` differs from torch's AveragedModel", "yours: [", "torch's AveragedModel: [")
    finally:
        nb["WeightEMA"] = original


def test_ema_updated_with_autograd_on_is_rejected(nb):
    def recorded(avg, p, decay):
        avg.mul_(decay).add_((1 - decay) * p)  # records p's graph into the buffer

    nb["WeightEMA"], original = _ema_variant(nb, update=recorded), nb["WeightEMA"]
    try:
        rejected(lambda: check_tensors(*nb["ema_after_training"](nb["small_net"](), 0.9, 3, (4, 6)), "EMA of weights"),
                 "`0.weight` requires grad", "torch.no_grad()")
    finally:
        nb["WeightEMA"] = original


def test_ema_held_as_parameters_or_non_persistent_is_rejected(nb):
    as_params = _ema_variant(nb, as_parameters=True)
    rejected(lambda: check_roles(lambda: as_params(nb["small_net"]()), **_ema_names(nb)),
             "`ema_0_weight` is an nn.Parameter in yours, a buffer in the exercise", "register_buffer")
    rejected(lambda: check_trainable_count(lambda: as_params(nb["small_net"]()), expected=83),
             "`ema_0_weight` and", "account for exactly the 83 extra")
    not_saved = _ema_variant(nb, persistent=False)
    rejected(lambda: check_roles(lambda: not_saved(nb["small_net"]()), **_ema_names(nb)),
             "`ema_0_weight` is a non-persistent buffer in yours, a buffer in the exercise",
             "persistent=False leaves it out of state_dict()")
    check_roles(lambda: nb["WeightEMA"](nb["small_net"]()), **_ema_names(nb))


# --- Part E: freezing -------------------------------------------------------------------------------

def test_freezing_is_counted(nb, capsys):
    net, freeze = nb["TransferNet"], nb["freeze_backbone"]
    check_trainable_count(lambda: freeze(net(20, 32, 10)), expected=32 * 10 + 10)
    rejected(lambda: check_trainable_count(lambda: net(20, 32, 10), expected=32 * 10 + 10), "too many")
    rejected(lambda: check_trainable_count(lambda: net(20, 32, 10).requires_grad_(False), expected=32 * 10 + 10),
             "too few", "frozen (requires_grad=False): `backbone.0.weight`", "`head.weight`")
    assert capsys.readouterr().err == ""


def test_freezing_mistakes_are_named(nb):
    net, expected = nb["TransferNet"], 32 * 10 + 10

    def attribute(model):
        model.backbone.requires_grad = False  # a plain attribute: freezes nothing
        return model

    rejected(lambda: check_trainable_count(lambda: attribute(net(20, 32, 10)), expected=expected),
             "`backbone.requires_grad = False` set a plain attribute on the module, which freezes nothing",
             "`backbone.requires_grad_(False)`")
    message = rejected(lambda: check_trainable_count(lambda: _eval_backbone(net(20, 32, 10)), expected=expected),
                       "`backbone` is in eval mode", "not what trains")
    assert "`backbone.0`" not in message  # only the outermost module in eval mode is named
    rejected(lambda: check_trainable_count(lambda: None, expected=expected),
             "expected an nn.Module, got NoneType", "ends without `return model`")


def _eval_backbone(model):
    model.backbone.eval()
    return model


def test_a_mask_of_any_right_dtype_matches_the_exercise(nb):
    """The hidden reference compares what the layer computes: a float and a bool mask both pass, a wrong one fails."""
    def masked_linear(state, x):
        weight = state["weight"]
        return nn.functional.linear(x, weight * torch.ones_like(weight).tril(), state["bias"])

    class BoolMask(nb["FixedMaskedLinear"]):
        def __init__(self, features):
            super().__init__(features)
            self.register_buffer("mask", torch.ones(features, features, dtype=torch.bool).tril(), persistent=False)

    class UpperMask(nb["FixedMaskedLinear"]):
        def __init__(self, features):
            super().__init__(features)
            self.register_buffer("mask", torch.ones(features, features).triu(), persistent=False)

    for layer in (nb["FixedMaskedLinear"], BoolMask):
        check_matches_reference(lambda: layer(5), masked_linear, (3, 5))
        check_roles(lambda: layer(5), parameters=["weight", "bias"], non_persistent=["mask"])
        check_device_transfer(lambda: layer(5), example=(3, 5))
    rejected(lambda: check_matches_reference(lambda: UpperMask(5), masked_linear, (3, 5)),
             "your train-mode `output` differs from the exercise's")


def test_a_buffer_sharing_a_parameters_memory_is_named(nb):
    class Shares(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.register_buffer("copy", self.fc.weight.detach())

    rejected(lambda: check_roles(Shares, parameters=["fc.weight", "fc.bias"], buffers=["copy"]),
             "a buffer shares its memory with a parameter", "buffer `copy` is the memory of parameter `fc.weight`",
             ".detach().clone()")


def test_check_tensors_runs_the_students_code_inside_the_check(nb):
    """A stub's NotImplementedError is a verdict with the stub's hint; an error of the test's own code is the
    grader's, never the student's zero."""
    class Stub(nb["WeightEMA"]):
        def update(self, decay):
            raise NotImplementedError("replace this line with your code")

    nb["WeightEMA"], original = Stub, nb["WeightEMA"]
    try:
        rejected(lambda: check_tensors(lambda: nb["ema_after_training"](nb["small_net"](), 0.9, 2, (4, 6)),
                                       title="EMA of weights"),
                 "✗ EMA of weights: running your code raised NotImplementedError", "(in `update`",
                 "replace that line with your code")
    finally:
        nb["WeightEMA"] = original
    with pytest.raises(GraderError, match="grader error in `EMA of weights`: KeyError"):  # no student frame
        check_tensors(functools.partial(dict.__getitem__, {}, "missing"), title="EMA of weights")
    check_tensors(lambda: nb["ema_after_training"](nb["small_net"](), 0.9, 2, (4, 6)), title="EMA of weights")


def test_learning_names_an_output_of_nan_or_inf():
    class DividesByZero(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.register_buffer("std", torch.zeros(3))

        def forward(self, x):
            return self.fc(x / self.std)

    message = rejected(lambda: check_learning(DividesByZero, example=(4, 3)),
                       "the output holds NaN or Inf", "division by zero")
    assert "the optimizer holds" not in message


class TorchsOwn(nn.Module):
    """Registers torch's tensors itself, then lets F.batch_norm do the work."""

    def __init__(self, n, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight, self.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))
        self.register_buffer("num_batches_tracked", torch.tensor(0))

    def forward(self, x):
        if self.training:
            self.num_batches_tracked += 1
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                        self.training, self.momentum, self.eps)


class Holds(nn.Module):
    def __init__(self, n, **kwargs):
        super().__init__()
        self.norm = nn.BatchNorm1d(n, **kwargs)

    def forward(self, x):
        return self.norm(x)


@pytest.mark.parametrize("layer, fragments", [
    (type("MyBatchNorm1d", (nn.BatchNorm1d,), {}), ["your layer subclasses nn.BatchNorm1d, torch's own layer"]),
    (Holds, ["`norm` in your layer is nn.BatchNorm1d, torch's own layer"]),
    (TorchsOwn, ["your forward calls torch's own batch_norm (F.batch_norm or torch.batch_norm)",
                 "compute it from tensor operations"]),
], ids=["subclass", "child", "functional"])
def test_torchs_own_batchnorm_does_not_count_as_a_reimplementation(layer, fragments):
    rejected(lambda: check_matches_torch(layer, nn.BatchNorm1d, 4, example=(6, 4)), *fragments)
    assert torch._C._len_torch_function_stack() == 0  # the check's own mode is gone
