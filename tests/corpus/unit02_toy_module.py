"""Unit 02, a toy module: realistic answers to the ToyModule stages and to the two broken models of Part G."""

from answer_lab import Right, Wrong

TOY = "toy_module"
LIST = "list_answer"
SCALER = "scaler_answer"
S1, S2, S3 = "test_stage1_registration", "test_stage2_names", "test_stage3_state_dict"
S4, S5, S6 = "test_stage4_modes", "test_stage5_apply_to", "test_stage6_zero_grad"
FIXED = "test_broken_models_fixed"

NAMED_PARAMETERS = '''        seen = set()
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{prefix}.{name}" if prefix else name), p
'''
NAMED_BUFFERS = '''        seen = set()
        for prefix, module in self.named_modules():
            for name, b in module._buffers.items():
                if id(b) not in seen:
                    seen.add(id(b))
                    yield (f"{prefix}.{name}" if prefix else name), b
'''
LOAD_COPIES = '''        with torch.no_grad():
            for key, value in state_dict.items():
                if key not in own:
                    continue
'''
NAMED_MODULES = '''        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name)
'''
INIT = '''        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)
'''
TO = '''        for module in self.modules():
            for p in module._parameters.values():
                if p.is_floating_point():
                    p.data = p.data.to(dtype)
            for name, b in module._buffers.items():
                if b.is_floating_point():
                    module._buffers[name] = b.to(dtype)
        return self
'''
LIST_REGISTERS = '''        for i, module in enumerate(modules):
            setattr(self, str(i), module)
'''
LIST_BUILDS = "self.layers = ToyModuleList([ToyLinear(a, b) for a, b in zip(sizes, sizes[1:])])"
LIST_FORWARD = '''        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)'''
SCALER_INIT = '''        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
'''

