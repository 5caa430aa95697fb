"""Unit 02: the reference ToyModule mirrors torch on every tree of the assignment; each stage's check
depends on its own stage; wrong toys and the two broken models are rejected with the right hint."""

import pytest
import torch
from torch import nn

from conftest import rejected, run_cells
from grader import check_forgotten_init, check_mirrors_torch, check_unknown_attribute
from grader.checks.toy_module import STAGES

pytestmark = pytest.mark.device

NOTEBOOK = "solutions/02_toy_module/toy_module.ipynb"
RELEASE = "exercises/02_toy_module/toy_module.ipynb"
DEFINITIONS = ("setup", "toy_module", "trees", "broken_layers", "list_broken", "scaler_broken",
               "list_answer", "scaler_answer")
# Graded cells, the stage each one grades (the broken models need stages 1 and 2).
GRADED = {"test_stage1_registration": 1, "test_stage2_names": 2, "test_stage3_state_dict": 3,
          "test_stage4_modes": 4, "test_stage5_apply_to": 5, "test_stage6_zero_grad": 6,
          "test_broken_models_fixed": 2}
STUB = "replace this line with your code"
REFERENCE = []  # the reference ToyModule, for the wrong toys below to fall back on


@pytest.fixture(scope="module")
def nb():
    """The assignment's own cells; the stage 1 test cell also defines the hidden trees."""
    namespace = run_cells(NOTEBOOK, *DEFINITIONS)
    run_cells(NOTEBOOK, "test_stage1_registration", namespace=namespace)
    REFERENCE[:] = [namespace["ToyModule"]]
    return namespace


def stub(name):
    """A method that raises like the release's stub, with the method's own name (as in the release)."""
    scope = {}
    exec(f"def {name}(self, *args, **kwargs):\n    raise NotImplementedError({STUB!r})", scope)
    return scope[name]


# --- the reference passes everything ----------------------------------------------------------------

def test_reference_passes_every_graded_cell_visible_and_hidden(nb, capsys):
    capsys.readouterr()
    for cell in GRADED:
        run_cells(NOTEBOOK, cell, namespace=nb)
    out, err = capsys.readouterr()
    assert err == "" and "✗" not in out
    assert out.count("✓") == 70  # 9 + 6 + 12 + 6 + 15 + 6 verdicts for the stages, 16 for the fixed models


@pytest.mark.parametrize("tree", ["small_net", "tied_net", "deep_net", "shared_net", "tied_weights", "lone_scale"])
def test_reference_mirrors_torch_on_every_aspect(nb, tree, capsys):
    check_mirrors_torch(*nb["mirrored"](nb[tree]))
    check_unknown_attribute(lambda: nb[tree](nb["ToyModule"]))
    out, err = capsys.readouterr()
    assert out.count("✓") == 9 and err == ""


# --- each graded cell depends on its own stage -----------------------------------------------------

@pytest.mark.parametrize("done", range(0, 7))
def test_a_student_who_finished_some_stages_gets_exactly_those_points(nb, done):
    namespace = run_cells(NOTEBOOK, "setup", "toy_module", namespace={})
    for name, stage in STAGES.items():
        if stage > done:
            setattr(namespace["ToyModule"], name, stub(name))
    run_cells(NOTEBOOK, *DEFINITIONS[2:], namespace=namespace)
    for name in ("deep_net", "shared_net", "tied_weights", "lone_scale"):  # the hidden trees
        namespace[name] = nb[name]
    for cell, stage in GRADED.items():
        if stage <= done:
            run_cells(NOTEBOOK, cell, namespace=namespace)
        else:  # the failure names the stage that is missing: this cell's own, or stage 1 when nothing is done
            rejected(lambda: run_cells(NOTEBOOK, cell, namespace=namespace),
                     f"stage {stage if done else 1}: `", "still raises the stub's NotImplementedError")


