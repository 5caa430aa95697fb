"""Unit 08, state, devices and functional modules: realistic answers to ScaledLinear's upgrade, materialize,
ensemble_forward, plain_state_dict and add_lora."""

from answer_lab import Right, Wrong

UPGRADE, MATERIALIZE, ENSEMBLE, PLAIN, LORA = (
    "upgrade_answer", "materialize_answer", "ensemble_answer", "plain_answer", "lora_answer")
OLD, NEWER = "test_upgrade_old", "test_upgrade_newer"
MAT, MAT_BUFFERS = "test_materialize", "test_materialize_buffers"
OUTPUTS, GRADIENTS = "test_ensemble_outputs", "test_ensemble_gradients"
LOADS, MODEL = "test_plain_loads", "test_plain_model"
COMPUTES, UNCHANGED = "test_lora_computes", "test_lora_starts_unchanged"

# --- Part A: ScaledLinear._load_from_state_dict ------------------------------------------------------------
SIGNATURE = '''class ScaledLinear(NewScaledLinear):
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
'''
SUPER = '''        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
'''
EXP_IF = 'if local_metadata.get("version", 1) < 2 and prefix + "scale" in state_dict:'
EXP = 'state_dict[prefix + "scale"] = state_dict[prefix + "scale"].exp()'
MOVE = 'state_dict[prefix + "linear." + name] = state_dict.pop(prefix + "fc." + name)'
STRICT = "cannot load"

# --- Part B: materialize -----------------------------------------------------------------------------------
RESET_LOOP = '''    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
'''
EMPTY = "uninitialised memory"

# --- Part C: ensemble_forward ------------------------------------------------------------------------------
def ensemble(body: str) -> str:
    return "def ensemble_forward(model, params, buffers, x):\n" + body


# --- Part D: plain_state_dict ------------------------------------------------------------------------------
def plain(body: str) -> str:
    return "def plain_state_dict(model):\n" + body


# --- Part E: add_lora --------------------------------------------------------------------------------------
def lora(body: str) -> str:
    return "def add_lora(model, rank):\n" + body


NOT_HELD = "does not hold the tensors the exercise describes"

