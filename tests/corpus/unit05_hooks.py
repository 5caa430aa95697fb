"""Unit 05, hooks: answers students write, graded by tests/answer_lab.py against the visible and hidden tests."""

from answer_lab import Right, Wrong

RECORD_CLASS = '''
class record_activations:
    """A context manager class: hooks on entry, removed on exit (errors included)."""

    def __init__(self, model):
        self.model, self.acts, self.handles = model, {}, []

    def __enter__(self):
        for name, module in self.model.named_modules():
            if len(list(module.children())) == 0:
                self.handles.append(module.register_forward_hook(self._hook(name)))
        return self.acts

    def _hook(self, name):
        def keep(module, args, output):
            self.acts[name] = output.detach().clone()
        return keep

    def __exit__(self, *error):
        for handle in self.handles:
            handle.remove()
        return False
'''

RECORD_EXIT_STACK = '''
@contextlib.contextmanager
def record_activations(model):
    acts = {}
    with contextlib.ExitStack() as stack:  # a hook handle is a context manager that removes the hook
        for name, module in model.named_modules():
            if not any(True for _ in module.children()):
                stack.enter_context(module.register_forward_hook(
                    lambda module, args, output, name=name: acts.__setitem__(name, output.detach().clone())))
        yield acts
'''

RECORD_BASE = '''
@contextlib.contextmanager
def record_activations(model):
    acts, handles = {}, []

    def keep(name, module, args, output):
        acts[name] = KEEP

    for name, module in model.named_modules():
        if LEAF:
            PREFILL
            handles.append(module.register_forward_hook(functools.partial(keep, name)))
    try:
        yield acts
    finally:
        for handle in handles:
            handle.remove()
'''


def record(keep="output.detach().clone()", leaf="next(module.children(), None) is None", prefill="pass"):
    return RECORD_BASE.replace("KEEP", keep).replace("LEAF", leaf).replace("PREFILL", prefill)


RECORD_NO_FINALLY = '''
@contextlib.contextmanager
def record_activations(model):
    acts, handles = {}, []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            handles.append(module.register_forward_hook(
                lambda module, args, output, name=name: acts.update({name: output.detach().clone()})))
    yield acts
    for handle in handles:  # skipped when the body of the with block raises
        handle.remove()
'''

RECORD_SWALLOW = '''
@contextlib.contextmanager
def record_activations(model):
    acts, handles = {}, []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            handles.append(module.register_forward_hook(
                lambda module, args, output, name=name: acts.update({name: output.detach().clone()})))
    try:
        yield acts
    except Exception:
        pass  # "clean up quietly"
    finally:
        for handle in handles:
            handle.remove()
'''

RECORD_LATE_NAME = '''
@contextlib.contextmanager
def record_activations(model):
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
'''

NORMS_BASE = '''
def watch_grad_norms(model):
    norms, handles = {}, []
    for name, p in model.named_parameters():
        if p.requires_grad:
            norms[name] = []
            handles.append(p.register_hook(lambda grad, name=name: norms[name].append(NORM)))
    return norms, handles
'''


def norms(norm="grad.norm().item()"):
    return NORMS_BASE.replace("NORM", norm)


VALIDATE_BASE = '''
def input_validator(features):
    def hook(module, args):
        x = args[0]
        if TYPE_TEST:
            raise TypeError(f"expected a floating-point tensor, got {type(x).__name__}")
        if x.shape[DIM] != features:
            raise ValueError(f"expected {features} input features, got {x.shape[DIM]}")
        RETURN

    return hook
'''


def validator(type_test="not (isinstance(x, torch.Tensor) and x.is_floating_point())", dim="-1", ret="return None"):
    return VALIDATE_BASE.replace("TYPE_TEST", type_test).replace("DIM", dim).replace("RETURN", ret)