def test_release_class_cell_defines_toy_module_with_stubs():
    namespace = run_cells(RELEASE, "setup", "toy_module", "trees")
    toy_module = namespace["ToyModule"]
    assert set(STAGES) <= set(vars(toy_module))
    with pytest.raises(NotImplementedError, match=STUB):
        toy_module()
    rejected(lambda: check_mirrors_torch(*namespace["mirrored"](namespace["small_net"]), "registration"),
             "stage 1: `__init__` still raises the stub's NotImplementedError")


# --- wrong toys, each rejected with the hint that names its mistake ------------------------------------

def _children_first(self):
    for prefix, module in reversed(list(self.named_modules())):
        for name, p in module._parameters.items():
            yield (f"{prefix}.{name}" if prefix else name), p


def _sorted_parameters(self):
    yield from sorted(REFERENCE[0].named_parameters(self), key=lambda item: item[0])


def _breadth_first(self):
    found, i = [("", self)], 0
    while i < len(found):
        prefix, module = found[i]
        i += 1
        found += [(f"{prefix}.{n}" if prefix else n, c) for n, c in module._modules.items()]
    return found


def _one_level(self):
    yield "", self
    yield from self._modules.items()


def _no_dedupe(self, prefix=""):
    yield prefix, self
    for name, child in self._modules.items():
        yield from _no_dedupe(child, f"{prefix}.{name}" if prefix else name)


def _modules_deduplicated_only(self):
    for prefix, module in self.named_modules():
        for name, p in module._parameters.items():
            yield (f"{prefix}.{name}" if prefix else name), p


def _leading_dot(self):
    for prefix, module in self.named_modules():
        for name, p in module._parameters.items():
            yield f"{prefix}.{name}", p


def _parameters_only(self, prefix=""):
    return {k: v.detach() for k, v in self.named_parameters()}


def _parameters_then_buffers(self, prefix=""):
    return {k: v.detach() for k, v in list(self.named_parameters()) + list(self.named_buffers())}


def _cloned(self, prefix=""):
    return {k: v.clone() for k, v in REFERENCE[0].state_dict(self, prefix).items()}


def _strict_ignored(self, state_dict, strict=True):
    return REFERENCE[0].load_state_dict(self, state_dict, strict=False)


def _replacing_load(self, state_dict, strict=True):
    for key, value in state_dict.items():
        owner, _, leaf = key.rpartition(".")
        module = self
        for part in owner.split(".") if owner else []:
            module = getattr(module, part)
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(value.clone())
    return REFERENCE[0].load_state_dict(self, state_dict, strict)


def _keyerror_load(self, state_dict, strict=True):
    own = self.state_dict()
    for key in own:
        own[key].copy_(state_dict[key])
    return REFERENCE[0].load_state_dict(self, state_dict, strict)


def _no_propagation(self, mode=True):
    self.training = mode
    return self


def _one_level_train(self, mode=True):
    self.training = mode
    for child in self.children():
        child.training = mode
    return self


def _eval_returns_none(self):
    self.train(False)


def _parent_first(self, fn):
    for module in self.modules():
        fn(module)
    return self


def _new_parameters(self, dtype):
    for module in self.modules():
        for name, p in list(module._parameters.items()):
            module._parameters[name] = nn.Parameter(p.detach().to(dtype))
        for name, b in module._buffers.items():
            module._buffers[name] = b.to(dtype) if b.is_floating_point() else b
    return self


def _casts_counters(self, dtype):
    for module in self.modules():
        for p in module._parameters.values():
            p.data = p.data.to(dtype)
        for name, b in module._buffers.items():
            module._buffers[name] = b.to(dtype)
    return self


def _buffers_left(self, dtype):
    for p in self.parameters():
        p.data = p.data.to(dtype)
    return self


def _fills_zeros(self, set_to_none=True):
    for p in self.parameters():
        if p.grad is not None:
            p.grad.zero_()


def _new_zeros(self, set_to_none=True):
    for p in self.parameters():
        if p.grad is not None:
            p.grad = None if set_to_none else torch.zeros_like(p.grad)


