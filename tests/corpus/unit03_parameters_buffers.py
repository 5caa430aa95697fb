"""Unit 03: realistic answers to each exercise, graded by tests/answer_lab.py against the visible and hidden tests."""

from answer_lab import Right, Wrong

STUB = '        raise NotImplementedError("replace this line with your code")\n'

# --- Part A: MyBatchNorm1d ---------------------------------------------------------------------------

BN_HEAD = '''class MyBatchNorm1d(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
'''

BN = [
    Wrong("bn_answer", "the stub, unanswered", BN_HEAD + STUB + "\n    def forward(self, x):\n" + STUB,
          fails={"test_bn_registers": ["building the model raised NotImplementedError", "replace that line"],
                 "test_bn_matches_torch": ["NotImplementedError", "replace that line"]}),
    Wrong("bn_answer", "normalises with the unbiased variance",
          edit=("var = x.var(dim=0, correction=0)", "var = x.var(dim=0)"),
          fails={"test_bn_matches_torch": ["the output differs from torch",
                                           "normalise with the unbiased variance (divided by N - 1)"]}),
    Wrong("bn_answer", "running_var tracks the biased variance",
          edit=("self.running_var.lerp_(x.var(dim=0, correction=1), f)", "self.running_var.lerp_(var, f)"),
          fails={"test_bn_matches_torch": ["`running_var` differs from torch",
                                           "running_var must hold the unbiased variance"]}),
    Wrong("bn_answer", "momentum=None taken as 0.1",
          edit=("f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum",
                "f = self.momentum if self.momentum is not None else 0.1"),
          fails={"test_bn_cumulative": ["`running_mean` differs from torch", "momentum=None is treated like momentum=0.1"]}),
    Wrong("bn_answer", "momentum weighs the old value",
          edit=("self.running_mean.lerp_(mean, f)", "self.running_mean.lerp_(mean, 1 - f)",
                "self.running_var.lerp_(x.var(dim=0, correction=1), f)",
                "self.running_var.lerp_(x.var(dim=0, correction=1), 1 - f)"),
          fails={"test_bn_matches_torch": ["`running_mean` differs from torch",
                                           "momentum weighs the new batch, not the old value"]}),
    Wrong("bn_answer", "running statistics as frozen parameters",
          edit=('self.register_buffer("running_mean", torch.zeros(num_features))',
                "self.running_mean = nn.Parameter(torch.zeros(num_features), requires_grad=False)",
                'self.register_buffer("running_var", torch.ones(num_features))',
                "self.running_var = nn.Parameter(torch.ones(num_features), requires_grad=False)"),
          fails={"test_bn_registers": ["`running_mean` is an nn.Parameter in yours, a buffer in the exercise",
                                       "register_buffer"],
                 "test_bn_matches_torch": ["`running_mean` is an nn.Parameter in yours, a buffer in torch"]}),
    Wrong("bn_answer", "the counter as a float",
          edit=('self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))',
                'self.register_buffer("num_batches_tracked", torch.tensor(0.0))'),
          fails={"test_bn_matches_torch": ["`num_batches_tracked` is torch.float32 in yours, torch.int64 in torch",
                                           "torch.tensor(0, dtype=torch.long)"]}),
    Wrong("bn_answer", "eps outside the square root",
          edit=("torch.sqrt(var + self.eps)", "(torch.sqrt(var) + self.eps)"),
          fails={"test_bn_matches_torch": ["eps goes inside the square root"]}),
    Wrong("bn_answer", "eps left out",
          edit=("torch.sqrt(var + self.eps)", "torch.sqrt(var)"),
          fails={"test_bn_matches_torch": ["the gradient of the input differs", "eps is missing"]}),
    Wrong("bn_answer", "batch statistics detached",
          edit=("mean = x.mean(dim=0)\n", "mean = x.mean(dim=0).detach()\n",
                "var = x.var(dim=0, correction=0)\n", "var = x.var(dim=0, correction=0).detach()\n"),
          fails={"test_bn_matches_torch": ["the gradient of the input differs",
                                           "the batch mean and variance you normalise with are cut from the autograd graph"]}),
    Wrong("bn_answer", "running statistics updated with autograd on",
          edit=("with torch.no_grad():", "if True:"),
          fails={"test_bn_matches_torch": ["a buffer holds an autograd graph", "buffer `running_mean` requires grad",
                                           "torch.no_grad()"]}),
    Wrong("bn_answer", "eval mode still uses (and updates) the batch statistics",
          edit=("if not self.training:", "if False:"),
          fails={"test_bn_matches_torch": ["buffers changed during an eval-mode forward", "self.training"]}),
    Wrong("bn_answer", "F.batch_norm with the factor computed by hand", BN_HEAD + '''        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x):
        factor = 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                        self.training, factor, self.eps)
''',
          fails={"test_bn_matches_torch": ["your forward calls torch's own batch_norm",
                                           "compute it from tensor operations"]}),
    Wrong("bn_answer", "a subclass of nn.BatchNorm1d", "class MyBatchNorm1d(nn.BatchNorm1d):\n    pass\n",
          fails={"test_bn_matches_torch": ["your layer subclasses nn.BatchNorm1d, torch's own layer",
                                           "write the layer on nn.Module"]}),
    Right("bn_answer", "torch.var_mean, buffers registered in a loop, mul_/add_ updates", BN_HEAD + '''        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        for name, value in (("running_mean", torch.zeros(num_features)), ("running_var", torch.ones(num_features)),
                            ("num_batches_tracked", torch.tensor(0))):
            self.register_buffer(name, value)

    def forward(self, x):
        if self.training:
            var, mean = torch.var_mean(x, dim=0, correction=0)
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                n = x.shape[0]
                self.running_mean.mul_(1 - f).add_(mean, alpha=f)
                self.running_var.mul_(1 - f).add_(var * n / (n - 1), alpha=f)
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean) / (var + self.eps).sqrt()
        return x_hat * self.weight + self.bias
'''),
    Right("bn_answer", "nn.Buffer, explicit formulas, buffers reassigned", BN_HEAD + '''        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.running_mean = nn.Buffer(torch.zeros(num_features))
        self.running_var = nn.Buffer(torch.ones(num_features))
        self.num_batches_tracked = nn.Buffer(torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            n = x.shape[0]
            mean = x.sum(0) / n
            var = ((x - mean) ** 2).sum(0) / n
            with torch.no_grad():
                self.num_batches_tracked = self.num_batches_tracked + 1
                f = self.momentum if self.momentum is not None else 1 / int(self.num_batches_tracked)
                self.running_mean = (1 - f) * self.running_mean + f * mean
                self.running_var = (1 - f) * self.running_var + f * var * n / (n - 1)
        else:
            mean, var = self.running_mean, self.running_var
        return self.weight * (x - mean) * torch.rsqrt(var + self.eps) + self.bias
'''),
]