ANSWERS = [
    # --- the ToyModule, stage by stage -------------------------------------------------------------------
    Wrong(TOY, "named_parameters de-duplicates modules only, not tied parameters",
          edit=(NAMED_PARAMETERS, '''        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                yield (f"{prefix}.{name}" if prefix else name), p
'''), fails={S2: ["named_parameters() yields one object twice", "'embed.fc.weight'", "'head.fc.weight'",
                  "remember the ids"]}),
    Wrong(TOY, "named_buffers without de-duplication",
          edit=(NAMED_BUFFERS, '''        for prefix, module in self.named_modules():
            for name, b in module._buffers.items():
                yield (f"{prefix}.{name}" if prefix else name), b
'''), fails={S2: ["named_buffers() yields one object twice", "'head.calls'"]}),
    Wrong(TOY, "__getattr__ returns None for a name it does not know",
          edit=('''        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")''',
                "        return None"),
          fails={S1: ["returned None", "raise AttributeError"]}),
    Wrong(TOY, "__setattr__ forgets that a buffer's name keeps its slot",
          edit=('''        elif name in registries.get("_buffers", {}):
            registries["_buffers"][name] = value
''', ""), fails={S1: ["still holds the old buffer", "a registered name keeps its slot"]}),
    Wrong(TOY, "__setattr__ files a plain tensor as a buffer",
          edit=('''        elif name in registries.get("_buffers", {}):''',
                '''        elif isinstance(value, torch.Tensor) or name in registries.get("_buffers", {}):'''),
          fails={S1: ["`cache`", "in the instance __dict__"]}),
    Wrong(TOY, "named_modules goes breadth-first",
          edit=(NAMED_MODULES, '''        found, queue, seen = [], [(prefix, self)], set()
        while queue:
            name, module = queue.pop(0)
            if id(module) in seen:
                continue
            seen.add(id(module))
            found.append((name, module))
            queue += [(f"{name}.{child_name}" if name else child_name, child)
                      for child_name, child in module._modules.items()]
        yield from found
'''), fails={S2: ["named_modules() order differs", "depth-first"]}),
    Wrong(TOY, "state_dict is named_parameters() then named_buffers()",
          edit=('''        saved = {}
        for name, tensor in list(self._parameters.items()) + list(self._buffers.items()):
            saved[prefix + name] = tensor.detach()
        for name, child in self._modules.items():
            saved.update(child.state_dict(prefix + name + "."))
        return saved
''', '''        saved = {prefix + name: p.detach() for name, p in self.named_parameters()}
        saved.update({prefix + name: b.detach() for name, b in self.named_buffers()})
        return saved
'''), fails={S3: ["state_dict()"]}),
    Wrong(TOY, "state_dict keeps the autograd graph (no detach)",
          edit=("saved[prefix + name] = tensor.detach()", "saved[prefix + name] = tensor"),
          fails={S3: ["requires grad", "tensor.detach()"]}),
    Wrong(TOY, "load_state_dict replaces the tensors instead of copying into them",
          edit=("                    own[key].copy_(value)",
                "                    owner, _, leaf = key.rpartition('.')\n"
                "                    module = dict(self.named_modules())[owner]\n"
                "                    registry = '_parameters' if leaf in module._parameters else '_buffers'\n"
                "                    getattr(module, registry)[leaf] = (nn.Parameter(value.clone())\n"
                "                                                       if registry == '_parameters' else value.clone())"),
          fails={S3: ["replaced the tensor", "copy_"]}),
    Wrong(TOY, "load_state_dict reads state_dict[key] for every key of the model",
          edit=(LOAD_COPIES, '''        with torch.no_grad():
            for key in own:
                value = state_dict[key]
'''), fails={S3: ["KeyError", "missing key"]}),
    Wrong(TOY, "load_state_dict ignores strict",
          edit=("        if strict and missing:", "        if False and missing:",
                "        if strict and unexpected:", "        if False and unexpected:"),
          fails={S3: ["strict=True) accepted", "strict=False only reports"]}),
    Wrong(TOY, "train sets only the direct children",
          edit=('''        for child in self.children():
            child.train(mode)
''', '''        for child in self.children():
            child.training = mode
'''), fails={S4: ["training=True in yours, False in torch", "recursion"]}),
    Wrong(TOY, "apply calls fn on the parent first",
          edit=('''        for child in self.children():
            child.apply(fn)
        fn(self)
''', '''        fn(self)
        for child in self.children():
            child.apply(fn)
'''), fails={S5: ["apply(fn) visits the modules in another order", "the root comes last"]}),
    Wrong(TOY, "to() makes new Parameters",
          edit=("                    p.data = p.data.to(dtype)",
                "                    module._parameters[next(k for k, v in module._parameters.items() if v is p)] = "
                "nn.Parameter(p.to(dtype))"),
          fails={S5: ["replaced the Parameter", "p.data = p.data.to(dtype)"]}),
    Wrong(TOY, "to() casts integer buffers too",
          edit=('''            for name, b in module._buffers.items():
                if b.is_floating_point():
                    module._buffers[name] = b.to(dtype)''', '''            for name, b in module._buffers.items():
                module._buffers[name] = b.to(dtype)'''),
          fails={S5: ["integer buffers such as counters keep their dtype"]}),
    Wrong(TOY, "zero_grad fills zeros instead of None",
          edit=('''            if set_to_none:
                p.grad = None
            else:''', '''            if False:
                p.grad = None
            else:'''), fails={S6: ["a tensor of zeros in yours, None in torch", "set_to_none=True"]}),
    Right(TOY, "load_state_dict copies the shared keys in set order (mine.keys() & state_dict.keys())",
          edit=(LOAD_COPIES, '''        with torch.no_grad():
            for key in own.keys() & state_dict.keys():
                value = state_dict[key]
                if False:
                    continue
''')),
    Right(TOY, "load_state_dict copies the keys in reverse order (tied keys: the first one wins)",
          edit=(LOAD_COPIES, '''        with torch.no_grad():
            for key, value in reversed(list(state_dict.items())):
                if key not in own:
                    continue
''')),
    Right(TOY, "__init__ through self.__dict__, named_modules with an explicit stack, to() through apply()",
          edit=(INIT, '''        self.__dict__.update(_parameters={}, _buffers={}, _modules={}, training=True)
''', NAMED_MODULES, '''        seen = set() if memo is None else memo
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{child_name}" if name else child_name, child)
                        for child_name, child in module._modules.items()]
            stack.extend(reversed(children))
''', TO, '''        def cast(module):
            for p in module._parameters.values():
                if p.is_floating_point():
                    p.data = p.data.to(dtype)
            for name, b in list(module._buffers.items()):
                if b.is_floating_point():
                    module._buffers[name] = b.to(dtype)

        return self.apply(cast)
''')),
    Right(TOY, "named_parameters and named_buffers through one helper; zero_grad with named_parameters",
          edit=(NAMED_PARAMETERS, '''        yield from self._named_tensors("_parameters")

    def _named_tensors(self, registry):
        seen = set()
        for prefix, module in self.named_modules():
            for name, t in getattr(module, registry).items():
                if id(t) in seen:
                    continue
                seen.add(id(t))
                yield (prefix + "." + name).lstrip("."), t
''', NAMED_BUFFERS, '''        yield from self._named_tensors("_buffers")
''', '''        for p in self.parameters():
            if p.grad is None:
                continue
''', '''        for _, p in self.named_parameters():
            if p.grad is None:
                continue
''')),

    # --- Part G: a list of layers --------------------------------------------------------------------------
    Wrong(LIST, "ToyModuleList keeps the modules in a plain list attribute",
          edit=(LIST_REGISTERS, "        self.items = list(modules)\n",
                "        return len(self._modules)", "        return len(self.items)",
                "        return iter(self._modules.values())", "        return iter(self.items)",
                "        return list(self._modules.values())[index]", "        return self.items[index]"),
          fails={FIXED: ["`layers` keeps 2 modules in a plain list at `self.items`", "setattr(self, str(i), module)"]}),
    Wrong(LIST, "children named layer0, layer1, ... instead of 0, 1, ...",
          edit=("setattr(self, str(i), module)", "setattr(self, f'layer{i}', module)"),
          fails={FIXED: ["registers its children as ['layer0', 'layer1']; torch's are named ['0', '1']", "str(i)"]}),
    Wrong(LIST, "children registered under int keys straight into _modules",
          edit=("            setattr(self, str(i), module)", "            self._modules[i] = module"),
          fails={FIXED: ["registers its children as [0, 1]; torch's are named ['0', '1']"]}),
    Wrong(LIST, "FixedToyListModel still keeps a plain list",
          edit=(LIST_BUILDS, "self.layers = [ToyLinear(a, b) for a, b in zip(sizes, sizes[1:])]"),
          fails={FIXED: ["plain list at `self.layers`", "setattr(self, str(i), layer)"]}),
    Wrong(LIST, "the layers registered in reverse order",
          edit=("for i, module in enumerate(modules):", "for i, module in enumerate(reversed(list(modules))):"),
          fails={FIXED: ["in yours", "in torch"]}),
    Wrong(LIST, "forward applies the ReLU after every layer",
          edit=(LIST_FORWARD, '''        for layer in self.layers:
            x = torch.relu(layer(x))
        return x'''), fails={FIXED: ["your model's output differs from torch's", "largest gap"]}),
    Wrong(LIST, "forward skips the ReLUs",
          edit=(LIST_FORWARD, '''        for layer in self.layers:
            x = layer(x)
        return x'''), fails={FIXED: ["your model's output differs from torch's"]}),
    Right(LIST, "ToyModuleList fills _modules directly, FixedToyListModel passes a generator",
          edit=(LIST_REGISTERS, "        self._modules.update((str(i), m) for i, m in enumerate(modules))\n",
                LIST_BUILDS, "self.layers = ToyModuleList(ToyLinear(a, b) for a, b in zip(sizes, sizes[1:]))")),
    Right(LIST, "ToyModuleList with __setattr__ and an index loop",
          edit=(LIST_REGISTERS, "        modules = list(modules)\n        for i in range(len(modules)):\n"
                                "            self.__setattr__(f'{i}', modules[i])\n")),

    # --- Part G: a forgotten super().__init__() ---------------------------------------------------------
    Wrong(SCALER, "super().__init__() after the assignments",
          edit=(SCALER_INIT, '''        self.weight = nn.Parameter(torch.ones(n))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        super().__init__()
'''), fails={FIXED: ["before `super().__init__()` has run"]}),
    Wrong(SCALER, "calls kept as a plain tensor",
          edit=('self.register_buffer("calls", torch.zeros((), dtype=torch.long))',
                "self.calls = torch.zeros((), dtype=torch.long)"),
          fails={FIXED: ["`calls` of the root is in _buffers", "self.register_buffer(name, tensor)"]}),
    Wrong(SCALER, "weight kept as a plain tensor", edit=("self.weight = nn.Parameter(torch.ones(n))",
                                                         "self.weight = torch.ones(n, requires_grad=True)"),
          fails={FIXED: ["`weight` of the root is in _parameters", "wrap it in nn.Parameter(...)"]}),
    Wrong(SCALER, "one weight shared by every feature", edit=("nn.Parameter(torch.ones(n))", "nn.Parameter(torch.ones(1))"),
          fails={FIXED: ["shape [1] in yours", "shape [3] in torch"]}),
    Wrong(SCALER, "a float counter", edit=("torch.zeros((), dtype=torch.long)", "torch.zeros(())"),
          fails={FIXED: ["a float32 tensor of shape [] in yours, an int64 tensor"]}),
    Right(SCALER, "ToyModule.__init__(self) and a counter from torch.tensor(0)",
          edit=("super().__init__()", "ToyModule.__init__(self)",
                'torch.zeros((), dtype=torch.long)', "torch.tensor(0)")),
    Right(SCALER, "super(FixedToyScaler, self) and the buffer registered first",
          edit=(SCALER_INIT, '''        super(FixedToyScaler, self).__init__()
        self.register_buffer("calls", torch.zeros([], dtype=torch.int64))
        self.weight = nn.Parameter(torch.full((n,), 1.0))
''')),
]