def _stored_twice(self, name, value):
    REFERENCE[0].__setattr__(self, name, value)
    if isinstance(value, nn.Parameter):
        object.__setattr__(self, name, value)


def _buffer_slot_lost(self, name, value):
    registries = self.__dict__
    if isinstance(value, nn.Parameter):
        registries["_parameters"][name] = value
    elif isinstance(value, REFERENCE[0]):
        registries["_modules"][name] = value
    else:
        object.__setattr__(self, name, value)


# (label, method overrides, tree, aspects, fragments the failure must contain)
MISTAKES = [
    ("children before own parameters", {"named_parameters": _children_first}, "small_net", "names",
     ["named_parameters() order differs at position 0: yours 'head.weight', torch 'temperature'",
      "torch yields a module's own parameters before its children's", "(stage 2)"]),
    ("sorted names", {"named_parameters": _sorted_parameters}, "small_net", "names",
     ["order differs", "yours comes out sorted; torch keeps the order of assignment"]),
    ("breadth-first", {"named_modules": _breadth_first}, "deep_net", "names",
     ["named_modules() order differs at position 2: yours 'out', torch 'stack.first'", "breadth-first"]),
    ("no recursion", {"named_modules": _one_level}, "deep_net", "names",
     ["torch has 'stack.first', yours does not", "recurse into every child, and into the children's children"]),
    ("shared module twice", {"named_modules": _no_dedupe}, "tied_net", "names",
     ["named_modules() yields one object twice, as 'encoder' and as 'decoder'", "once, under the first name"]),
    ("tied parameter twice", {"named_parameters": _modules_deduplicated_only}, "tied_weights", "names",
     ["named_parameters() yields one object twice, as 'embed.fc.weight' and as 'head.fc.weight'",
      "remember the ids of what you have yielded"]),
    ("leading dot", {"named_parameters": _leading_dot}, "small_net", "names",
     ["yours has '.temperature', torch does not", "the root's prefix is ''"]),
    ("state_dict without buffers", {"state_dict": _parameters_only}, "small_net", "state_dict",
     ["state_dict() leaves out 2 buffers: `running_loss`, `block.calls`", "saves parameters and buffers"]),
    ("state_dict parameters then buffers", {"state_dict": _parameters_then_buffers}, "small_net", "state_dict",
     ["state_dict() keys are", "yours lists every parameter, then every buffer; torch goes module by module"]),
    ("state_dict skips the tied module", {"state_dict": _parameters_then_buffers}, "tied_net", "state_dict",
     ["state_dict() leaves out `decoder.weight`, `decoder.bias`", "does not skip repeats"]),
    ("state_dict copies", {"state_dict": _cloned}, "small_net", "state_dict",
     ["state_dict()['temperature'] is a copy", "use tensor.detach(), not .clone()"]),
    ("strict ignored", {"load_state_dict": _strict_ignored}, "small_net", "load_state_dict",
     ["load_state_dict(strict=True) accepted a state_dict with 2 missing keys ('temperature', 'head.bias')",
      'torch raises RuntimeError: Error(s) in loading state_dict for Net: Missing key(s) in state_dict: '
      '"temperature", "head.bias".', "strict=False only reports them"]),
    ("load replaces parameters", {"load_state_dict": _replacing_load}, "small_net", "load_state_dict",
     ["load_state_dict replaced the tensor at `temperature` with a new object", "tensor.copy_(value)"]),
    ("load raises KeyError", {"load_state_dict": _keyerror_load}, "small_net", "load_state_dict",
     ["load_state_dict(..., strict=False) raised KeyError: 'temperature'",
      "a key the given dict lacks is a missing key: report it (or, with strict=True, raise RuntimeError)"]),
    ("eval not propagated", {"train": _no_propagation}, "small_net", "modes",
     ["after model.eval(), `stem` has training=True in yours, False in torch",
      "calls train(mode) on every child"]),
    ("eval one level deep", {"train": _one_level_train}, "deep_net", "modes",
     ["after model.eval(), `stack.first` has training=True in yours", "each child must call train(mode) on its own"]),
    ("eval returns None", {"eval": _eval_returns_none}, "small_net", "modes",
     ["model.eval() returned None; torch returns the module itself", "model = model.eval()"]),
    ("apply parent first", {"apply": _parent_first}, "small_net", "apply",
     ["apply(fn) visits the modules in another order than torch",
      "torch: ['stem', 'block.fc', 'block', 'head', '(root)']", "so the root comes last"]),
    ("to replaces parameters", {"to": _new_parameters}, "small_net", "to",
     ["to(torch.float64) replaced the Parameter at `temperature` with a new object", "p.data = p.data.to(dtype)"]),
    ("to casts counters", {"to": _casts_counters}, "small_net", "to",
     ["buffer `block.calls` is torch.float64 in yours, torch.int64 in torch", "integer buffers"]),
    ("to leaves buffers", {"to": _buffers_left}, "small_net", "to",
     ["buffer `running_loss` is torch.float32 in yours, torch.float64 in torch", "buffers too"]),
    ("zero_grad fills zeros", {"zero_grad": _fills_zeros}, "small_net", "zero_grad",
     ["after zero_grad(), `temperature.grad` is a tensor of zeros in yours, None in torch", "set_to_none=True"]),
    ("zero_grad(set_to_none=False) replaces", {"zero_grad": _new_zeros}, "small_net", "zero_grad",
     ["after zero_grad(set_to_none=False), `temperature.grad` is a new tensor", "p.grad.zero_()"]),
    ("registered name also in __dict__", {"__setattr__": _stored_twice}, "small_net", "registration",
     ["`temperature` of the root is in _parameters and also in the instance __dict__", "goes stale"]),
    ("buffer slot lost", {"__setattr__": _buffer_slot_lost}, "small_net", "registration",
     ["after `model.running_loss = tensor`, yours' _buffers['running_loss'] still holds the old buffer",
      "a registered name keeps its slot"]),
]