# --- Part B: FixedMaskedLinear --------------------------------------------------------------------------

MASK_HEAD = '''class FixedMaskedLinear(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features, features) / features ** 0.5)
        self.bias = nn.Parameter(torch.zeros(features))
'''
MASK_FORWARD = '''
    def forward(self, x):
        return nn.functional.linear(x, self.weight * self.mask, self.bias)
'''
REGISTERED = 'self.register_buffer("mask", torch.tril(torch.ones(features, features)), persistent=False)'

MASK = [
    Wrong("mask_answer", "the stub, unanswered", MASK_HEAD + STUB + MASK_FORWARD,
          fails={"test_masked_linear": ["NotImplementedError", "replace that line"]}),
    Wrong("mask_answer", "a persistent buffer", edit=(", persistent=False)", ")"),
          fails={"test_masked_linear": ["`mask` is a buffer in yours, a non-persistent buffer in the exercise",
                                        "register it with persistent=False"]}),
    Wrong("mask_answer", "a frozen nn.Parameter",
          edit=(REGISTERED, "self.mask = nn.Parameter(torch.tril(torch.ones(features, features)), requires_grad=False)"),
          fails={"test_masked_linear": ["`mask` is an nn.Parameter in yours, a non-persistent buffer in the exercise",
                                        "persistent=False"]}),
    Wrong("mask_answer", "a plain tensor moved to the weight's device once",
          edit=(REGISTERED, "self.mask = torch.tril(torch.ones(features, features)).to(self.weight.device)"),
          fails={"test_masked_linear": ["yours keeps a plain tensor at `self.mask`", "register_buffer"]}),
    Wrong("mask_answer", "upper-triangular mask",
          edit=("torch.tril(", "torch.triu("),
          fails={"test_masked_linear": ["your train-mode `output` differs from the exercise's", "largest gap"]}),
    Wrong("mask_answer", "the diagonal masked out",
          edit=("torch.tril(torch.ones(features, features))", "torch.tril(torch.ones(features, features), diagonal=-1)"),
          fails={"test_masked_linear": ["`output` differs from the exercise's", "largest gap"]}),
    Wrong("mask_answer", "the buffer registered, but forward rebuilds the mask on the CPU",
          MASK_HEAD + "        " + REGISTERED + '''

    def forward(self, x):
        mask = torch.tril(torch.ones(self.weight.shape))
        return nn.functional.linear(x, self.weight * mask, self.bias)
''',
          fails={"test_masked_linear": ["device transfer", "after model.to('meta'), calling it raised",
                                        "a tensor did not follow .to(device)"]}),
    Wrong("mask_answer", "the mask under another name",
          MASK_HEAD + '''        self.register_buffer("_mask", torch.tril(torch.ones(features, features)), persistent=False)

    def forward(self, x):
        return nn.functional.linear(x, self.weight * self._mask, self.bias)
''',
          fails={"test_masked_linear": ["the exercise has a non-persistent buffer `mask`",
                                        "yours has a non-persistent buffer `_mask`, which the exercise does not"]}),
    Right("mask_answer", "a bool mask",
          edit=("torch.tril(torch.ones(features, features))", "torch.ones(features, features, dtype=torch.bool).tril()")),
    Right("mask_answer", "nn.Buffer(..., persistent=False)",
          edit=(REGISTERED, "self.mask = nn.Buffer(torch.tril(torch.ones(features, features)), persistent=False)")),
    Right("mask_answer", "a bool mask used with torch.where",
          MASK_HEAD + '''        self.register_buffer("mask", torch.ones(features, features, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x):
        return nn.functional.linear(x, torch.where(self.mask, self.weight, 0.0), self.bias)
'''),
]