ANSWERS = [
    # --- Part A ----------------------------------------------------------------------------------------
    Wrong(UPGRADE, "overrides load_state_dict, which torch never calls on a nested module", '''
class ScaledLinear(NewScaledLinear):
    def load_state_dict(self, state_dict, strict=True, assign=False):
        state_dict = dict(state_dict)
        if "fc.weight" in state_dict:
            state_dict["scale"] = state_dict["scale"].exp()
            state_dict["linear.weight"] = state_dict.pop("fc.weight")
            state_dict["linear.bias"] = state_dict.pop("fc.bias")
        return super().load_state_dict(state_dict, strict, assign)
''', fails={OLD: [STRICT, 'Unexpected key(s) in state_dict: "0.fc.weight"', "once per module", "prefix"]}),
    Wrong(UPGRADE, "forgets the prefix: the keys of a nested ScaledLinear are never found",
          edit=(EXP_IF, 'if local_metadata.get("version", 1) < 2 and "scale" in state_dict:',
                EXP, 'state_dict["scale"] = state_dict["scale"].exp()',
                'if prefix + "fc." + name in state_dict:', 'if "fc." + name in state_dict:',
                MOVE, 'state_dict["linear." + name] = state_dict.pop("fc." + name)'),
          fails={OLD: [STRICT, 'Missing key(s) in state_dict: "0.linear.weight"', "`prefix` its place in the model"],
                 NEWER: [STRICT]}),
    Wrong(UPGRADE, "takes the exponential of every checkpoint's scale, whatever its version",
          edit=(EXP_IF, 'if prefix + "scale" in state_dict:'),
          fails={NEWER: ["with ScaledLinearV2's checkpoint (_metadata: versions 1, 2) loaded, your train-mode output "
                         "differs", "largest gap"]}),
    Wrong(UPGRADE, "tells the versions apart by the keys: version 2 has the same keys as version 1",
          edit=(EXP_IF, 'if prefix + "fc.weight" in state_dict and prefix + "scale" in state_dict:'),
          fails={NEWER: ["with ScaledLinearV2's checkpoint", "your train-mode output differs"]}),
    Wrong(UPGRADE, "compares the version with == 1, so a checkpoint without _metadata is taken for version 3",
          edit=(EXP_IF, 'if local_metadata.get("version") == 1 and prefix + "scale" in state_dict:'),
          fails={OLD: ["(no _metadata) loaded, your train-mode output differs"]}),
    Wrong(UPGRADE, "reads the version of its own class instead of the checkpoint's",
          edit=(EXP_IF, 'if self._version < 2 and prefix + "scale" in state_dict:'),
          fails={OLD: ["with nn.Sequential's checkpoint (_metadata: version 1) loaded, your train-mode output differs"]}),
    Wrong(UPGRADE, "takes the exponential in place, changing the caller's checkpoint",
          edit=(EXP, 'state_dict[prefix + "scale"].exp_()'),
          fails={OLD: ["loading changed the checkpoint's own tensors in place", "`0.scale`", "not `t.exp_()`"]}),
    Wrong(UPGRADE, "copies fc.* to linear.* and leaves the old keys behind",
          edit=(MOVE, 'state_dict[prefix + "linear." + name] = state_dict[prefix + "fc." + name]'),
          fails={OLD: [STRICT, 'Unexpected key(s) in state_dict: "0.fc.weight"'],
                 NEWER: [STRICT, 'Unexpected key(s) in state_dict: "fc.weight"']}),
    Wrong(UPGRADE, "renames every key that contains fc., its own prefix too when the layer itself is named fc",
          edit=('''        for name in ("weight", "bias"):
            if prefix + "fc." + name in state_dict:
                ''' + MOVE, '''        for key in list(state_dict):
            if "fc." in key:
                state_dict[key.replace("fc.", "linear.")] = state_dict.pop(key)'''),
          fails={OLD: [STRICT, '"fc.linear.weight"'], NEWER: [STRICT]}),
    Wrong(UPGRADE, "builds a new dict and passes it to super(): the layers inside load from torch's own dict", SIGNATURE + '''
        upgraded = {}
        for key, value in state_dict.items():
            if key == prefix + "scale" and local_metadata.get("version", 1) < 2:
                value = value.exp()
            upgraded[key.replace(prefix + "fc.", prefix + "linear.")] = value
''' + SUPER.replace("super()._load_from_state_dict(state_dict,", "super()._load_from_state_dict(upgraded,"),
          fails={OLD: [STRICT, 'Missing key(s) in state_dict: "0.linear.weight"']}),
    Wrong(UPGRADE, "takes the logarithm instead of the exponential",
          edit=(EXP, 'state_dict[prefix + "scale"] = state_dict[prefix + "scale"].log()'),
          fails={OLD: ["your train-mode output differs"]}),
    Right(UPGRADE, "a load_state_dict pre-hook registered in __init__", '''
class ScaledLinear(NewScaledLinear):
    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features)
        self.register_load_state_dict_pre_hook(self._upgrade)

    @staticmethod
    def _upgrade(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if (local_metadata.get("version") or 1) < 2 and prefix + "scale" in state_dict:
            state_dict[prefix + "scale"] = torch.exp(state_dict[prefix + "scale"])
        for old in [key for key in state_dict if key.startswith(prefix + "fc.")]:
            state_dict[prefix + "linear." + old[len(prefix + "fc."):]] = state_dict.pop(old)
'''),
    Right(UPGRADE, "a version variable and a table of renames", SIGNATURE + '''
        version = local_metadata.get("version")
        if version is None or version == 1:
            if prefix + "scale" in state_dict:
                state_dict[prefix + "scale"] = state_dict[prefix + "scale"].exp()
        renames = {prefix + "fc.weight": prefix + "linear.weight", prefix + "fc.bias": prefix + "linear.bias"}
        for old, new in renames.items():
            if old in state_dict:
                state_dict[new] = state_dict.pop(old)
''' + SUPER),

    # --- Part B ----------------------------------------------------------------------------------------
    Wrong(MATERIALIZE, "to_empty and nothing else", '''
def materialize(model, device):
    return model.to_empty(device=device)
''', fails={MAT: [EMPTY, "`embed.weight`", "reset_parameters()"], MAT_BUFFERS: [EMPTY, "`1.running_mean`"]}),
    Wrong(MATERIALIZE, "model.to(device), which has nothing to copy from meta", '''
def materialize(model, device):
    return model.to(device)
''', fails={MAT: ["raised NotImplementedError: Cannot copy out of meta tensor", "to_empty(device=...)"]}),
    Wrong(MATERIALIZE, "resets the direct children only, not the layers inside block",
          edit=("for module in model.modules():", "for module in model.children():"),
          fails={MAT: [EMPTY, "`block.0.weight`"], MAT_BUFFERS: []}),
    Wrong(MATERIALIZE, "initialises first, then to_empty throws the values away", '''
def materialize(model, device):
''' + RESET_LOOP + '''    model.to_empty(device=device)
    return model
''', fails={MAT: [EMPTY, "`embed.weight`"]}),
    Wrong(MATERIALIZE, "initialises the parameters with nn.init and leaves the buffers", '''
def materialize(model, device):
    model.to_empty(device=device)
    for parameter in model.parameters():
        nn.init.normal_(parameter, std=0.02)
    return model
''', fails={MAT: [EMPTY, "`position.table`"], MAT_BUFFERS: [EMPTY, "`1.running_mean`"]}),
    Wrong(MATERIALIZE, "resets torch's own layers only, not PositionalTable",
          edit=('if hasattr(module, "reset_parameters"):',
                "if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm, nn.BatchNorm1d)):"),
          fails={MAT: [EMPTY, "`position.table`"], MAT_BUFFERS: [EMPTY, "`0.weight`"]}),
    Wrong(MATERIALIZE, "passes the device positionally to to_empty", edit=("to_empty(device=device)", "to_empty(device)"),
          fails={MAT: ["raised TypeError", "to_empty() takes 1 positional argument"]}),
    Wrong(MATERIALIZE, "skips modules that hold no parameters of their own, such as PositionalTable",
          edit=('if hasattr(module, "reset_parameters"):',
                'if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False)):'),
          fails={MAT: [EMPTY, "`position.table`"]}),
    Wrong(MATERIALIZE, "builds a new model of the same class instead", '''
def materialize(model, device):
    return type(model)().to(device)
''', fails={MAT: ["returned another TinyEncoder, not the model it was given"]}),
    Right(MATERIALIZE, "model.apply with a lambda", '''
def materialize(model, device):
    model = model.to_empty(device=device)
    model.apply(lambda module: module.reset_parameters() if hasattr(module, "reset_parameters") else None)
    return model
'''),
    Right(MATERIALIZE, "named_modules and a callable check", '''
def materialize(model, device):
    model.to_empty(device=torch.device(device), recurse=True)
    for _, module in model.named_modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return model
'''),

    # --- Part C ----------------------------------------------------------------------------------------
    Wrong(ENSEMBLE, "passes the stacked parameters only: BatchNorm takes the template's statistics", ensemble('''
    return vmap(lambda member_params: functional_call(model, member_params, (x,)))(params)
'''), fails={OUTPUTS: ["out[1] differs from member 1's output", "member 0's buffers", "pass the stacked buffers too"]}),
    Wrong(ENSEMBLE, "loads each member into the template with load_state_dict", ensemble('''
    outputs = []
    for i in range(len(next(iter(params.values())))):
        model.load_state_dict({**{k: v[i] for k, v in params.items()}, **{k: v[i] for k, v in buffers.items()}})
        outputs.append(model(x))
    return torch.stack(outputs)
'''), fails={OUTPUTS: ["ensemble_forward changed `model`", "lends the tensors"]}),
    Wrong(ENSEMBLE, "loads each member into a copy of the template: no gradient reaches the stacked tensors", ensemble('''
    outputs = []
    for i in range(len(next(iter(params.values())))):
        member = copy.deepcopy(model)
        member.load_state_dict({**{k: v[i] for k, v in params.items()}, **{k: v[i] for k, v in buffers.items()}})
        outputs.append(member(x))
    return torch.stack(outputs)
'''), fails={GRADIENTS: ["no gradient reaches params['0.weight']"],
             OUTPUTS: ["raised RuntimeError", "the meta device"]}),
    Wrong(ENSEMBLE, "detaches the stacked parameters", ensemble('''
    detached = {name: tensor.detach() for name, tensor in params.items()}
    return vmap(lambda p, b: functional_call(model, (p, b), (x,)))(detached, buffers)
'''), fails={GRADIENTS: ["no gradient reaches params['0.weight']", "as they are"]}),
    Wrong(ENSEMBLE, "vmaps over the parameters only and passes the stacked buffers whole", ensemble('''
    return vmap(lambda member_params: functional_call(model, (member_params, buffers), (x,)))(params)
'''), fails={OUTPUTS: ["ensemble_forward(model, params, buffers, x) raised RuntimeError",
                     "`1.running_mean` holds all 3 members", "both dicts must go through vmap"]}),
    Wrong(ENSEMBLE, "concatenates the members' outputs instead of stacking them", ensemble('''
    n = len(next(iter(params.values())))
    return torch.cat([functional_call(model, ({k: v[i] for k, v in params.items()},
                                              {k: v[i] for k, v in buffers.items()}), (x,)) for i in range(n)])
'''), fails={OUTPUTS: ["returned shape [24, 10]", "[3, 8, 10]", "a new first dimension"]}),
    Wrong(ENSEMBLE, "runs the ensemble under torch.no_grad()", ensemble('''
    with torch.no_grad():
        return vmap(lambda p, b: functional_call(model, (p, b), (x,)))(params, buffers)
'''), fails={GRADIENTS: ["the stacked output carries no autograd graph"]}),
    Right(ENSEMBLE, "a Python loop over the members, slicing both dicts", ensemble('''
    n = next(iter(params.values())).shape[0]
    outputs = [functional_call(model, ({k: v[i] for k, v in params.items()}, {k: v[i] for k, v in buffers.items()}),
                               (x,)) for i in range(n)]
    return torch.stack(outputs)
''')),
    Right(ENSEMBLE, "one merged dict, vmap with explicit in_dims", ensemble('''
    def member_output(member_params, member_buffers, inputs):
        return functional_call(model, {**member_params, **member_buffers}, inputs)
    return vmap(member_output, in_dims=(0, 0, None))(params, buffers, x)
''')),

    # --- Part D ----------------------------------------------------------------------------------------
    Wrong(PLAIN, "removes the parametrizations from a deepcopy, whose class the model shares", plain('''
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name)
    return copied.state_dict()
'''), fails={MODEL: ["can no longer compute `weight`", "its class lost the `weight` property",
                     "copy.deepcopy(model) shares each parametrized layer's class"]}),
    Wrong(PLAIN, "removes the parametrizations from the model itself", plain('''
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name)
    return model.state_dict()
'''), fails={MODEL: ["removed the parametrization of `0.weight` from the model itself"]}),
    Wrong(PLAIN, "adds the plain keys but keeps the parametrizations' own", edit=(
        'plain = {key: value for key, value in model.state_dict().items() if "parametrizations" not in key.split(".")}',
        "plain = dict(model.state_dict())"),
        fails={LOADS: ["your dict still holds the parametrized model's own keys",
                       "`0.parametrizations.weight.original0`"]}),
    Wrong(PLAIN, "stores the computed weights without detaching them", edit=(
        "getattr(module, tensor).detach()", "getattr(module, tensor)"),
        fails={MODEL: ["still attached to autograd", "`0.weight`: grad_fn=WeightNormInterfaceBackward0"]}),
    Wrong(PLAIN, "renames the raw original tensors to the plain names", plain('''
    plain = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            owner, _, rest = key.partition(".parametrizations.")
            tensor, _, kind = rest.partition(".")
            if kind in ("original", "original1"):
                plain[owner + "." + tensor] = value
        else:
            plain[key] = value
    return plain
'''), fails={LOADS: ["`0.weight` holds the raw `0.parametrizations.weight.original1`, not the `weight` the model "
                     "computes"]}),
    Wrong(PLAIN, "handles weights only", edit=(
        '''            for tensor in module.parametrizations:
                plain[f"{name}.{tensor}" if name else tensor] = getattr(module, tensor).detach()''',
        '''            plain[f"{name}.weight" if name else "weight"] = module.weight.detach()'''),
        fails={LOADS: ["cannot load your dict with strict=True", "`0.bias`"]}),
    Wrong(PLAIN, "always writes name + '.' + tensor, so a parametrized model itself gets '.weight'", edit=(
        'plain[f"{name}.{tensor}" if name else tensor]', 'plain[f"{name}.{tensor}"]'),
        fails={LOADS: ["some keys of your dict have an empty part", "`.weight`", "no dot in front"]}),
    Right(PLAIN, "walks the keys, computes each weight under torch.no_grad()", plain('''
    plain = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if "parametrizations" not in parts:
            plain[key] = value
            continue
        at = parts.index("parametrizations")
        owner, tensor = ".".join(parts[:at]), parts[at + 1]
        with torch.no_grad():
            plain[".".join(parts[:at] + [tensor])] = getattr(model.get_submodule(owner), tensor)
    return plain
''')),
    Right(PLAIN, "parametrize.cached(), a filter on the keys, then each module's tensors", plain('''
    with parametrize.cached():
        plain = {key: value for key, value in model.state_dict().items() if ".parametrizations." not in "." + key}
        for name, module in model.named_modules():
            if parametrize.is_parametrized(module):
                prefix = name + "." if name else ""
                for tensor in module.parametrizations.keys():
                    plain[prefix + tensor] = getattr(module, tensor).detach().clone()
    return plain
''')),

    # --- Part E ----------------------------------------------------------------------------------------
    Wrong(LORA, "setattr(model, 'body.0', ...) adds a child named 'body.0' instead of replacing body[0]", lora('''
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            setattr(model, name, LoRALinear(module, rank))
    return model
'''), fails={COMPUTES: ["registers a layer under a name with a dot", "`body.0` is a child of its own",
                        "model.set_submodule('body.0', layer)"]}),
    Wrong(LORA, "looks at the direct children only", lora('''
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            setattr(model, name, LoRALinear(child, rank))
    return model
'''), fails={COMPUTES: [NOT_HELD, "`body.0` is nn.Linear in yours, LoRALinear in the exercise's model"]}),
    Wrong(LORA, "rebinds the loop variable, which changes nothing in the model", lora('''
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module = LoRALinear(module, rank)
    return model
'''), fails={COMPUTES: [NOT_HELD]}),
    Wrong(LORA, "type(module) is nn.Linear misses subclasses of nn.Linear",
          edit=("if isinstance(module, nn.Linear):", "if type(module) is nn.Linear:"),
          fails={COMPUTES: [NOT_HELD, "`branches.b` is Wide in yours, LoRALinear in the exercise's model"]}),
    Wrong(LORA, "forgets to return the model", edit=("    return model\n", ""),
          fails={COMPUTES: ["add_lora returned NoneType, not the model"]}),
    Wrong(LORA, "wraps new linear layers, so the trained weights are lost",
          edit=("LoRALinear(module, rank)", "LoRALinear(nn.Linear(module.in_features, module.out_features), rank)"),
          fails={UNCHANGED: ["your train-mode `output` differs from the exercise's"]}),
    Wrong(LORA, "recurses into the new LoRALinear and wraps its base again, forever", lora('''
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            setattr(model, name, LoRALinear(child, rank))
        add_lora(getattr(model, name), rank)
    return model
'''), fails={COMPUTES: ["building the model raised RecursionError", "(in `add_lora`, line 6)"]}),
    Wrong(LORA, "writes the dotted name straight into model._modules", lora('''
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            model._modules[name] = LoRALinear(module, rank)
    return model
'''), fails={COMPUTES: ["registers a layer under a name with a dot"]}),
    Right(LORA, "recursion over named_children, setattr on the parent", lora('''
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            setattr(model, name, LoRALinear(child, rank))
        else:
            add_lora(child, rank)
    return model
''')),
    Right(LORA, "the parent from get_submodule, register_module on it", lora('''
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, module in targets:
        parent, _, child = name.rpartition(".")
        model.get_submodule(parent).register_module(child, LoRALinear(module, rank))
    return model
''')),
    Right(LORA, "set_submodule while walking named_modules lazily", lora('''
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            model.set_submodule(name, LoRALinear(module, rank))
    return model
''')),
]
