"""Unit 05, hooks: both broken models are rejected with the right hint, their demo cells print that diagnosis,
the fixes pass (and only the fixes: a `.data` hack fails on gradients), and grader.checks.hooks, hook_guards and
hooked_models name the usual mistakes of hook utilities (hooks left behind, a recorder that records containers or
forgets to copy, late-bound lambdas, tensors kept instead of floats, validators that accept only float32 or return a
cast input, a NaN hunter that names the last module or leaves hooks when the model raises, ...)."""

import contextlib
import functools

import pytest
import torch
from torch import nn

from conftest import printed_by, rejected, run_cells
from grader import (check_finds_first_nonfinite, check_grad_norms, check_gradient_flow,
                    check_keeps_output, check_learning, check_matches_reference, check_no_hook_leak,
                    check_pre_hook_validates, check_records_activations, check_same_function)

pytestmark = pytest.mark.device

NOTEBOOK = "solutions/05_hooks/hooks.ipynb"
EXAMPLE = (8, 20)


@pytest.fixture(scope="module")
def nb():
    """The assignment's own cells: the setup, the reference answers and both broken models."""
    return run_cells(NOTEBOOK, "setup", "record_answer", "norms_answer", "validate_answer", "nonfinite_answer",
                     "leak_broken", "leak_answer", "inplace_broken", "inplace_answer")


def mlp(inplace=False):
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(inplace=inplace), nn.Linear(32, 10))