# --- Part C: FixedStandardize ---------------------------------------------------------------------------

STATS_HEAD = '''class FixedStandardize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
'''
STATS_FORWARD = '''
    def forward(self, x):
        return (x - self.mean) / self.std
'''
MEAN = 'self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))'
STD = 'self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))'

STATS = [
    Wrong("stats_answer", "the stub, unanswered", STATS_HEAD + STUB + STATS_FORWARD,
          fails={"test_standardize": ["building the model raised NotImplementedError", "replace that line"]}),
    Wrong("stats_answer", "frozen parameters instead of buffers",
          edit=(MEAN, "self.mean = nn.Parameter(torch.as_tensor(mean, dtype=torch.float32), requires_grad=False)",
                STD, "self.std = nn.Parameter(torch.as_tensor(std, dtype=torch.float32), requires_grad=False)"),
          fails={"test_standardize": ["`norm.mean` is an nn.Parameter in yours, a buffer in the exercise",
                                      "register_buffer"]}),
    Wrong("stats_answer", "non-persistent buffers",
          edit=('dtype=torch.float32))\n', 'dtype=torch.float32), persistent=False)\n',
                'dtype=torch.float32))\n', 'dtype=torch.float32), persistent=False)\n'),
          fails={"test_standardize": ["`norm.mean` is a non-persistent buffer in yours, a buffer in the exercise",
                                      "persistent=False leaves it out of state_dict()"]}),
    Wrong("stats_answer", "plain tensors",
          edit=(MEAN, "self.mean = torch.as_tensor(mean, dtype=torch.float32)",
                STD, "self.std = torch.as_tensor(std, dtype=torch.float32)"),
          fails={"test_standardize": ["a plain tensor (shape [4]) at `self.norm.mean` is not registered"]}),
    Wrong("stats_answer", "mean and std swapped",
          edit=(MEAN, MEAN.replace("(mean,", "(std,"), STD, STD.replace("(std,", "(mean,")),
          fails={"test_standardize": ["your train-mode `output` differs from the exercise's", "largest gap"]}),
    Wrong("stats_answer", "only the mean made a buffer",
          edit=(STD, "self.std = nn.Parameter(torch.as_tensor(std, dtype=torch.float32))"),
          fails={"test_standardize": ["the model has 19 trainable parameters; the exercise asks for 15",
                                      "`norm.std` accounts for exactly the 4 extra"]}),
    Wrong("stats_answer", "buffers under torch-like names",
          STATS_HEAD + '''        self.register_buffer("running_mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("running_std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x):
        return (x - self.running_mean) / self.running_std
''',
          fails={"test_standardize": ["the exercise has a buffer `norm.mean`",
                                      "yours has a buffer `norm.running_mean`, which the exercise does not"]}),
    Right("stats_answer", "nn.Buffer", STATS_HEAD + '''        self.mean = nn.Buffer(torch.as_tensor(mean, dtype=torch.float32))
        self.std = nn.Buffer(torch.as_tensor(std, dtype=torch.float32))
''' + STATS_FORWARD),
    Right("stats_answer", "a loop over both statistics, copies detached", STATS_HEAD + '''        for name, value in (("mean", mean), ("std", std)):
            self.register_buffer(name, torch.as_tensor(value).detach().clone().float())
''' + STATS_FORWARD),
]