FIND_BASE = '''
def first_nonfinite(model, *inputs):
    found = []

    def check(name, module, args, output):
        if TEST:
            found.append(NAME)

    handles = [module.register_forward_hook(functools.partial(check, name)) for name, module in MODULES]
    try:
        with torch.no_grad():
            CALL
    finally:
        for handle in handles:
            handle.remove()
    return found[PICK] if found else None
'''


def finder(test="not torch.isfinite(output).all()", name="name", modules="model.named_modules()",
           call="model(*inputs)", pick="0"):
    return (FIND_BASE.replace("TEST", test).replace("NAME", name).replace("MODULES", modules)
            .replace("CALL", call).replace("PICK", pick))


FEATURE_BASE = '''
class FixedFeatureNet(nn.Module):
    """Keeps the body's output in self.features, with a forward hook on the body."""

    def __init__(self, in_features, hidden, out_features):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, out_features)
        self.features = None
        INIT

    def _keep(self, module, args, output):
        KEEP

    def forward(self, x):
        FORWARD
'''


def feature_net(init="self.body.register_forward_hook(self._keep)", keep="self.features = output.detach()",
                forward="return self.head(self.body(x))"):
    return FEATURE_BASE.replace("INIT", init).replace("KEEP", keep).replace("FORWARD", forward)


CLIPPED_BASE = '''
class FixedClippedNet(nn.Module):
    """Caps the hidden activations at `cap`, with a forward hook on the ReLU."""

    def __init__(self, in_features, hidden, out_features, cap=0.5):
        super().__init__()
        self.cap = cap
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, out_features)
        self.act.register_forward_hook(self._cap)

    def _cap(self, module, args, output):
        CAP

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
'''


def clipped(cap):
    return CLIPPED_BASE.replace("CAP", cap)