class HeadFirst(nn.Module):
    """Registered head first, body second; runs the body first."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.body = nn.Sequential(nn.Linear(20, 8), nn.Tanh())

    def forward(self, x):
        return self.head(self.body(x))


# --- Part E: a hook registered on every call -------------------------------------------------------

LEAK = ["calling the model leaves hooks behind", "`body` gains a forward hook on every call (3 after 3 calls",
        "body._forward_hooks", "keep the handle", "handle.remove()"]


def test_hook_registered_every_call_is_rejected(nb, capsys):
    broken = lambda: nb["FeatureNet"](20, 32, 10)  # noqa: E731
    rejected(lambda: check_no_hook_leak(broken, EXAMPLE), "✗ no hook leak", *LEAK)
    rejected(lambda: check_gradient_flow(broken, EXAMPLE), "✗ gradient flow", *LEAK)
    rejected(lambda: check_learning(broken, EXAMPLE), "✗ learning", *LEAK)
    assert capsys.readouterr().err == ""


def test_leak_demo_shows_the_hooks_piling_up_and_the_diagnosis(nb):
    printed = printed_by(NOTEBOOK, nb, "leak_demo")
    assert "calls: 3, forward hooks on model.body: 3" in printed
    assert all(fragment in printed for fragment in LEAK)


def test_leak_fix_passes(nb, capsys):
    fixed = lambda: nb["FixedFeatureNet"](20, 32, 10)  # noqa: E731
    check_no_hook_leak(fixed, EXAMPLE, calls=5)
    check_keeps_output(fixed, EXAMPLE, attribute="features", module="body")
    check_gradient_flow(fixed, EXAMPLE)
    check_learning(fixed, EXAMPLE)
    out, err = capsys.readouterr()
    assert out.count("✓") == 4 and err == ""
    assert "5 calls add no hook (1 registered)" in out


def test_a_fix_that_drops_the_hook_loses_the_features(nb):
    class NoHook(nb["FixedFeatureNet"]):
        def __init__(self, *sizes):
            super().__init__(*sizes)
            self.body._forward_hooks.clear()

    rejected(lambda: check_keeps_output(lambda: NoHook(20, 32, 10), EXAMPLE, attribute="features", module="body"),
             "after call 1, model.features is NoneType, not the output of `body`", "self.features")


def test_a_fix_that_keeps_a_stale_output_is_rejected(nb):
    class KeepsFirst(nb["FixedFeatureNet"]):
        def _keep(self, module, args, output):
            if self.features is None:
                self.features = output.detach()

    rejected(lambda: check_keeps_output(lambda: KeepsFirst(20, 32, 10), EXAMPLE, attribute="features", module="body"),
             "after call 2, model.features does not hold that call's output of `body`")


def test_a_hook_removed_at_the_end_of_forward_is_no_leak(nb, capsys):
    class RemovesIt(nb["FeatureNet"]):
        def forward(self, x):
            with self.body.register_forward_hook(self._keep):  # a handle is a context manager
                return self.head(self.body(x))

    check_no_hook_leak(lambda: RemovesIt(20, 32, 10), EXAMPLE)
    check_keeps_output(lambda: RemovesIt(20, 32, 10), EXAMPLE, attribute="features", module="body")
    assert capsys.readouterr().out.count("✓") == 2


def test_a_global_hook_registered_every_call_is_named():
    added = []

    class GlobalLeak(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(20, 10)

        def forward(self, x):
            added.append(nn.modules.module.register_module_forward_hook(lambda module, args, output: None))
            return self.fc(x)

    try:
        rejected(lambda: check_no_hook_leak(GlobalLeak, EXAMPLE),
                 "torch's global hook dict gains a global forward hook on every call (3 after 3 calls, "
                 "in `torch.nn.modules.module._global_forward_hooks`)")
    finally:
        for handle in added:
            handle.remove()


# --- Part F: a hook that changes its output in place --------------------------------------------

INPLACE = ["modified by an inplace operation", "output 0 of Relu", "`act` (nn.ReLU) has a forward hook `ClippedNet._cap`",
           "return a new tensor from the hook instead", "torch uses what a forward hook returns"]


def test_inplace_hook_is_rejected(nb, capsys):
    broken = lambda: nb["ClippedNet"](20, 32, 10)  # noqa: E731
    rejected(lambda: check_gradient_flow(broken, EXAMPLE), "✗ gradient flow", "backward() raised RuntimeError", *INPLACE)
    rejected(lambda: check_learning(broken, EXAMPLE), "✗ learning", *INPLACE)
    assert capsys.readouterr().err == ""


def test_inplace_demo_prints_the_diagnosis(nb):
    printed = printed_by(NOTEBOOK, nb, "inplace_demo")
    assert "largest hidden activation is capped: 0.5" in printed
    assert all(fragment in printed for fragment in INPLACE)


def test_inplace_fix_passes(nb, capsys):
    fixed = lambda: nb["FixedClippedNet"](3, 6, 2, cap=0.2)  # noqa: E731
    check_gradient_flow(fixed, (4, 3))
    check_learning(fixed, (4, 3))
    check_same_function(fixed, lambda: nb["ClippedNet"](3, 6, 2, cap=0.2), (4, 3))
    out, err = capsys.readouterr()
    assert out.count("✓") == 3 and err == ""


def test_a_fix_that_forgets_to_return_the_capped_output_is_rejected(nb):
    class NoReturn(nb["FixedClippedNet"]):
        def _cap(self, module, args, output):
            output = output.clamp(max=self.cap)  # a new tensor, thrown away

    check_gradient_flow(lambda: NoReturn(20, 32, 10), EXAMPLE)  # trains, but caps nothing
    rejected(lambda: check_same_function(lambda: NoReturn(20, 32, 10), lambda: nb["ClippedNet"](20, 32, 10), EXAMPLE),
             "your model's eval-mode output differs from ClippedNet's")


def test_without_hooks_the_inplace_hint_stays_generic():
    class InplaceInForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(20, 32), nn.Linear(32, 10)

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            h.clamp_(max=0.5)
            return self.fc2(h)

    message = rejected(lambda: check_gradient_flow(InplaceInForward, EXAMPLE), "use the out-of-place form")
    assert "forward hook" not in message


# --- Part A: the activation recorder --------------------------------------------------------------

def recorder(store=lambda output: output.detach().clone(), leaves_only=True, prefill=False, cleanup="finally",
             swallow=False, latest=True):
    """A recorder with one mistake at a time, for the check to name."""
    @contextlib.contextmanager
    def record(model):
        acts, handles = {}, []

        def keep(name, module, args, output):
            if latest or name not in acts or acts[name] is None:
                acts[name] = store(output) if store != "args" else args[0].detach().clone()

        for name, module in model.named_modules():
            if not leaves_only or next(module.children(), None) is None:
                if prefill:
                    acts[name] = None
                handles.append(module.register_forward_hook(functools.partial(keep, name)))
        try:
            yield acts
        except Exception:
            if not swallow:
                raise
        finally:
            if cleanup == "finally":
                for handle in handles:
                    handle.remove()
        if cleanup == "after":  # skipped when the body raises
            for handle in handles:
                handle.remove()
    return record


def test_reference_recorder_passes(nb, capsys):
    check_records_activations(nb["record_activations"], lambda: mlp(inplace=True), EXAMPLE)
    check_records_activations(nb["record_activations"], HeadFirst, EXAMPLE)
    check_records_activations(nb["record_activations"], lambda: nn.Linear(4, 2), (3, 4))
    out, err = capsys.readouterr()
    assert "records 3 leaf modules in firing order and removes every hook, also when the block raises" in out
    assert "records 1 leaf module" in out and err == ""


@pytest.mark.parametrize("wrong, model, fragments", [
    (recorder(cleanup="after"), mlp,
     ["when the body of `with record(model)` raises, its hooks stay registered",
      "`0` still has 1 forward hook (in `0._forward_hooks`)", "finally:"]),
    (recorder(cleanup="never"), mlp,
     ["after the `with record(model)` block, hooks are still registered", "`2` still has 1 forward hook"]),
    (recorder(swallow=True), mlp, ["an error raised inside `with record(model)` disappeared", "do not return True"]),
    (recorder(leaves_only=False), mlp,
     ["acts holds 4 records; the model has 3 leaf modules",
      "recorded the model itself (`''`) (nn.Sequential), which has children: record leaf modules only"]),
    (recorder(leaves_only=False), HeadFirst, ["recorded `body` (nn.Sequential), which has children"]),
    (recorder(store=lambda output: output.detach()), lambda: mlp(inplace=True),
     ["acts['0'] differs from the output of `0`: a later in-place operation wrote into the tensor you stored",
      "`1` (nn.ReLU) works in place (inplace=True)", "output.detach().clone()"]),
    (recorder(store=lambda output: output.clone()), mlp,
     ["acts['0'] is still attached to the autograd graph", "output.detach().clone()"]),
    (recorder(prefill=True), HeadFirst,
     ["the records are not in the order the modules ran", "acts: ['head', 'body.0', 'body.1']",
      "ran:  ['body.0', 'body.1', 'head']", "add a record when its hook fires"]),
    (recorder(latest=False), mlp, ["acts['0'] holds the output of the first call, not the latest", "overwrite"]),
    (recorder(store="args"), mlp, ["acts['0'] does not hold the output of `0` (shape [8, 20])", "not args"]),
    (recorder(store=lambda output: [output.detach().clone()]), mlp, ["acts['0'] is list, not a tensor"]),
    (lambda model: {}, mlp, ["returned dict, not a context manager", "@contextlib.contextmanager"]),
])
def test_wrong_recorders_are_named(wrong, model, fragments, capsys):
    rejected(lambda: check_records_activations(wrong, model, EXAMPLE), "✗ activation recorder", *fragments)
    assert capsys.readouterr().err == ""


def test_a_recorder_that_yields_nothing_is_named():
    @contextlib.contextmanager
    def record(model):
        yield

    rejected(lambda: check_records_activations(record, mlp, EXAMPLE), "gave acts = NoneType, not a dict")


# --- Part B: gradient norms -----------------------------------------------------------------------------

def watcher(norm=lambda grad: grad.norm().item(), bind=True, skip_frozen=True, biases=True, keep_handles=True):
    """A gradient-norm watcher with one mistake at a time."""
    def watch(model):
        norms, handles = {}, []
        for name, p in model.named_parameters():
            if (skip_frozen and not p.requires_grad) or (not biases and name.endswith("bias")):
                continue
            norms[name] = []
            hook = ((lambda grad, name=name: norms[name].append(norm(grad))) if bind else
                    (lambda grad: norms[name].append(norm(grad))))
            handle = p.register_hook(hook)
            if keep_handles:
                handles.append(handle)
        return norms, handles
    return watch


def partly_frozen():
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2))
    model[0].requires_grad_(False)
    return model


def test_reference_and_post_accumulate_watchers_pass(nb, capsys):
    def post_accumulate(model):
        norms, handles = {}, []
        for name, p in model.named_parameters():
            if p.requires_grad:
                norms[name] = []
                handles.append(p.register_post_accumulate_grad_hook(
                    lambda p, name=name: norms[name].append(p.grad.norm().item())))
        return norms, handles

    check_grad_norms(nb["watch_grad_norms"], mlp, EXAMPLE)
    check_grad_norms(nb["watch_grad_norms"], partly_frozen, (4, 6), steps=4)
    check_grad_norms(post_accumulate, partly_frozen, (4, 6))
    out, err = capsys.readouterr()
    assert "4 trainable tensors tracked over 3 backward passes, hooks removed with the handles" in out
    assert out.count("✓") == 3 and err == ""


@pytest.mark.parametrize("wrong, model, fragments", [
    (watcher(bind=False), mlp,
     ["some parameters have no norms and others have too many", "norms['2.bias'] has 4 entries",
      "no norms for `0.weight`", "lambda grad, name=name"]),
    (watcher(norm=lambda grad: (grad ** 2).sum().item()), mlp, ["those are squared norms"]),
    (watcher(norm=lambda grad: grad.abs().sum().item()), mlp,
     ["but the L2 norms of `0.weight`.grad are", "grad.norm().item()"]),
    (watcher(biases=False), mlp, ["no norms for `0.bias`", "hook every parameter that requires grad"]),
    (watcher(keep_handles=False), mlp,
     ["after handle.remove() on every handle watch returned, its hooks still run", "norms['0.weight'] got another entry",
      "`0.weight` still has 1 tensor hook (in `0.weight._backward_hooks`)", "return every handle"]),
    (watcher(skip_frozen=False), partly_frozen,
     ["cannot register a hook on a tensor that doesn't require gradient", "skip frozen ones"]),
    (lambda model: {}, mlp, ["returned dict, not (norms, handles)"]),
])
def test_wrong_watchers_are_named(wrong, model, fragments, capsys):
    example = (4, 6) if model is partly_frozen else EXAMPLE
    rejected(lambda: check_grad_norms(wrong, model, example), "✗ gradient norms", *fragments)
    assert capsys.readouterr().err == ""


def test_module_backward_hooks_warn_but_never_reach_stderr(capsys):
    """Full backward hooks on modules whose inputs need no grad make torch warn: the check stays silent."""
    def per_module(model):
        norms, handles = {}, []

        def hook(name, module, grad_input, grad_output):  # the norm of the gradient at the output, not of .grad
            for pname, _ in module.named_parameters(recurse=False):
                norms[f"{name}.{pname}"].append(grad_output[0].norm().item())

        for name, module in model.named_modules():
            for pname, _ in module.named_parameters(recurse=False):
                norms[f"{name}.{pname}"] = []
            handles.append(module.register_full_backward_hook(functools.partial(hook, name)))
        return norms, handles

    message = rejected(lambda: check_grad_norms(per_module, mlp, EXAMPLE), "but the L2 norms of `0.weight`.grad are")
    assert "Full backward hook is firing when gradients are computed with respect to module outputs" in message
    assert capsys.readouterr().err == ""


def test_module_backward_hooks_before_an_inplace_relu_are_explained():
    def per_module(model):
        norms = {name: [] for name, _ in model.named_parameters()}
        handles = [module.register_full_backward_hook(lambda module, grad_in, grad_out: None)
                   for module in model.modules()]
        return norms, handles

    rejected(lambda: check_grad_norms(per_module, lambda: mlp(inplace=True), EXAMPLE),
             "step 1 (forward, then backward) raised RuntimeError", "nn.ReLU(inplace=True)", "p.register_hook")


# --- Part C: the input-validating pre-hook -----------------------------------------------------------

def validator(size_error=ValueError, check_dtype=True, dim=-1, message="expected {f} input features, got {n}",
              returns=None):
    def make(features):
        def hook(module, args):
            x = args[0]
            if check_dtype and not (isinstance(x, torch.Tensor) and x.is_floating_point()):
                raise TypeError("expected a floating-point tensor")
            if x.shape[dim] != features:
                raise size_error(message.format(f=features, n=x.shape[dim]))
            return returns(x) if returns else None
        return hook
    return make


def test_reference_validator_passes(nb, capsys):
    check_pre_hook_validates(nb["input_validator"], mlp, 20, EXAMPLE)
    check_pre_hook_validates(nb["input_validator"], lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh()), 3, (4, 5, 3))
    check_pre_hook_validates(nb["input_validator"], lambda: nn.Linear(1, 2), 1, (6, 1))
    out, err = capsys.readouterr()
    assert out.count("✓ input-validating pre-hook: passes valid inputs (float32, float64, bfloat16) unchanged") == 3
    assert err == ""


@pytest.mark.parametrize("wrong, features, example, fragments", [
    (validator(check_dtype=False), 20, EXAMPLE,
     ["for an input of dtype torch.int64, the model raised RuntimeError", "not TypeError",
      "raise TypeError unless", "your hook let it through"]),
    (validator(dim=1), 20, (4, 5, 20), ["a valid float32 input of shape [4, 5, 20] raised ValueError"]),
    (validator(message="bad input"), 20, EXAMPLE,
     ["for an input of shape [8, 19] (19 features, not 20), the ValueError says 'bad input'", "name both sizes"]),
    (validator(size_error=AssertionError), 20, EXAMPLE, ["raised AssertionError", "not ValueError"]),
    (validator(returns=lambda x: (x * 2,)), 20, EXAMPLE,
     ["for a valid float32 input of shape [8, 20], forward got another tensor", "return None from the hook"]),
    (validator(returns=lambda x: (x.clone(),)), 20, EXAMPLE, ["forward got a copy of it"]),
    (validator(returns=lambda x: x.float()), 20, EXAMPLE,
     ["for a valid float64 input of shape [8, 20], forward got a float32 tensor, not the tensor the caller passed"]),
    (lambda features: None, 20, EXAMPLE, ["make_hook(20) returned NoneType, not a hook"]),
])
def test_wrong_validators_are_named(wrong, features, example, fragments, capsys):
    model = lambda: nn.Sequential(nn.Linear(features, 4), nn.Tanh())  # noqa: E731
    rejected(lambda: check_pre_hook_validates(wrong, model, features, example), "✗ input-validating pre-hook",
             *fragments)
    assert capsys.readouterr().err == ""


def test_an_error_from_forward_is_not_the_hooks_credit():
    """The model itself raises ValueError for a wrong size: the check sees the hook let the input through."""
    class Strict(nn.Linear):
        def forward(self, x):
            if x.shape[-1] != self.in_features:
                raise ValueError(f"expected {self.in_features} input features, got {x.shape[-1]}")
            return super().forward(x)

    def dtype_only(features):
        def hook(module, args):
            if not args[0].is_floating_point():
                raise TypeError("float please")
        return hook

    rejected(lambda: check_pre_hook_validates(dtype_only, lambda: Strict(20, 4), 20, EXAMPLE),
             "the ValueError came from forward, not from your hook")


# --- Part D: the first non-finite module ----------------------------------------------------------------

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(20, 16)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        h = self.stem(x)
        return self.head(h + self.block(h))


def finder(pick=0, test=lambda output: not torch.isfinite(output).all(), leaves_only=False, remove=True,
           give="name"):
    def find(model, *inputs):
        found = []
        handles = [module.register_forward_hook(
            lambda module, args, output, name=name: found.append(name if give == "name" else module)
            if test(output) else None)
            for name, module in model.named_modules() if not leaves_only or next(module.children(), None) is None]
        with torch.no_grad():
            model(*inputs)
        if remove:
            for handle in handles:
                handle.remove()
        return found[pick] if found else None
    return find


def test_reference_finder_passes(nb, capsys):
    check_finds_first_nonfinite(nb["first_nonfinite"], mlp, EXAMPLE)
    check_finds_first_nonfinite(nb["first_nonfinite"], Residual, EXAMPLE)
    out, err = capsys.readouterr()
    assert "names the first of 4 modules to output NaN or Inf (4 planted), None when all is finite" in out
    assert out.count("✓") == 2 and err == ""


@pytest.mark.parametrize("wrong, model, fragments", [
    (finder(pick=-1), mlp,
     ["find returned '', but `0` (nn.Linear) output NaN first; later modules only inherit it",
      "forward hooks fired in this order: ['0', '1', '2', '']", "if first is None"]),
    (finder(test=lambda output: torch.isnan(output).any()), mlp,
     ["find found nothing, but `1` (nn.ReLU) outputs Inf", "torch.isfinite"]),
    (finder(leaves_only=True), Residual,
     ["found nothing, but the model itself (`''`) (Residual) outputs Inf",
      "the model itself (name '') included"]),
    (finder(remove=False), mlp, ["find leaves hooks on the model", "`0` still has 1 forward hook", "finally:"]),
    (finder(give="module"), mlp, ["returned a module (nn.Linear), not its name"]),
    (finder(test=lambda output: True), mlp, ["every output is finite, but find returned '0'", "return None"]),
])
def test_wrong_finders_are_named(wrong, model, fragments, capsys):
    rejected(lambda: check_finds_first_nonfinite(wrong, model, EXAMPLE), "✗ first non-finite module", *fragments)
    assert capsys.readouterr().err == ""


def test_a_finder_that_stops_at_the_first_leaf_misses_the_container(nb):
    """A NaN made by a container's own forward (after its children ran) belongs to the container."""
    class MakesNaN(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(20, 4)

        def forward(self, x):
            return self.fc(x).log()  # log of negative values: NaN, made by this module, not by fc

    assert nb["first_nonfinite"](MakesNaN(), torch.randn(8, 20)) == ""
    assert finder(leaves_only=True)(MakesNaN(), torch.randn(8, 20)) is None


def test_validators_must_accept_every_float_dtype_and_refuse_what_is_not_a_tensor():
    """Issue 13: validators that accept only float32, skip the isinstance test, or check the size first passed."""
    def make(test, size_first=False):
        def input_validator(features):
            def hook(module, args):
                x = args[0]
                if size_first and x.shape[-1] != features:
                    raise ValueError(f"expected {features} input features, got {x.shape[-1]}")
                if test(x):
                    raise TypeError("expected a floating-point tensor")
                if x.shape[-1] != features:
                    raise ValueError(f"expected {features} input features, got {x.shape[-1]}")
            return hook
        return input_validator

    model = lambda: nn.Sequential(nn.Linear(20, 4), nn.Tanh())  # noqa: E731
    only_float32 = make(lambda x: not isinstance(x, torch.Tensor) or x.dtype != torch.float32)
    rejected(lambda: check_pre_hook_validates(only_float32, model, 20, EXAMPLE),
             "a valid float64 input of shape [8, 20] raised TypeError", "float16, bfloat16, float32 and float64")
    no_isinstance = make(lambda x: not x.is_floating_point())
    rejected(lambda: check_pre_hook_validates(no_isinstance, model, 20, EXAMPLE),
             "for a Python list (not a tensor) of shape [8, 20], the model raised AttributeError",
             "test isinstance(x, torch.Tensor) before anything else")
    size_first = make(lambda x: not (isinstance(x, torch.Tensor) and x.is_floating_point()), size_first=True)
    rejected(lambda: check_pre_hook_validates(size_first, model, 20, EXAMPLE),
             "for an input of dtype torch.int64 with 19 features, the model raised ValueError", "check the type first")
    integers_only = make(lambda x: not isinstance(x, torch.Tensor) or x.dtype in (torch.int32, torch.int64))
    rejected(lambda: check_pre_hook_validates(integers_only, model, 20, EXAMPLE),
             "for an input of dtype torch.bool, the model raised RuntimeError", "not TypeError",
             "integer and bool tensors are not floating point", "your hook let it through")


def test_norms_kept_as_tensors_or_overwritten_are_named(capsys):
    rejected(lambda: check_grad_norms(watcher(norm=lambda grad: grad.norm()), mlp, EXAMPLE),
             "norms['0.weight'] holds torch.Tensor values, not Python floats", "grad.norm().item()")

    def attached(model):  # computed with grad mode on (backward turns it off): a tensor still in a graph
        norms, handles = {}, []

        def keep(p, name):
            with torch.enable_grad():
                norms[name].append(p.grad.norm() + 0 * p.sum())

        for name, p in model.named_parameters():
            norms[name] = []
            handles.append(p.register_post_accumulate_grad_hook(functools.partial(keep, name=name)))
        return norms, handles

    rejected(lambda: check_grad_norms(attached, mlp, EXAMPLE), "not Python floats, attached to the autograd graph",
             "holds the whole graph")

    def overwrite(model):
        norms = {name: [] for name, p in model.named_parameters()}

        def hook(grad, name):
            norms[name] = grad.norm().item()

        handles = [p.register_hook(functools.partial(hook, name=name)) for name, p in model.named_parameters()]
        return norms, handles

    rejected(lambda: check_grad_norms(overwrite, mlp, EXAMPLE), "norms['0.weight'] is float, not a list of norms",
             "norms[name].append")
    assert capsys.readouterr().err == ""


def test_a_tensor_hook_that_reads_p_grad_is_explained():
    def reads_grad(model):
        norms, handles = {}, []
        for name, p in model.named_parameters():
            norms[name] = []
            handles.append(p.register_hook(lambda grad, name=name, p=p: norms[name].append(p.grad.norm().item())))
        return norms, handles

    rejected(lambda: check_grad_norms(reads_grad, mlp, EXAMPLE), "raised AttributeError", "runs before p.grad is set",
             "register_post_accumulate_grad_hook")


def test_a_recorder_whose_hooks_see_the_last_name_is_explained():
    @contextlib.contextmanager
    def record(model):
        acts, handles = {}, []
        for name, module in model.named_modules():
            if next(module.children(), None) is None:
                handles.append(module.register_forward_hook(
                    lambda module, args, output: acts.update({name: output.detach().clone()})))
        try:
            yield acts
        finally:
            for handle in handles:
                handle.remove()

    rejected(lambda: check_records_activations(record, mlp, EXAMPLE), "acts holds 1 record; the model has 3 leaf modules",
             "acts holds only the last leaf's name", "name=name")


def guarded_finder(catch=False, guard=True):
    """first_nonfinite written with or without try/finally, and with or without an except that hides errors."""
    def find(model, *inputs):
        found = []
        handles = [module.register_forward_hook(
            lambda module, args, output, name=name: found.append(name) if not torch.isfinite(output).all() else None)
            for name, module in model.named_modules()]
        if not guard:
            model(*inputs)
            for handle in handles:
                handle.remove()
            return found[0] if found else None
        try:
            model(*inputs)
        except Exception:
            if not catch:
                raise
            return None
        finally:
            for handle in handles:
                handle.remove()
        return found[0] if found else None
    return find


def test_a_finder_must_clean_up_and_let_errors_through(capsys):
    check_finds_first_nonfinite(guarded_finder(), Residual, EXAMPLE)
    assert "no hook left (also when the model raises)" in capsys.readouterr().out
    rejected(lambda: check_finds_first_nonfinite(guarded_finder(guard=False), mlp, EXAMPLE),
             "find leaves hooks on the model when the model raises (here `1` did)",
             "`0` still has 1 forward hook", "try: model(*inputs) / finally: remove them")
    rejected(lambda: check_finds_first_nonfinite(guarded_finder(catch=True), mlp, EXAMPLE),
             "when `1` raised an error, find returned None: the error disappeared", "no except")


def test_a_finder_that_hooks_only_the_top_level_is_named():
    rejected(lambda: check_finds_first_nonfinite(top_level_finder, Residual, EXAMPLE),
             "find returned 'block', which contains `block.1` (nn.Tanh), the module that output Inf first",
             "nested ones included")


def top_level_finder(model, *inputs):
    """Hooks the model and its direct children only (named_children), not the modules nested deeper."""
    found = []
    modules = [("", model), *model.named_children()]
    handles = [module.register_forward_hook(
        lambda module, args, output, name=name: found.append(name) if not torch.isfinite(output).all() else None)
        for name, module in modules]
    try:
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


top_level_finder.__name__ = "find"


def test_kept_output_must_be_detached_and_its_module_called(nb, capsys):
    class Attached(nb["FixedFeatureNet"]):
        def _keep(self, module, args, output):
            self.features = output

    class Bypassed(nb["FixedFeatureNet"]):
        def forward(self, x):
            return self.head(self.body.forward(x))

    rejected(lambda: check_keeps_output(lambda: Attached(20, 32, 10), EXAMPLE, attribute="features", module="body"),
             "after call 1, model.features is still attached to the autograd graph", "store output.detach()")
    check_keeps_output(lambda: Attached(20, 32, 10), EXAMPLE, attribute="features", module="body", detached=False)
    rejected(lambda: check_keeps_output(lambda: Bypassed(20, 32, 10), EXAMPLE, attribute="features", module="body"),
             "in call 1, `body` ran without its hooks: it was never called as `self.body(...)`",
             "self.body.forward(x) skips every hook")
    assert "model.features holds each call's output of `body` [cpu]" in capsys.readouterr().out


def test_a_submodule_that_never_runs_is_the_tests_mistake():
    from grader import GraderError

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.spare = nn.Linear(20, 10), nn.Linear(20, 10)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(GraderError, match="submodule 'spare' does not run in forward"):
        check_keeps_output(Unused, EXAMPLE, attribute="features", module="spare")


def test_a_data_hack_in_the_clipping_hook_fails_on_gradients(nb, capsys):
    """Issue 13: `output.data.clamp_(...)` gives the right outputs and wrong gradients; only a reference that
    compares gradients tells (the reference is written here, as in the hidden test)."""
    class DataHack(nb["FixedClippedNet"]):
        def _cap(self, module, args, output):
            output.data.clamp_(max=self.cap)

    class Reference(nn.Module):
        def __init__(self, i, h, o, cap):
            super().__init__()
            self.cap, self.fc1, self.fc2 = cap, nn.Linear(i, h), nn.Linear(h, o)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)).clamp(max=self.cap))

    hack = lambda: DataHack(20, 32, 10)  # noqa: E731
    check_gradient_flow(hack, EXAMPLE)  # the old tests pass it
    check_same_function(hack, lambda: nb["ClippedNet"](20, 32, 10), EXAMPLE)
    rejected(lambda: check_matches_reference(hack, lambda: Reference(20, 32, 10, 0.5), EXAMPLE),
             "your outputs match, but the gradient with respect to the input differs", "out.data.clamp_(...)")
    check_matches_reference(lambda: nb["FixedClippedNet"](20, 32, 10), lambda: Reference(20, 32, 10, 0.5), EXAMPLE)
    assert capsys.readouterr().err == ""