# --- Part D: WeightEMA ------------------------------------------------------------------------------------

EMA_HEAD = '''class WeightEMA(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
'''
EMA_FORWARD = '''
    def forward(self, *inputs):
        return self.model(*inputs)
'''
EMA_INIT = "self.register_buffer(shadow_name(name), p.detach().clone())"
EMA_UPDATE = "self.get_buffer(shadow_name(name)).lerp_(p, 1 - decay)"

EMA = [
    Wrong("ema_answer", "the stub, unanswered",
          EMA_HEAD + STUB + "\n    def update(self, decay):\n" + STUB + EMA_FORWARD,
          fails={"test_ema_registers": ["building the model raised NotImplementedError", "replace that line"],
                 "test_ema_matches_torch": ["running your code raised NotImplementedError", "replace that line"]}),
    Wrong("ema_answer", "update left as the stub",
          edit=("""        with torch.no_grad():
            for name, p in self.model.named_parameters():
                self.get_buffer(shadow_name(name)).lerp_(p, 1 - decay)
""", STUB),
          fails={"test_ema_matches_torch": ["running your code raised NotImplementedError", "(in `update`",
                                            "replace that line"]}),
    Wrong("ema_answer", "buffers share the parameters' memory (detach without clone)",
          edit=(EMA_INIT, "self.register_buffer(shadow_name(name), p.detach())"),
          fails={"test_ema_registers": ["a buffer shares its memory with a parameter",
                                        "buffer `ema_0_weight` is the memory of parameter `model.0.weight`",
                                        ".detach().clone()"],
                 "test_ema_matches_torch": ["`0.weight` differs from torch's AveragedModel"]}),
    Wrong("ema_answer", "a clone that keeps the autograd history",
          edit=(EMA_INIT, "self.register_buffer(shadow_name(name), p.clone())"),
          fails={"test_ema_registers": ["a buffer holds an autograd graph", "buffer `ema_0_weight` requires grad",
                                        ".detach()"]}),
    Wrong("ema_answer", "decay and 1 - decay swapped",
          edit=(EMA_UPDATE, "self.get_buffer(shadow_name(name)).lerp_(p, decay)"),
          fails={"test_ema_matches_torch": ["`0.weight` differs from torch's AveragedModel", "largest gap"]}),
    Wrong("ema_answer", "the average updated with autograd on",
          edit=("""        with torch.no_grad():
            for name, p in self.model.named_parameters():
                self.get_buffer(shadow_name(name)).lerp_(p, 1 - decay)
""", """        for name, p in self.model.named_parameters():
            average = self.get_buffer(shadow_name(name))
            average.mul_(decay).add_((1 - decay) * p)
"""),
          fails={"test_ema_matches_torch": ["`0.weight` requires grad", "torch.no_grad()"]}),
    Wrong("ema_answer", "averages as parameters",
          edit=(EMA_INIT, "self.register_parameter(shadow_name(name), nn.Parameter(p.detach().clone()))",
                "self.get_buffer(", "self.get_parameter("),
          fails={"test_ema_registers": ["`ema_0_weight` is an nn.Parameter in yours, a buffer in the exercise",
                                        "register_buffer"]}),
    Wrong("ema_answer", "non-persistent buffers",
          edit=(EMA_INIT, "self.register_buffer(shadow_name(name), p.detach().clone(), persistent=False)"),
          fails={"test_ema_registers": ["`ema_0_weight` is a non-persistent buffer in yours, a buffer in the exercise",
                                        "persistent=False leaves it out of state_dict()"]}),
    Wrong("ema_answer", "update rebinds a local name",
          edit=(EMA_UPDATE, "average = self.get_buffer(shadow_name(name))\n"
                            "                average = decay * average + (1 - decay) * p"),
          fails={"test_ema_matches_torch": ["`0.weight` differs from torch's AveragedModel"]}),
    Wrong("ema_answer", "update walks the wrapper's own names",
          edit=("for name, p in self.model.named_parameters():\n                self.get_buffer",
                "for name, p in self.named_parameters():\n                self.get_buffer"),
          fails={"test_ema_matches_torch": ["running your code raised AttributeError", "(in `update`"]}),
    Wrong("ema_answer", "float32 zeros, then a copy (loses the parameter's dtype)",
          edit=(EMA_INIT, "self.register_buffer(shadow_name(name), torch.zeros(p.shape))\n"
                          "            self.get_buffer(shadow_name(name)).copy_(p.detach())"),
          fails={"test_ema_matches_torch": ["running your code raised RuntimeError: expected dtype float",
                                            "(in `update`"]}),
    Right("ema_answer", "copy_ of the blend, under no_grad", EMA_HEAD + '''        with torch.no_grad():
            for name, p in model.named_parameters():
                self.register_buffer(shadow_name(name), p.clone())

    def update(self, decay):
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                average = getattr(self, shadow_name(name))
                average.copy_(decay * average + (1 - decay) * p)
''' + EMA_FORWARD),
    Right("ema_answer", "new tensors assigned to the buffer names", EMA_HEAD + '''        for name, p in model.named_parameters():
            self.register_buffer(shadow_name(name), torch.empty_like(p).copy_(p.detach()))

    def update(self, decay):
        for name, p in self.model.named_parameters():
            key = shadow_name(name)
            setattr(self, key, torch.lerp(getattr(self, key), p.detach(), 1 - decay))
''' + EMA_FORWARD),
]