ANSWERS = [
    # --- Part A: record_activations -------------------------------------------------------------------
    Wrong("record_answer", "hooks removed after the yield, not in finally", RECORD_NO_FINALLY,
          fails={"test_record_mlp": ["its hooks stay registered", "`0` still has 1 forward hook", "finally:"]}),
    Wrong("record_answer", "detach without clone, before an in-place ReLU", record(keep="output.detach()"),
          fails={"test_record_mlp": ["a later in-place operation wrote into the tensor you stored",
                                     "works in place (inplace=True)", "output.detach().clone()"]}),
    Wrong("record_answer", "records every module, containers included", record(leaf="True"),
          fails={"test_record_mlp": ["which has children: record leaf modules only"],
                 "test_record_tree": ["which has children"]}),
    Wrong("record_answer", "dict filled in advance in registration order",
          record(prefill="acts[name] = None"),
          fails={"test_record_tree": ["the records are not in the order the modules ran",
                                      "ran:  ['body.0', 'body.1', 'head']", "add a record when its hook fires"]}),
    Wrong("record_answer", "keeps the output attached to the graph", record(keep="output.clone()"),
          fails={"test_record_mlp": ["still attached to the autograd graph", "output.detach().clone()"]}),
    Wrong("record_answer", "swallows the body's error", RECORD_SWALLOW,
          fails={"test_record_mlp": ["disappeared: the recorder swallowed it", "do not catch them"]}),
    Wrong("record_answer", "keeps the first output only",
          record(keep="acts[name] if name in acts else output.detach().clone()"),
          fails={"test_record_mlp": ["holds the output of the first call, not the latest", "overwrite the record"]}),
    Wrong("record_answer", "a leaf is a module with parameters", record(leaf="len(module._parameters) > 0"),
          fails={"test_record_mlp": ["no record for `1` (nn.ReLU)", "with or without parameters"]}),
    Wrong("record_answer", "records the input instead of the output", record(keep="args[0].detach().clone()"),
          fails={"test_record_mlp": ["does not hold the output of `0`", "store output"]}),
    Wrong("record_answer", "lambda in a loop sees the last name", RECORD_LATE_NAME,
          fails={"test_record_mlp": ["acts holds 1 record; the model has 3 leaf modules",
                                     "acts holds only the last leaf's name", "name=name"]}),
    Right("record_answer", "a class with __enter__ and __exit__", RECORD_CLASS),
    Right("record_answer", "ExitStack of hook handles, any() over children", RECORD_EXIT_STACK),
    Right("record_answer", "lambda bound with a default, torch.Tensor.clone(detach)",
          record(keep="torch.clone(output).detach()", leaf="not list(module.children())")),

    # --- Part B: watch_grad_norms ---------------------------------------------------------------------
    Wrong("norms_answer", "lambda in a loop sees the last name",
          edit=("lambda grad, name=name:", "lambda grad:"),
          fails={"test_grad_norms": ["some parameters have no norms and others have too many",
                                     "lambda grad, name=name"]}),
    Wrong("norms_answer", "appends tensors, not floats", norms("grad.norm()"),
          fails={"test_grad_norms": ["holds torch.Tensor values, not Python floats", "grad.norm().item()"]}),
    Wrong("norms_answer", "squared norms", norms("(grad ** 2).sum().item()"),
          fails={"test_grad_norms": ["those are squared norms"]}),
    Wrong("norms_answer", "L1 norms", norms("grad.abs().sum().item()"),
          fails={"test_grad_norms": ["but the L2 norms of `0.weight`.grad are", "grad.norm().item()"]}),
    Wrong("norms_answer", "frozen parameters hooked too",
          edit=("        if p.requires_grad:\n", "        if True:\n"),
          fails={"test_grad_norms": ["doesn't require gradient", "skip frozen ones"]}),
    Wrong("norms_answer", "handles thrown away",
          edit=("handles.append(p.register_hook(lambda grad, name=name: norms[name].append(grad.norm().item())))",
                "p.register_hook(lambda grad, name=name: norms[name].append(grad.norm().item()))"),
          fails={"test_grad_norms": ["its hooks still run", "return every handle"]}),
    Wrong("norms_answer", "overwrites instead of appending", '''
def watch_grad_norms(model):
    norms, handles = {}, []
    for name, p in model.named_parameters():
        if p.requires_grad:
            norms[name] = []

            def hook(grad, name=name):
                norms[name] = grad.norm().item()

            handles.append(p.register_hook(hook))
    return norms, handles
''', fails={"test_grad_norms": ["is float, not a list of norms", "norms[name].append"]}),
    Wrong("norms_answer", "reads p.grad inside a tensor hook (not set yet)", '''
def watch_grad_norms(model):
    norms, handles = {}, []
    for name, p in model.named_parameters():
        if p.requires_grad:
            norms[name] = []
            handles.append(p.register_hook(lambda grad, name=name, p=p: norms[name].append(p.grad.norm().item())))
    return norms, handles
''', fails={"test_grad_norms": ["raised AttributeError", "runs before p.grad is set"]}),
    Right("norms_answer", "post-accumulate-grad hooks and a defaultdict", '''
import collections


def watch_grad_norms(model):
    norms = collections.defaultdict(list)
    handles = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue

        def record(param, name=name):
            norms[name].append(torch.linalg.vector_norm(param.grad).item())

        handles.append(p.register_post_accumulate_grad_hook(record))
    return norms, handles
'''),
    Right("norms_answer", "functools.partial and float()", '''
def watch_grad_norms(model):
    norms, handles = {}, []

    def record(name, grad):
        norms[name].append(float(grad.pow(2).sum().sqrt()))

    for name, p in model.named_parameters():
        if p.requires_grad:
            norms[name] = []
            handles.append(p.register_hook(functools.partial(record, name)))
    return norms, handles
'''),

    # --- Part C: input_validator ----------------------------------------------------------------------
    Wrong("validate_answer", "accepts only float32",
          validator(type_test="not isinstance(x, torch.Tensor) or x.dtype != torch.float32"),
          fails={"test_validator": ["a valid float64 input of shape [8, 20] raised TypeError",
                                    "float16, bfloat16, float32 and float64 are all floating point"]}),
    Wrong("validate_answer", "no isinstance test", validator(type_test="not x.is_floating_point()"),
          fails={"test_validator": ["for a Python list (not a tensor) of shape [8, 20], the model raised "
                                    "AttributeError", "test isinstance(x, torch.Tensor) before anything else"]}),
    Wrong("validate_answer", "returns the input cast to float32", validator(ret="return (x.float(),)"),
          fails={"test_validator": ["for a valid float64 input of shape [8, 20], forward got a float32 tensor",
                                    "return None from the hook"]}),
    Wrong("validate_answer", "size checked before the type", '''
def input_validator(features):
    def hook(module, args):
        x = args[0]
        if x.shape[-1] != features:
            raise ValueError(f"expected {features} input features, got {x.shape[-1]}")
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            raise TypeError("expected a floating-point tensor")

    return hook
''', fails={"test_validator": ["for an input of dtype torch.int64 with 19 features, the model raised ValueError",
                               "check the type first"]}),
    Wrong("validate_answer", "checks dimension 1, not the last", validator(dim="1"),
          fails={"test_validator": ["a valid float32 input of shape [4, 5, 3] raised ValueError"]}),
    Wrong("validate_answer", "a message without the sizes", '''
def input_validator(features):
    def hook(module, args):
        x = args[0]
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            raise TypeError("bad dtype")
        if x.shape[-1] != features:
            raise ValueError("wrong number of input features")

    return hook
''', fails={"test_validator": ["the ValueError says 'wrong number of input features'", "name both sizes"]}),
    Wrong("validate_answer", "assert statements", '''
def input_validator(features):
    def hook(module, args):
        x = args[0]
        assert isinstance(x, torch.Tensor) and x.is_floating_point(), "expected a float tensor"
        assert x.shape[-1] == features, f"expected {features} input features, got {x.shape[-1]}"

    return hook
''', fails={"test_validator": ["raised AssertionError", "not ValueError"]}),
    Wrong("validate_answer", "a list of float dtypes without bfloat16",
          validator(type_test="not isinstance(x, torch.Tensor) or x.dtype not in (torch.float16, torch.float32, "
                              "torch.float64)"),
          fails={"test_validator": ["a valid bfloat16 input of shape [8, 20] raised TypeError"]}),
    Wrong("validate_answer", "rejects integer dtypes only, so bool goes through",
          validator(type_test="not isinstance(x, torch.Tensor) or x.dtype in (torch.int32, torch.int64)"),
          fails={"test_validator": ["for an input of dtype torch.bool", "not TypeError",
                                    "integer and bool tensors are not floating point"]}),
    Right("validate_answer", "torch.is_tensor and dtype.is_floating_point, x.size(-1)", '''
def input_validator(features):
    def hook(module, args):
        x = args[0]
        if not torch.is_tensor(x) or not x.dtype.is_floating_point:
            raise TypeError(f"input must be a floating-point tensor, not {type(x).__name__}")
        n = x.size(-1)
        if n != features:
            raise ValueError(f"got {n} input features, expected {features}")
    return hook
'''),
    Right("validate_answer", "an explicit list of the four float dtypes, returns args unchanged",
          validator(type_test="not isinstance(x, torch.Tensor) or x.dtype not in (torch.float16, torch.bfloat16, "
                              "torch.float32, torch.float64)", ret="return args")),

    # --- Part D: first_nonfinite ----------------------------------------------------------------------
    Wrong("nonfinite_answer", "hooks removed without try/finally", '''
def first_nonfinite(model, *inputs):
    found = []

    def check(name, module, args, output):
        if not found and not torch.isfinite(output).all():
            found.append(name)

    handles = [module.register_forward_hook(functools.partial(check, name)) for name, module in model.named_modules()]
    with torch.no_grad():
        model(*inputs)
    for handle in handles:
        handle.remove()
    return found[0] if found else None
''', fails={"test_nonfinite_mlp": ["leaves hooks on the model when the model raises", "finally:"]}),
    Wrong("nonfinite_answer", "torch.isnan misses Inf", finder(test="torch.isnan(output).any()"),
          fails={"test_nonfinite_mlp": ["outputs Inf", "torch.isfinite"]}),
    Wrong("nonfinite_answer", "keeps the last, not the first", finder(pick="-1"),
          fails={"test_nonfinite_mlp": ["later modules only inherit it", "keep the first module"]}),
    Wrong("nonfinite_answer", "leaf modules only",
          finder(modules="((n, m) for n, m in model.named_modules() if next(m.children(), None) is None)"),
          fails={"test_nonfinite_mlp": ["found nothing, but the model itself (`''`)"],
                 "test_nonfinite_tree": ["the model itself (name '') included"]}),
    Wrong("nonfinite_answer", "catches the model's error", '''
def first_nonfinite(model, *inputs):
    found = []

    def check(name, module, args, output):
        if not torch.isfinite(output).all():
            found.append(name)

    handles = [module.register_forward_hook(functools.partial(check, name)) for name, module in model.named_modules()]
    try:
        model(*inputs)
    except Exception:
        return None
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None
''', fails={"test_nonfinite_mlp": ["the error disappeared", "let the model's error go on to the caller"]}),
    Wrong("nonfinite_answer", "model.forward() skips the model's own hooks", finder(call="model.forward(*inputs)"),
          fails={"test_nonfinite_mlp": ["found nothing, but the model itself (`''`)", "call the model as model(...)"]}),
    Wrong("nonfinite_answer", "returns the module, not its name", finder(name="module"),
          fails={"test_nonfinite_mlp": ["returned a module (nn.Linear), not its name"]}),
    Wrong("nonfinite_answer", "only the top-level children", finder(modules="[('', model), *model.named_children()]"),
          fails={"test_nonfinite_tree": ["returned 'block', which contains `block.1` (nn.Tanh), the module that output Inf "
                                        "first", "nested ones included"]}),
    Right("nonfinite_answer", "one global forward hook and a name table", '''
def first_nonfinite(model, *inputs):
    names = {id(module): name for name, module in model.named_modules()}
    bad = []

    def watch(module, args, output):
        if id(module) in names and not bad and (output.isnan().any() or output.isinf().any()):
            bad.append(names[id(module)])

    handle = torch.nn.modules.module.register_module_forward_hook(watch)
    try:
        model(*inputs)
    finally:
        handle.remove()
    return bad[0] if bad else None
'''),
    Right("nonfinite_answer", "ExitStack of handles, every non-finite name in order", '''
def first_nonfinite(model, *inputs):
    order = []
    with contextlib.ExitStack() as stack:
        for name, module in model.named_modules():
            hook = lambda module, args, output, name=name: order.append((name, bool(torch.isfinite(output).all())))
            stack.enter_context(module.register_forward_hook(hook))
        with torch.inference_mode():
            model(*inputs)
    return next((name for name, finite in order if not finite), None)
'''),

    # --- Part E: FixedFeatureNet ----------------------------------------------------------------------
    Wrong("leak_answer", "hook still registered in forward",
          feature_net(init="pass", forward="self.body.register_forward_hook(self._keep)\n"
                                           "        return self.head(self.body(x))"),
          fails={"test_leak_fixed": ["calling the model leaves hooks behind", "`body` gains a forward hook on every call"]}),
    Wrong("leak_answer", "hook on the head, not the body", feature_net(init="self.head.register_forward_hook(self._keep)"),
          fails={"test_leak_fixed": ["model.features does not hold that call's output of `body`"]}),
    Wrong("leak_answer", "the hook line deleted", feature_net(init="pass"),
          fails={"test_leak_fixed": ["model.features is NoneType, not the output of `body`"]}),
    Wrong("leak_answer", "body called through .forward()",
          feature_net(forward="return self.head(self.body.forward(x))"),
          fails={"test_leak_fixed": ["`body` ran without its hooks", "self.body.forward(x) skips every hook"]}),
    Wrong("leak_answer", "head called through .forward()",
          feature_net(forward="return self.head.forward(self.body(x))"),
          fails={"test_leak_fixed": ["`head` (nn.Linear): its parameters are in the output's graph, but `head(...)` "
                                     "was never called"]}),
    Wrong("leak_answer", "keeps the output attached to the graph", feature_net(keep="self.features = output"),
          fails={"test_leak_fixed": ["still attached to the autograd graph", "output.detach()"]}),
    Wrong("leak_answer", "a pre-hook keeps the input", feature_net(
        init="self.body.register_forward_pre_hook(lambda module, args: setattr(self, 'features', args[0].detach()))"),
          fails={"test_leak_fixed": ["does not hold that call's output of `body`"]}),
    Wrong("leak_answer", "hook registered before the body exists", '''
class FixedFeatureNet(nn.Module):
    """Keeps the body's output in self.features, with a forward hook on the body."""

    def __init__(self, in_features, hidden, out_features):
        super().__init__()
        self.body.register_forward_hook(self._keep)
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, out_features)
        self.features = None

    def _keep(self, module, args, output):
        self.features = output.detach()

    def forward(self, x):
        return self.head(self.body(x))
''', fails={"test_leak_fixed": ["building the model raised AttributeError"]}),
    Right("leak_answer", "no hook at all: forward keeps the features",
          feature_net(init="pass", forward="h = self.body(x)\n        self.features = h.detach()\n"
                                           "        return self.head(h)")),
    Right("leak_answer", "registered once, on the first call",
          feature_net(init="self._handle = None",
                      forward="if self._handle is None:\n            self._handle = self.body.register_forward_hook("
                              "self._keep)\n        return self.head(self.body(x))")),
    Right("leak_answer", "a lambda hook in __init__",
          feature_net(init="self.body.register_forward_hook(lambda m, a, out: setattr(self, 'features', "
                           "out.detach()))")),

    # --- Part F: FixedClippedNet ----------------------------------------------------------------------
    Wrong("inplace_answer", ".data hack: clamps in place behind autograd's back", clipped("output.data.clamp_(max=self.cap)"),
          fails={"test_inplace_fixed": ["your outputs match, but the gradient", "`.data`"]}),
    Wrong("inplace_answer", "returns the in-place clamp", clipped("return output.clamp_(max=self.cap)"),
          fails={"test_inplace_fixed": ["modified by an inplace operation", "return a new tensor from the hook"]}),
    Wrong("inplace_answer", "clamps a copy and throws it away", clipped("output = output.clamp(max=self.cap)"),
          fails={"test_inplace_fixed": ["your model's eval-mode output differs from ClippedNet's"]}),
    Wrong("inplace_answer", "detaches the capped output", clipped("return output.detach().clamp(max=self.cap)"),
          fails={"test_inplace_fixed": ["`fc1.weight` gets no gradient", "cut from the graph"]}),
    Wrong("inplace_answer", "min and max swapped", clipped("return output.clamp(min=self.cap)"),
          fails={"test_inplace_fixed": ["your model's eval-mode output differs from ClippedNet's"]}),
    Wrong("inplace_answer", "cap hard-coded at 0.5", clipped("return output.clamp(max=0.5)"),
          fails={"test_inplace_fixed": ["your model's eval-mode output differs from ClippedNet's"]}),
    Wrong("inplace_answer", "in place under no_grad", clipped("with torch.no_grad():\n            output.clamp_(max=self.cap)"),
          fails={"test_inplace_fixed": ["modified by an inplace operation"]}),
    Right("inplace_answer", "torch.clamp between 0 and cap", clipped("return torch.clamp(output, 0, self.cap)")),
    Right("inplace_answer", "torch.minimum with a full tensor",
          clipped("return torch.minimum(output, torch.full_like(output, self.cap))")),
    Right("inplace_answer", "hardtanh", clipped("return torch.nn.functional.hardtanh(output, 0.0, self.cap)")),
]