def _set_order_load(self, state_dict, strict=True):
    """Copies the keys in set order, which depends on PYTHONHASHSEED: a tied tensor gets either key's value."""
    return REFERENCE[0].load_state_dict(self, {key: state_dict[key] for key in set(state_dict)}, strict)


def _reversed_load(self, state_dict, strict=True):
    """Copies the keys last to first: a tied tensor keeps the first key's value, torch keeps the last one's."""
    return REFERENCE[0].load_state_dict(self, dict(reversed(list(state_dict.items()))), strict)


@pytest.mark.parametrize("load", [_set_order_load, _reversed_load], ids=["set order", "reversed"])
@pytest.mark.parametrize("tree", ["tied_net", "tied_weights"])
def test_load_state_dict_may_copy_tied_keys_in_any_order(nb, load, tree, capsys):
    """A checkpoint of a tied model holds the same values under both keys: the order of the copies cannot matter."""
    right = type("ToyModule", (nb["ToyModule"],), {"load_state_dict": load})
    check_mirrors_torch(lambda: nb[tree](right), lambda: nb[tree](nn.Module), "load_state_dict")
    assert "✓ stage 3, load_state_dict" in capsys.readouterr().out


@pytest.mark.parametrize("label, overrides, tree, aspect, fragments", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_wrong_toy_is_rejected_with_its_hint(nb, label, overrides, tree, aspect, fragments):
    wrong = type("ToyModule", (nb["ToyModule"],), overrides)
    build = nb[tree]
    rejected(lambda: check_mirrors_torch(lambda: build(wrong), lambda: build(nn.Module), aspect), *fragments)


def test_a_stubbed_method_is_named_with_its_stage(nb):
    wrong = fresh_toy_module(named_buffers=True)
    rejected(lambda: check_mirrors_torch(lambda: nb["small_net"](wrong), lambda: nb["small_net"](nn.Module), "names"),
             "named_buffers() raised NotImplementedError",
             "stage 2: `named_buffers` still raises the stub's NotImplementedError: replace that line with your code")


# --- __getattr__ and the forgotten super().__init__() -------------------------------------------------

def _returns_none(self, name):
    for registry in ("_parameters", "_buffers", "_modules"):
        if name in self.__dict__.get(registry, {}):
            return self.__dict__[registry][name]
    return None


def _raises_keyerror(self, name):
    for registry in ("_parameters", "_buffers", "_modules"):
        if name in self.__dict__.get(registry, {}):
            return self.__dict__[registry][name]
    return self.__dict__["_modules"][name]


def _nameless_error(self, name):
    for registry in ("_parameters", "_buffers", "_modules"):
        if name in self.__dict__.get(registry, {}):
            return self.__dict__[registry][name]
    raise AttributeError("not found")


def _recursive(self, name):
    for registry in (self._parameters, self._buffers, self._modules):
        if name in registry:
            return registry[name]
    raise AttributeError(name)


@pytest.mark.parametrize("getattr_, fragments", [
    (_returns_none, ["`model.no_such_attribute` returned None; torch raises AttributeError: "
                     "'Net' object has no attribute 'no_such_attribute'", "passes silently as None",
                     "instead of returning None"]),
    (_raises_keyerror, ["raised KeyError: 'no_such_attribute' (in `_raises_keyerror`, line ", "; torch raises AttributeError",
                        "hasattr() and getattr(obj, name, default) rely on it"]),
    (_nameless_error, ["raised AttributeError('not found'), which does not name `no_such_attribute`"]),
], ids=["returns None", "KeyError", "nameless"])
def test_getattr_that_does_not_raise_attribute_error_is_rejected(nb, getattr_, fragments):
    wrong = type("ToyModule", (nb["ToyModule"],), {"__getattr__": getattr_})
    rejected(lambda: check_unknown_attribute(lambda: nb["small_net"](wrong)), *fragments)


def _silent(self, name, value):
    registries = self.__dict__
    if isinstance(value, nn.Parameter) and "_parameters" in registries:
        registries["_parameters"][name] = value
    elif "_modules" in vars(value) if hasattr(value, "__dict__") else False:
        registries.setdefault("_modules", {})[name] = value
    else:
        object.__setattr__(self, name, value)


def _through_attributes(self, name, value):
    if isinstance(value, nn.Parameter):
        self._parameters[name] = value
    else:
        object.__setattr__(self, name, value)


@pytest.mark.parametrize("overrides, fragments", [
    ({"__setattr__": _silent}, ["a subclass that forgets super().__init__() assigned a parameter (`self.weight = ...`) "
                                "without complaint", "torch says: AttributeError: cannot assign parameters before "
                                "Module.__init__() call"]),
    ({"__setattr__": _through_attributes}, ["raised AttributeError: 'Forgetful' object has no attribute '_parameters'",
                                            "that message does not say what went wrong"]),
    ({"__setattr__": _through_attributes, "__getattr__": _recursive}, ["raised RecursionError",
                                                                       "self.__dict__.get('_parameters')"]),
], ids=["silent", "unclear message", "recursion"])
def test_toy_that_does_not_fail_clearly_without_init_is_rejected(nb, overrides, fragments):
    rejected(lambda: check_forgotten_init(type("ToyModule", (nb["ToyModule"],), overrides)), *fragments)


def fresh_toy_module(**stubbed) -> type:
    """The solution's ToyModule, executed anew, with some methods replaced by the release's stub."""
    toy_module = run_cells(NOTEBOOK, "setup", "toy_module", namespace={})["ToyModule"]
    for name in stubbed:
        setattr(toy_module, name, stub(name))
    return toy_module


def test_forgotten_init_check_names_the_stage_of_a_stub():
    rejected(lambda: check_forgotten_init(fresh_toy_module(__setattr__=True)),
             "assigning a parameter before super().__init__() raised NotImplementedError",
             "stage 1: `__setattr__` still raises the stub's NotImplementedError")


def test_reference_fails_clearly_without_init(nb, capsys):
    check_forgotten_init(nb["ToyModule"])
    assert "✓ stage 1, forgotten super().__init__()" in capsys.readouterr().out


# --- the two broken models of Part G --------------------------------------------------------------------

LIST_HINT = ["`layers` of the root is in _modules in torch; yours keeps it in the instance __dict__",
             "2 ToyLinear layers sit in a plain list at `self.layers` and are not registered",
             "torch's `layers` is an nn.ModuleList whose children are named '0', '1'",
             "setattr(self, str(i), layer)"]
SCALER_HINT = ["building your toy raised AttributeError: cannot assign parameters before ToyModule.__init__() call",
               "`ToyScaler.__init__` assigns `self.weight` before `super().__init__()` has run",
               "call super().__init__() first in __init__"]


def test_list_model_shows_the_same_bug_as_torch_and_is_rejected(nb):
    toy = nb["ToyListModel"]([4, 8, 2])
    assert tuple(toy(torch.randn(3, 4)).shape) == (3, 2)  # it runs...
    assert list(toy.named_parameters()) == []              # ...and registers nothing, like torch with a plain list
    rejected(lambda: check_mirrors_torch(lambda: nb["ToyListModel"]([4, 8, 2]),
                                         lambda: nb["TorchListModel"]([4, 8, 2]), "registration"), *LIST_HINT)
    rejected(lambda: check_mirrors_torch(lambda: nb["ToyListModel"]([3, 5, 5, 1]),
                                         lambda: nb["TorchListModel"]([3, 5, 5, 1]), "names"),
             "torch's tree has a submodule `layers` (nn.ModuleList); in yours `model.layers` gives a list",
             "3 ToyLinear layers sit in a plain list at `self.layers`", "setattr(self, str(i), layer)")


def test_forgetful_scaler_is_rejected(nb):
    for aspect in ("registration", "names"):
        rejected(lambda: check_mirrors_torch(lambda: nb["ToyScaler"](3), lambda: nb["TorchScaler"](3), aspect),
                 *SCALER_HINT)


def test_fixed_models_pass_and_train(nb, capsys):
    for sizes in ([4, 8, 2], [2, 7, 7, 1]):
        check_mirrors_torch(lambda: nb["FixedToyListModel"](sizes), lambda: nb["TorchListModel"](sizes))
    check_mirrors_torch(lambda: nb["FixedToyScaler"](3), lambda: nb["TorchScaler"](3))
    out, err = capsys.readouterr()
    assert out.count("✓") == 24 and "✗" not in out and err == ""
    model = nb["FixedToyListModel"]([4, 8, 2])
    x = torch.randn(5, 4)
    before = model(x).detach()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).square().sum().backward()
    optimizer.step()
    assert not torch.equal(model(x).detach(), before)
    scaler = nb["FixedToyScaler"](3)
    scaler(x[:, :3])
    assert "calls" in scaler._buffers and int(scaler.calls) == 1  # `self.calls += 1` kept the buffer slot