# --- Part E: freezing and counting ------------------------------------------------------------------------

FREEZE = "    model.backbone.requires_grad_(False)\n    return model\n"
TRAINABLE = "    return hidden * classes + classes\n"

FREEZING = [
    Wrong("freeze_answer", "sets an attribute named requires_grad on the module",
          edit=(FREEZE, "    model.backbone.requires_grad = False\n    return model\n"),
          fails={"test_freeze_backbone": ["the model has 2,122 trainable parameters; the exercise asks for 330",
                                          "`backbone.requires_grad = False` set a plain attribute on the module",
                                          "`backbone.requires_grad_(False)`"]}),
    Wrong("freeze_answer", "eval() instead of freezing",
          edit=(FREEZE, "    model.backbone.eval()\n    return model\n"),
          fails={"test_freeze_backbone": ["the exercise asks for 330", "`backbone` is in eval mode",
                                          "not what trains"]}),
    Wrong("freeze_answer", "forgets to return the model",
          edit=(FREEZE, "    for p in model.backbone.parameters():\n        p.requires_grad = False\n"),
          fails={"test_freeze_backbone": ["expected an nn.Module, got NoneType", "ends without `return model`"]}),
    Wrong("freeze_answer", "freezes only the backbone's Linear layers",
          edit=(FREEZE, "    for layer in model.backbone:\n        if isinstance(layer, nn.Linear):\n"
                        "            layer.requires_grad_(False)\n    return model\n"),
          fails={"test_freeze_backbone": ["the model has 394 trainable parameters; the exercise asks for 330"]}),
    Wrong("freeze_answer", "freezes the whole model",
          edit=(FREEZE, "    model.requires_grad_(False)\n    return model\n"),
          fails={"test_freeze_backbone": ["too few", "frozen (requires_grad=False)", "`head.weight`"]}),
    Wrong("freeze_answer", "freezes a copy and returns it",
          edit=(FREEZE, "    import copy\n    frozen = copy.deepcopy(model)\n    frozen.backbone.requires_grad_(False)\n"
                        "    return frozen\n"),
          fails={"test_freeze_backbone": ["the model has 72 trainable parameters; the exercise asks for 12",
                                          "parameters left trainable that should be frozen"]}),
    Wrong("freeze_answer", "counts the BatchNorm affine parameters as trainable",
          edit=(TRAINABLE, "    return hidden * classes + classes + 2 * hidden\n"),
          fails={"test_freeze_backbone": ["trainable_after_freezing(20, 32, 10) returned 394",
                                          "has 330 trainable parameters"]}),
    Wrong("freeze_answer", "forgets the head's bias",
          edit=(TRAINABLE, "    return hidden * classes\n"),
          fails={"test_freeze_backbone": ["trainable_after_freezing(20, 32, 10) returned 320"]}),
    Wrong("freeze_answer", "the checkpoint without num_batches_tracked",
          edit=("(2 * hidden + 1)", "2 * hidden"),
          fails={"test_freeze_backbone": ["saved_after_freezing(20, 32, 10) returned", "state_dict elements"]}),
    Wrong("freeze_answer", "the checkpoint holds only what trains",
          edit=("    backbone = (in_features * hidden + hidden) + 2 * hidden + (2 * hidden + 1) + (hidden * hidden + hidden)\n"
                "    return backbone + hidden * classes + classes\n", TRAINABLE),
          fails={"test_freeze_backbone": ["saved_after_freezing(20, 32, 10) returned 330",
                                          "has 2,187 state_dict elements"]}),
    Right("freeze_answer", "a loop over the backbone's parameters; formulas by layer", '''def freeze_backbone(model):
    for p in model.backbone.parameters():
        p.requires_grad = False
    return model


def trainable_after_freezing(in_features, hidden, classes):
    return (hidden + 1) * classes


def saved_after_freezing(in_features, hidden, classes):
    first = (in_features + 1) * hidden
    norm = 4 * hidden + 1  # weight, bias, running_mean, running_var, num_batches_tracked
    second = (hidden + 1) * hidden
    return first + norm + second + trainable_after_freezing(in_features, hidden, classes)
'''),
    Right("freeze_answer", "freeze everything, then thaw the head", '''def freeze_backbone(model):
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    return model


def trainable_after_freezing(in_features, hidden, classes):
    return sum([hidden * classes, classes])


def saved_after_freezing(in_features, hidden, classes):
    linears = [(in_features, hidden), (hidden, hidden), (hidden, classes)]
    return sum(i * o + o for i, o in linears) + 4 * hidden + 1
'''),
]

ANSWERS = BN + MASK + STATS + EMA + FREEZING
