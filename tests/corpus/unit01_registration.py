"""Unit 01, registration: realistic answers to the counting functions, SuperNet, FixedListMLP and find_unregistered."""

from answer_lab import Right, Wrong

COUNTING = "counting_functions"
SUPER = "super_answer"
LIST = "list_answer"
FIND = "find_answer"

LINEAR = "return out_features * in_features + out_features"
BN_PARAMS = "return 2 * c\n"
BN_BUFFERS = "return 2 * c + 1"
MLP = "return sum(linear_params(a, b) for a, b in zip(sizes, sizes[1:]))"
BUILDS = "builds a layer to count"

FIND_REFERENCE_WALK = '''    found = []
    for prefix, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr not in internals:
                found += search(value, f"self.{prefix}.{attr}" if prefix else f"self.{attr}")
    return found
'''

ANSWERS = [
    # --- Part A: counting by hand ----------------------------------------------------------------------
    Wrong(COUNTING, "linear_params forgets the bias", edit=(LINEAR, "return out_features * in_features"),
          fails={"test_linear_params": ["linear_params(20, 64) returned 1280", "named_parameters()"],
                 "test_mlp_params": ["mlp_params((20, 64, 10)) returned"]}),
    Wrong(COUNTING, "linear_params builds nn.Linear and asks torch",
          edit=(LINEAR, "return sum(p.numel() for p in nn.Linear(in_features, out_features).parameters())"),
          fails={"test_linear_params": [BUILDS, "nn.Linear registered `weight`", "formula of the sizes"]}),
    Wrong(COUNTING, "linear_params builds the layer on the meta device, which allocates nothing",
          edit=(LINEAR, "layer = nn.Linear(in_features, out_features, device='meta')\n"
                        "    return sum(p.numel() for p in layer.parameters())"),
          fails={"test_linear_params": [BUILDS]}),
    Wrong(COUNTING, "linear_params counts an allocated weight tensor",
          edit=(LINEAR, "return torch.empty(out_features, in_features).numel() + out_features"),
          fails={"test_linear_params": ["can't allocate memory", "too large for any machine"]}),
    Wrong(COUNTING, "batchnorm_params counts the running statistics as parameters", edit=(BN_PARAMS, "return 4 * c\n"),
          fails={"test_batchnorm_counts": ["batchnorm_params(64) returned 256", "named_parameters()"]}),
    Wrong(COUNTING, "batchnorm_buffer_elements forgets num_batches_tracked", edit=(BN_BUFFERS, "return 2 * c"),
          fails={"test_batchnorm_counts": ["batchnorm_buffer_elements(64) returned 128", "named_buffers()"]}),
    Wrong(COUNTING, "batchnorm_buffer_elements builds the layer",
          edit=(BN_BUFFERS, "return sum(b.numel() for b in nn.BatchNorm1d(c).buffers())"),
          fails={"test_batchnorm_counts": [BUILDS, "nn.BatchNorm1d registered"]}),
    Wrong(COUNTING, "mlp_params counts the weights only",
          edit=(MLP, "return sum(a * b for a, b in zip(sizes, sizes[1:]))"),
          fails={"test_mlp_params": ["mlp_params((20, 64, 10)) returned 1920"]}),
    Wrong(COUNTING, "mlp_params stops one layer early",
          edit=(MLP, "return sum(linear_params(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 2))"),
          fails={"test_mlp_params": ["mlp_params((20, 64, 10)) returned 1344"]}),
    Wrong(COUNTING, "mlp_params builds the stack",
          edit=(MLP, "return sum(p.numel() for a, b in zip(sizes, sizes[1:]) for p in nn.Linear(a, b).parameters())"),
          fails={"test_mlp_params": [BUILDS]}),
    Right(COUNTING, "factored forms", edit=(LINEAR, "return (in_features + 1) * out_features", BN_PARAMS, "return c + c\n",
                                            BN_BUFFERS, "return len(('running_mean', 'running_var')) * c + 1")),
    Right(COUNTING, "mlp_params as an explicit loop over indices",
          edit=(MLP, "total = 0\n    for i in range(len(sizes) - 1):\n"
                     "        total += sizes[i] * sizes[i + 1] + sizes[i + 1]\n    return total")),
    Right(COUNTING, "mlp_params with map over shifted sizes",
          edit=(MLP, "return sum(map(linear_params, sizes[:-1], sizes[1:]))")),

    # --- Part B: SuperNet --------------------------------------------------------------------------------
    Wrong(SUPER, "super().__init__() called after the layers",
          edit=("        super().__init__()\n        self.fc1 = nn.Linear(in_features, hidden)\n"
                "        self.fc2 = nn.Linear(hidden, out_features)\n",
                "        self.fc1 = nn.Linear(in_features, hidden)\n        self.fc2 = nn.Linear(hidden, out_features)\n"
                "        super().__init__()\n"),
          fails={"test_super_net": ["before Module.__init__() call", "super().__init__()"]}),
    Wrong(SUPER, "super().__init__ named but never called", edit=("super().__init__()", "super().__init__"),
          fails={"test_super_net": ["super().__init__()"]}),
    Wrong(SUPER, "second layer sized hidden -> hidden, the output left too wide",
          edit=("self.fc2 = nn.Linear(hidden, out_features)", "self.fc2 = nn.Linear(hidden, hidden)"),
          fails={"test_super_net": ["trainable parameters"]}),
    Wrong(SUPER, "layers without bias", edit=("nn.Linear(in_features, hidden)", "nn.Linear(in_features, hidden, bias=False)"),
          fails={"test_super_net": ["trainable parameters"]}),
    Wrong(SUPER, "a ReLU added on the output", edit=("return self.fc2(torch.relu(self.fc1(x)))",
                                                    "return torch.relu(self.fc2(torch.relu(self.fc1(x))))"),
          fails={"test_super_net": ["differs from the exercise's", "largest gap"]}),
    Wrong(SUPER, "the hidden activation detached", edit=("self.fc2(torch.relu(self.fc1(x)))",
                                                        "self.fc2(torch.relu(self.fc1(x)).detach())"),
          fails={"test_super_net": ["fc1"]}),
    Wrong(SUPER, "fc2 called through .forward()", edit=("return self.fc2(", "return self.fc2.forward("),
          fails={"test_super_net": ["without being called", "fc2"]}),
    Right(SUPER, "nn.Module.__init__(self) and register_module",
          edit=("        super().__init__()\n        self.fc1 = nn.Linear(in_features, hidden)\n"
                "        self.fc2 = nn.Linear(hidden, out_features)\n",
                "        nn.Module.__init__(self)\n        self.register_module('fc1', nn.Linear(in_features, hidden))\n"
                "        self.add_module('fc2', nn.Linear(hidden, out_features))\n")),
    Right(SUPER, "super(SuperNet, self) and a functional ReLU",
          edit=("super().__init__()", "super(SuperNet, self).__init__()",
                "return self.fc2(torch.relu(self.fc1(x)))", "return self.fc2(nn.functional.relu(self.fc1(x)))")),

    # --- Part C: FixedListMLP ------------------------------------------------------------------------------
    Wrong(LIST, "still a plain list", edit=("nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))",
                                            "[nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]"),
          fails={"test_list_mlp_count": ["plain list", "nn.ModuleList"], "test_list_mlp_trains": []}),
    Wrong(LIST, "a tuple of layers", edit=("nn.ModuleList(", "tuple("),
          fails={"test_list_mlp_count": ["plain tuple"], "test_list_mlp_trains": []}),
    Wrong(LIST, "off by one: the last layer never built",
          edit=("nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))",
                "nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 2))"),
          fails={"test_list_mlp_count": ["trainable parameters"]}),
    Wrong(LIST, "pairs of sizes reversed", edit=("zip(sizes, sizes[1:])", "zip(sizes[1:], sizes)"),
          fails={"test_list_mlp_count": ["trainable parameters"]}),
    Wrong(LIST, "ReLU after the last layer too",
          edit=("        for layer in self.layers[:-1]:\n            x = torch.relu(layer(x))\n        return self.layers[-1](x)",
                "        for layer in self.layers:\n            x = torch.relu(layer(x))\n        return x"),
          fails={"test_list_mlp_trains": ["differs from the exercise's"]}),
    Wrong(LIST, "an nn.Sequential called whole, so the ReLUs are gone",
          edit=("nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))",
                "nn.Sequential(*(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])))",
                "        for layer in self.layers[:-1]:\n            x = torch.relu(layer(x))\n        return self.layers[-1](x)",
                "        return self.layers(x)"),
          fails={"test_list_mlp_trains": ["differs from the exercise's"]}),
    Right(LIST, "nn.Sequential, indexed like a list", edit=("nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))",
                                                           "nn.Sequential(*[nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])])")),
    Right(LIST, "an empty nn.ModuleList filled with append",
          edit=("        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))",
                "        self.layers = nn.ModuleList()\n        for i in range(len(sizes) - 1):\n"
                "            self.layers.append(nn.Linear(sizes[i], sizes[i + 1]))")),
    Right(LIST, "a plain list whose layers are each registered with add_module",
          edit=("        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))",
                "        self.layers = [nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]\n"
                "        for i, layer in enumerate(self.layers):\n            self.add_module(f'layer{i}', layer)")),

    # --- Part D: find_unregistered -------------------------------------------------------------------------
    Wrong(FIND, "looks for modules only inside lists and tuples, not tensors",
          edit=("return [p for i, item in enumerate(value) for p",
                "return [p for i, item in enumerate(value) if not isinstance(item, torch.Tensor) for p"),
          fails={"test_find_unregistered_hidden": ["missed 'self.stem.1.history[0]'", "missed 'self.extra[0]'",
                                                   "look further"]}),
    Wrong(FIND, "registered set made of modules only: registered tensors in lists reported",
          edit=("registered = {id(x) for x in [*model.modules(), *model.parameters(), *model.buffers()]}",
                "registered = {id(m) for m in model.modules()}"),
          fails={"test_find_unregistered_hidden": ["reported 'self.stem.1.cache[0]'", "which it should not",
                                                   "report only what registration missed"]}),
    Wrong(FIND, "nothing checked against registration: aliases reported",
          edit=("return [] if id(value) in registered else [path]", "return [path]"),
          fails={"test_find_unregistered_hidden": ["reported 'self.stem.1.aliases[0]'", "compare objects by identity"]}),
    Wrong(FIND, "one level of containers only",
          source='''def find_unregistered(model):
    internals = set(vars(nn.Module()))
    registered = {id(m) for m in model.modules()}
    registered |= {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}

    def hidden(x):
        return isinstance(x, (nn.Module, torch.Tensor)) and id(x) not in registered

    found = []
    for prefix, module in model.named_modules():
        owner = f"self.{prefix}." if prefix else "self."
        for attr, value in vars(module).items():
            if attr in internals:
                continue
            if hidden(value):
                found.append(owner + attr)
            elif isinstance(value, (list, tuple)):
                found += [f"{owner}{attr}[{i}]" for i, x in enumerate(value) if hidden(x)]
            elif isinstance(value, dict):
                found += [f"{owner}{attr}[{k!r}]" for k, x in value.items() if hidden(x)]
    return found
''', fails={"test_find_unregistered_visible": ["missed 'self.stages[0][0]'", "at any depth"]}),
    Wrong(FIND, "the root's attributes only",
          edit=("    for prefix, module in model.named_modules():", "    for prefix, module in [('', model)]:"),
          fails={"test_find_unregistered_hidden": ["missed 'self.stem.1.pair[0]'", "every submodule (named_modules())"]}),
    Wrong(FIND, "dict keys with str instead of repr", edit=('f"{path}[{key!r}]"', 'f"{path}[{key}]"'),
          fails={"test_find_unregistered_visible": ["missed \"self.heads['cls']\"", "reported 'self.heads[cls]'",
                                                    "[repr(key)]"]}),
    Wrong(FIND, "reports the container instead of each item",
          edit=("            return [p for i, item in enumerate(value) for p in search(item, f\"{path}[{i}]\")]",
                "            return [path] if any(search(item, path) for item in value) else []"),
          fails={"test_find_unregistered_visible": ["missed 'self.layers[0]'", "reported 'self.layers'", "one name per item"]}),
    Wrong(FIND, "private attributes skipped along with the internals",
          edit=("            if attr not in internals:", "            if not attr.startswith('_'):"),
          fails={"test_find_unregistered_hidden": ["missed 'self._scratch'", "private names too"]}),
    Wrong(FIND, "looks inside an unregistered module as well",
          edit=("        if isinstance(value, (nn.Module, torch.Tensor)):\n"
                "            return [] if id(value) in registered else [path]\n",
                "        if isinstance(value, nn.Module) and id(value) not in registered:\n"
                "            return [path] + [f\"{path}[{i}]\" for i, m in enumerate(value.children())]\n"
                "        if isinstance(value, (nn.Module, torch.Tensor)):\n"
                "            return [] if id(value) in registered else [path]\n"),
          fails={"test_find_unregistered_hidden": ["reported 'self.spare[0][0]'"]}),
    Wrong(FIND, "built on the grader's own diagnosis (grader.checks.diagnose.find_hidden)",
          source='''from grader.checks.diagnose import find_hidden


def find_unregistered(model):
    registered = {id(x) for x in [*model.modules(), *model.parameters(), *model.buffers()]}
    found = []
    for hidden in find_hidden(model):
        if hidden.container == "attribute":
            found.append(hidden.where)
            continue
        owner, _, attr = hidden.where.removeprefix("self.").rpartition(".")
        value = getattr(model.get_submodule(owner), attr)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        found += [f"{hidden.where}[{k!r}]" for k, x in items if id(x) not in registered]
    return found
''', fails={"test_find_unregistered_visible": ["self.stages[0][0]"],
            "test_find_unregistered_hidden": ["self.groups['enc'][0]"]}),
    Right(FIND, "an explicit stack instead of recursion",
          source='''def find_unregistered(model):
    skip = set(vars(nn.Module()))
    seen = set(map(id, model.modules())) | set(map(id, model.parameters())) | set(map(id, model.buffers()))
    found = []
    for prefix, module in model.named_modules():
        base = "self." + (prefix + "." if prefix else "")
        stack = [(base + name, value) for name, value in vars(module).items() if name not in skip]
        while stack:
            path, value = stack.pop()
            if isinstance(value, (torch.Tensor, nn.Module)):
                if id(value) not in seen:
                    found.append(path)
            elif isinstance(value, dict):
                stack += [(f"{path}[{key!r}]", item) for key, item in value.items()]
            elif isinstance(value, (list, tuple)):
                stack += [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    return found
'''),
    Right(FIND, "a recursive generator, registration by name listings",
          source='''def find_unregistered(model):
    every_module = set(vars(nn.Module()))
    known = {id(m) for _, m in model.named_modules()}
    known |= {id(t) for _, t in model.named_parameters()}
    known |= {id(t) for _, t in model.named_buffers()}

    def walk(value, path):
        if isinstance(value, torch.Tensor) or isinstance(value, nn.Module):
            if id(value) not in known:
                yield path
        elif type(value) in (list, tuple):
            for i, item in enumerate(value):
                yield from walk(item, "%s[%d]" % (path, i))
        elif type(value) is dict:
            for key, item in value.items():
                yield from walk(item, "%s[%r]" % (path, key))

    result = []
    for name, module in model.named_modules():
        owner = "self." + name + "." if name else "self."
        for attr in vars(module):
            if attr in every_module:
                continue
            result.extend(walk(getattr(module, attr), owner + attr))
    return result
'''),
]