@pytest.mark.parametrize("cell, fragments", [("list_diagnosis", LIST_HINT), ("scaler_diagnosis", SCALER_HINT)])
def test_notebook_demos_print_the_graders_diagnosis(nb, cell, fragments, capsys):
    run_cells(NOTEBOOK, cell, namespace=nb)
    out = capsys.readouterr().out
    for fragment in fragments:
        assert fragment in out



def test_unfinished_fixes_are_named_by_class(nb):
    namespace = run_cells(RELEASE, "list_answer", "scaler_answer", namespace=dict(nb))
    rejected(lambda: check_mirrors_torch(lambda: namespace["FixedToyListModel"]([4, 2]),
                                         lambda: namespace["TorchListModel"]([4, 2]), "registration"),
             "`FixedToyListModel.__init__` still raises the stub's NotImplementedError")
    rejected(lambda: check_mirrors_torch(lambda: namespace["FixedToyScaler"](2), lambda: namespace["TorchScaler"](2),
                                         "names"),
             "`FixedToyScaler.__init__` still raises the stub's NotImplementedError")


# --- Part G: what the fixed models compute ------------------------------------------------------------------

def _forward_variant(nb, forward):
    return type("FixedToyListModel", (nb["FixedToyListModel"],), {"forward": forward})


def _relu_everywhere(self, x):
    for layer in self.layers:
        x = torch.relu(layer(x))
    return x


def _detached_hidden(self, x):
    for layer in self.layers[:-1]:
        x = torch.relu(layer(x)).detach()
    return self.layers[-1](x)


def _skips_a_layer(self, x):
    return self.layers[-1](x) if x.shape[-1] == self.layers[-1].weight.shape[1] else self.layers[0](x)


@pytest.mark.parametrize("forward, fragments", [
    (_relu_everywhere, ["your model's output differs from torch's", "largest gap", "compare your forward"]),
    (_detached_hidden, ["your outputs match, but no gradient reaches the input", "through autograd"]),
], ids=["relu on the output", "detached"])
def test_fixed_list_model_that_computes_something_else_is_rejected(nb, forward, fragments):
    wrong = _forward_variant(nb, forward)
    rejected(lambda: check_mirrors_torch(lambda: wrong([4, 8, 2]), lambda: nb["TorchListModel"]([4, 8, 2]), "forward",
                                         example=(3, 4)), *fragments)


def test_forward_aspect_compares_the_counter_and_the_sizes(nb):
    class CountsTwice(nb["FixedToyScaler"]):
        def forward(self, x):
            self.calls += 2
            return x * self.weight

    rejected(lambda: check_mirrors_torch(lambda: CountsTwice(3), lambda: nb["TorchScaler"](3), "forward",
                                         example=(2, 3)), "buffer `calls` holds 2 in yours, 1 in torch")

    class Narrow(nb["ToyModule"]):
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(1))
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))

        def forward(self, x):
            return x * self.weight

    rejected(lambda: check_mirrors_torch(lambda: Narrow(3), lambda: nb["TorchScaler"](3), "forward", example=(2, 3)),
             "`model.weight` has shape [1] in yours, [3] in torch")
    rejected(lambda: check_mirrors_torch(lambda: Narrow(3), lambda: nb["TorchScaler"](3), "registration"),
             "the root's _parameters['weight'] is a float32 tensor of shape [1] in yours, a float32 tensor of shape [3] "
             "in torch", "the same sizes")


def test_forward_aspect_needs_an_example(nb):
    with pytest.raises(ValueError, match="example"):
        check_mirrors_torch(lambda: nb["FixedToyScaler"](3), lambda: nb["TorchScaler"](3), "forward")


@pytest.mark.parametrize("registers, fragments", [
    ("self.items = list(modules)", ["`layers` keeps 2 modules in a plain list at `self.items`", "setattr(self, str(i)"]),
    ("[setattr(self, f'layer{i}', m) for i, m in enumerate(modules)]",
     ["`layers` registers its children as ['layer0', 'layer1']; torch's are named ['0', '1']"]),
], ids=["plain list inside", "other names"])
def test_toy_module_list_that_does_not_register_like_module_list_is_rejected(nb, registers, fragments):
    namespace = dict(nb)
    exec(f"""
class UnregisteringList(ToyModule):
    def __init__(self, modules):
        super().__init__()
        {registers}


class ListModel(ToyModule):
    def __init__(self, sizes):
        super().__init__()
        self.layers = UnregisteringList([ToyLinear(a, b) for a, b in zip(sizes, sizes[1:])])
""", namespace)
    rejected(lambda: check_mirrors_torch(lambda: namespace["ListModel"]([4, 8, 2]),
                                         lambda: nb["TorchListModel"]([4, 8, 2]), "registration"), *fragments)


def test_a_torch_reference_that_fails_is_the_graders_error(nb):
    from grader import GraderError

    def broken_reference():
        raise RuntimeError("the test's own tree is broken")

    with pytest.raises(GraderError, match="grader error in `check_mirrors_torch"):
        check_mirrors_torch(lambda: nb["small_net"](nb["ToyModule"]), broken_reference, "names")
