"""Unit 07, the debugging clinic: fixes students write for each of the twelve patients, wrong and right.

Wrong fixes are the ones that make the symptom go away without curing the cause (a `.data` clamp, dropout
deleted, a hard-coded learning rate, a log that keeps the graph), or that half-fix it. Right fixes are the
reference's in other styles (another way to clip, to register, to count, to build the optimizer).
"""

from answer_lab import Right, Wrong

P1 = "test_p1_regressor"
P2 = "test_p2_clipped"
P3 = "test_p3_logged"
P4 = "test_p4_classifier"
P5 = "test_p5_finetune"
P6, P6_OTHER = "test_p6_predict", "test_p6_predict_other_models"
P7 = "test_p7_probed"
P8 = "test_p8_mixer"
P9, P9_EVERY = "test_p9_upgrade", "test_p9_every_checkpoint"
P10, P10_MODES = "test_p10_train_step", "test_p10_train_step_modes"
P11 = "test_p11_counter"
P12 = "test_p12_dropout"

FIRST = "super().__init__()\n        self.fc1 = nn.Linear(in_features, hidden)\n"
CLIP = "h = h.clamp(-self.limit, self.limit)"
REMEMBER = "self.last_mean = h.detach().mean().item()\n"
REMEMBER_LINE = "        " + REMEMBER
RECORD = "self.means[name] = output.detach().mean().item()"
OPTIMIZER = "optimizer = torch.optim.SGD(model.parameters(), lr=lr)"
MASK = "torch.tril(torch.ones(max_len, max_len, dtype=torch.bool))"
STEP_ZERO = "    optimizer.zero_grad()\n"
DROPOUT = "h = F.dropout(h, p=self.p, training=self.training)"

ANSWERS = [
    # ---------------------------------------------------------------- patient 1: super().__init__() last
    Wrong("p1_answer", "super().__init__() moved down one line only",
          edit=(FIRST, "self.fc1 = nn.Linear(in_features, hidden)\n        super().__init__()\n"),
          fails={P1: ["building the model raised AttributeError", "cannot assign module before Module.__init__() call"]}),
    Wrong("p1_answer", "super().__init__() both first and last",
          edit=("self.fc2 = nn.Linear(hidden, 1)\n", "self.fc2 = nn.Linear(hidden, 1)\n        super().__init__()\n"),
          fails={P1: ["the model has 0 trainable parameters; the exercise asks for 769"]}),
    Wrong("p1_answer", "LayerNorm instead of BatchNorm (same parameter count)",
          edit=("nn.BatchNorm1d(hidden)", "nn.LayerNorm(hidden)"),
          fails={P1: ["your model does not hold the tensors the exercise describes", "`norm.running_mean`"]}),
    Wrong("p1_answer", "ReLU moved before the BatchNorm",
          edit=("self.fc2(torch.relu(self.norm(self.fc1(x))))", "self.fc2(self.norm(torch.relu(self.fc1(x))))"),
          fails={P1: ["your train-mode `output` differs from the exercise's", "largest gap"]}),
    Wrong("p1_answer", "BatchNorm sized by the input features",
          edit=("nn.BatchNorm1d(hidden)", "nn.BatchNorm1d(in_features)"),
          fails={P1: ["the model has 745 trainable parameters; the exercise asks for 769"]}),
    Wrong("p1_answer", "BatchNorm dropped to make the error go away",
          edit=("        self.norm = nn.BatchNorm1d(hidden)\n", "",
                "self.fc2(torch.relu(self.norm(self.fc1(x))))", "self.fc2(torch.relu(self.fc1(x)))"),
          fails={P1: ["the model has 705 trainable parameters; the exercise asks for 769"]}),
    Right("p1_answer", "nn.Module.__init__(self) first", edit=("super().__init__()", "nn.Module.__init__(self)")),
    Right("p1_answer", "super(FixedRegressor, self).__init__()",
          edit=("super().__init__()", "super(FixedRegressor, self).__init__()")),
    Right("p1_answer", "one nn.Sequential", source='''class FixedRegressor(nn.Module):
    def __init__(self, in_features, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)
'''),

    # ---------------------------------------------------------------- patient 2: numpy inside forward
    Wrong("p2_answer", "clamped in place through .data", edit=(CLIP, "h.data.clamp_(-self.limit, self.limit)"),
          fails={P2: ["your outputs match, but the gradient", "`.data`"]}),
    Wrong("p2_answer", "numpy round trip on a detached copy",
          edit=(CLIP, "h = torch.from_numpy(np.clip(h.detach().numpy(), -self.limit, self.limit))"),
          fails={P2: ["`fc1.weight` gets no gradient", "cut from the graph"]}),
    Wrong("p2_answer", "clip under torch.no_grad()",
          edit=(CLIP, "with torch.no_grad():\n            h = h.clamp(-self.limit, self.limit)"),
          fails={P2: ["`fc1.weight` gets no gradient"]}),
    Wrong("p2_answer", "soft clipping with tanh", edit=(CLIP, "h = self.limit * torch.tanh(h / self.limit)"),
          fails={P2: ["your model's eval-mode output differs from ClippedMLP's", "fix only the bug"]}),
    Wrong("p2_answer", "the default limit hard-coded", edit=(CLIP, "h = h.clamp(-3.0, 3.0)"),
          fails={P2: ["your model's eval-mode output differs from ClippedMLP's"]}),
    Wrong("p2_answer", "clipping the output instead",
          edit=(CLIP + "\n        return self.fc2(torch.relu(h))",
                "return self.fc2(torch.relu(h)).clamp(-self.limit, self.limit)"),
          fails={P2: ["your model's eval-mode output differs from ClippedMLP's"]}),
    Right("p2_answer", "torch.clamp with keywords", edit=(CLIP, "h = torch.clamp(h, min=-self.limit, max=self.limit)")),
    Right("p2_answer", "F.hardtanh", edit=(CLIP, "h = F.hardtanh(h, -self.limit, self.limit)")),
    Right("p2_answer", "torch.where", edit=(CLIP, "h = torch.where(h.abs() > self.limit, self.limit * h.sign(), h)")),
    Right("p2_answer", "clamp_ in place on the layer's output", edit=(CLIP, "h.clamp_(-self.limit, self.limit)")),

    # ---------------------------------------------------------------- patient 3: the log cut the graph
    Wrong("p3_answer", "detach removed, but last_mean never set", edit=(REMEMBER_LINE, ""),
          fails={P3: ["`last_mean` is None: nothing sets it"]}),
    Wrong("p3_answer", "the log keeps the graph", edit=(REMEMBER, "self.last_mean = h.mean()\n"),
          fails={P3: ["`last_mean` is a tensor attached to the autograd graph", "let go of the graph"]}),
    Wrong("p3_answer", "the detach left in place", edit=(REMEMBER, "h = h.detach()\n        " + REMEMBER),
          fails={P3: ["`encoder.0.weight` gets no gradient", "cut from the graph"]}),
    Wrong("p3_answer", "returns h.data", edit=("return h\n", "return h.data\n"),
          fails={P3: ["`encoder.0.weight` gets no gradient"]}),
    Wrong("p3_answer", "a mean per feature", edit=(REMEMBER, "self.last_mean = h.detach().mean(dim=0)\n"),
          fails={P3: ["`last_mean` has shape [32]; the log keeps one number per name"]}),
    Wrong("p3_answer", "set on the first call only",
          edit=(REMEMBER, "if self.last_mean is None:\n            " + REMEMBER),
          fails={P3: ["after call 2 (train mode)", "still holds the previous call's value"]}),
    Right("p3_answer", ".item() on the attached mean", edit=(REMEMBER, "self.last_mean = h.mean().item()\n")),
    Right("p3_answer", "a tensor computed under no_grad",
          edit=(REMEMBER, "with torch.no_grad():\n            self.last_mean = h.mean()\n")),
    Right("p3_answer", "float() of the detached mean", edit=(REMEMBER, "self.last_mean = float(h.detach().mean())\n")),

    # ---------------------------------------------------------------- patient 4: the head built in forward
    Wrong("p4_answer", "nn.LazyLinear for the head", edit=("nn.Linear(hidden, num_classes)", "nn.LazyLinear(num_classes)"),
          fails={P4: ["no size yet", "uninitialized"]}),
    Wrong("p4_answer", "head sized by the input features",
          edit=("nn.Linear(hidden, num_classes)", "nn.Linear(in_features, num_classes)"),
          fails={P4: ["the model has 1,833 trainable parameters; the exercise asks for 1,893"]}),
    Wrong("p4_answer", "head also rebuilt in forward",
          edit=("return self.head(self.body(x))",
                "features = self.body(x)\n        self.head = nn.Linear(features.shape[1], self.head.out_features)\n"
                "        return self.head(features)"),
          fails={P4: ["calling the model registers new parameters", "`head.weight` is a new tensor after forward"]}),
    Wrong("p4_answer", "body retyped without its last ReLU",
          edit=("nn.Linear(hidden, hidden), nn.ReLU())", "nn.Linear(hidden, hidden))"),
          fails={P4: ["your train-mode `output` differs from the exercise's"]}),
    Wrong("p4_answer", "softmax added to the scores",
          edit=("return self.head(self.body(x))", "return self.head(self.body(x)).softmax(dim=-1)"),
          fails={P4: ["your train-mode `output` differs from the exercise's"]}),
    Wrong("p4_answer", "head built once, on the first call",
          edit=("self.head = nn.Linear(hidden, num_classes)", "self.head = None\n        self.num_classes = num_classes",
                "return self.head(self.body(x))",
                "features = self.body(x)\n        if self.head is None:\n"
                "            self.head = nn.Linear(features.shape[1], self.num_classes).to(features.device)\n"
                "        return self.head(features)"),
          fails={P4: ["`self.head` is None when the model is built"]}),
    Right("p4_answer", "head in __init__, the lazy branch left as dead code",
          edit=("return self.head(self.body(x))",
                "features = self.body(x)\n        if self.head is None:\n"
                "            self.head = nn.Linear(features.shape[1], 1)\n        return self.head(features)")),
    Right("p4_answer", "head sized by a dummy forward",
          edit=("self.head = nn.Linear(hidden, num_classes)",
                "with torch.no_grad():\n            width = self.body(torch.zeros(1, in_features)).shape[1]\n"
                "        self.head = nn.Linear(width, num_classes)")),
    Right("p4_answer", "the head appended to the body", source='''class FixedClassifier(nn.Module):
    def __init__(self, in_features, hidden, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.body(x)
'''),

    # ---------------------------------------------------------------- patient 5: the optimizer built too early
    Wrong("p5_answer", "Adam instead of SGD", edit=(OPTIMIZER, "optimizer = torch.optim.Adam(model.parameters(), lr=lr)"),
          fails={P5: ["your optimizer has moved the parameters differently from SGD(lr=0.1)",
                      "yours is Adam; the exercise's is SGD"]}),
    Wrong("p5_answer", "the learning rate hard-coded", edit=(OPTIMIZER, "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)"),
          fails={P5: ["differently from SGD(lr=0.05)", "yours has lr=0.1; the exercise's has lr=0.05"]}),
    Wrong("p5_answer", "momentum added",
          edit=(OPTIMIZER, "optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)"),
          fails={P5: ["after 2 steps", "yours has momentum=0.9; the exercise's has momentum=0"]}),
    Wrong("p5_answer", "weight decay added",
          edit=(OPTIMIZER, "optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=1e-4)"),
          fails={P5: ["after 1 step", "yours has weight_decay=0.0001; the exercise's has weight_decay=0"]}),
    Wrong("p5_answer", "only the new head in the optimizer",
          edit=(OPTIMIZER, "optimizer = torch.optim.SGD(model.head.parameters(), lr=lr)"),
          fails={P5: ["`body.0` is not in it", "or from only part of the model"]}),
    Wrong("p5_answer", "the new head added as a parameter group", source='''def fixed_setup_finetune(in_features, width, num_classes, lr=0.1):
    model = Classifier(in_features, width, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.head = nn.Linear(width, num_classes)
    optimizer.add_param_group({"params": model.head.parameters()})
    return model, optimizer
''', fails={P5: ["the optimizer holds 2 tensors that the model does not have (shapes [10, 16], [10])"]}),
    Right("p5_answer", "the Classifier built with num_classes at once", source='''def fixed_setup_finetune(in_features, width, num_classes, lr=0.1):
    model = Classifier(in_features, width, num_classes)
    return model, torch.optim.SGD(params=model.parameters(), lr=lr)
'''),
    Right("p5_answer", "one parameter group per part", source='''def fixed_setup_finetune(in_features, width, num_classes, lr=0.1):
    model = Classifier(in_features, width, 10)
    model.head = nn.Linear(width, num_classes)
    groups = [{"params": model.body.parameters()}, {"params": model.head.parameters()}]
    return model, torch.optim.SGD(groups, lr)
'''),
    Right("p5_answer", "a list of the parameters", edit=(OPTIMIZER,
          "optimizer = torch.optim.SGD([*model.body.parameters(), *model.head.parameters()], lr=lr)")),

    # ---------------------------------------------------------------- patient 6: single-sample prediction
    Wrong("p6_answer", "eval() without no_grad", edit=("    with torch.no_grad():\n        return", "    return"),
          fails={P6: ["returns a tensor attached to an autograd graph"], P6_OTHER: ["attached to an autograd graph"]}),
    Wrong("p6_answer", "no_grad without eval()", edit=("    model.eval()\n", ""),
          fails={P6: ["Expected more than 1 value per channel when training", "call model.eval()"],
                 P6_OTHER: ["differs from the model's eval-mode output"]}),
    Wrong("p6_answer", "model.training = False", edit=("model.eval()", "model.training = False"),
          fails={P6: ["Expected more than 1 value per channel when training"]}),
    Wrong("p6_answer", "squeeze() instead of [0]",
          edit=("return model(sample.unsqueeze(0))[0]", "return model(sample.unsqueeze(0)).squeeze()"),
          fails={P6: ["fixed_predict returned shape []; the model's output for one sample has shape [1]"]}),
    Wrong("p6_answer", "autograd switched off for good", source='''def fixed_predict(model, sample):
    model.eval()
    torch.set_grad_enabled(False)
    return model(sample.unsqueeze(0))[0]
''', fails={P6: ["fixed_predict left autograd switched off"]}),
    Wrong("p6_answer", "a batch of two copies, still in train mode", source='''def fixed_predict(model, sample):
    with torch.no_grad():
        return model(torch.stack([sample, sample]))[0]
''', fails={P6: ["changed the model's buffers, so it ran the model in train mode"]}),
    Wrong("p6_answer", "the class index instead of the scores", edit=("[0]\n", "[0].argmax()\n"),
          fails={P6: ["returned shape []; the model's output for one sample has shape [5]", "every class's score"]}),
    Right("p6_answer", "inference_mode, train mode restored", source='''def fixed_predict(model, sample):
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        scores = model(sample.unsqueeze(0)).squeeze(0)
    model.train(was_training)
    return scores
'''),
    Right("p6_answer", "no_grad as a decorator", source='''@torch.no_grad()
def fixed_predict(model, sample):
    model.train(False)
    return model(sample[None])[0]
'''),
    Right("p6_answer", "eval() and detach()", source='''def fixed_predict(model, sample):
    model.eval()
    return model(sample.unsqueeze(0))[0].detach()
'''),

    # ---------------------------------------------------------------- patient 7: hooks registered in forward
    Wrong("p7_answer", "layers called through .forward()",
          edit=("return self.fc2(torch.relu(self.fc1(x)))", "return self.fc2.forward(torch.relu(self.fc1.forward(x)))"),
          fails={P7: ["a layer took part in forward without being called, so its hooks never ran"]}),
    Wrong("p7_answer", "the means keep the graph", edit=(RECORD, "self.means[name] = output.mean()"),
          fails={P7: ["attached to", "let go of the graph"]}),
    Wrong("p7_answer", "setdefault keeps the first call's means",
          edit=(RECORD, "self.means.setdefault(name, output.detach().mean().item())"),
          fails={P7: ["still holds the previous call's value"]}),
    Wrong("p7_answer", "the names swapped",
          edit=('self.fc1.register_forward_hook(self.record("fc1"))\n        self.fc2.register_forward_hook(self.record("fc2"))',
                'self.fc1.register_forward_hook(self.record("fc2"))\n        self.fc2.register_forward_hook(self.record("fc1"))'),
          fails={P7: ["it holds what `fc2` should hold"]}),
    Wrong("p7_answer", "hooks also left in forward",
          edit=("return self.fc2(torch.relu(self.fc1(x)))",
                'self.fc1.register_forward_hook(self.record("fc1"))\n        return self.fc2(torch.relu(self.fc1(x)))'),
          fails={P7: ["calling the model leaves hooks behind", "`fc1` gains a forward hook on every call"]}),
    Wrong("p7_answer", "forward pre-hooks instead of forward hooks",
          edit=('self.fc1.register_forward_hook(self.record("fc1"))\n        self.fc2.register_forward_hook(self.record("fc2"))',
                'self.fc1.register_forward_pre_hook(self.record("fc1"))\n        self.fc2.register_forward_pre_hook(self.record("fc2"))'),
          fails={P7: ["calling the model raised TypeError", "missing 1 required positional argument"]}),
    Right("p7_answer", "hooks removed after every call", source='''class FixedProbedMLP(nn.Module):
    """Keeps the mean activation of each layer in `self.means`, for a dashboard."""

    def __init__(self, in_features, hidden, out_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)
        self.means = {}

    def record(self, name):
        def hook(module, args, output):
            self.means[name] = output.detach().mean().item()
        return hook

    def forward(self, x):
        handles = [self.fc1.register_forward_hook(self.record("fc1")), self.fc2.register_forward_hook(self.record("fc2"))]
        try:
            return self.fc2(torch.relu(self.fc1(x)))
        finally:
            for handle in handles:
                handle.remove()
'''),
    Right("p7_answer", "no hooks: the means taken in forward", source='''class FixedProbedMLP(nn.Module):
    """Keeps the mean activation of each layer in `self.means`, for a dashboard."""

    def __init__(self, in_features, hidden, out_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)
        self.means = {}

    def forward(self, x):
        h = self.fc1(x)
        out = self.fc2(torch.relu(h))
        self.means["fc1"] = h.detach().mean().item()
        self.means["fc2"] = out.detach().mean().item()
        return out
'''),
    Right("p7_answer", "hooks registered in a loop, means as detached tensors",
          edit=('self.fc1.register_forward_hook(self.record("fc1"))\n        self.fc2.register_forward_hook(self.record("fc2"))',
                'for name in ("fc1", "fc2"):\n            getattr(self, name).register_forward_hook(self.record(name))',
                RECORD, "self.means[name] = output.detach().mean()")),

    # ---------------------------------------------------------------- patient 8: the mask left on the CPU
    Wrong("p8_answer", "the mask's ~ dropped", edit=("masked_fill(~self.mask[:t, :t]", "masked_fill(self.mask[:t, :t]"),
          fails={P8: ["`out.weight` has NaN or Inf in its gradient"]}),
    Wrong("p8_answer", "triu for tril", edit=(MASK, "torch.triu(torch.ones(max_len, max_len, dtype=torch.bool))"),
          fails={P8: ["your model's eval-mode output differs from CausalMixer's"]}),
    Wrong("p8_answer", "the mask built in forward on the default device",
          edit=("        self.register_buffer(\"mask\", " + MASK + ", persistent=False)\n", "",
                "~self.mask[:t, :t]", "~torch.tril(torch.ones(t, t, dtype=torch.bool))"),
          fails={P8: ["after model.to('meta'), calling it raised", "device"]}),
    Wrong("p8_answer", "the mask moved to a hard-coded device",
          edit=("self.register_buffer(\"mask\", " + MASK + ", persistent=False)",
                "self.mask = " + MASK + ".to(\"cuda\" if torch.cuda.is_available() else \"cpu\")"),
          fails={P8: ["a plain tensor (shape [6, 6]) at `self.mask` is not registered"]}),
    Wrong("p8_answer", "a float mask still inverted with ~",
          edit=(MASK, "torch.tril(torch.ones(max_len, max_len))"),
          fails={P8: ["calling the model raised TypeError", "only implemented on integer and Boolean-type tensors"]}),
    Wrong("p8_answer", "the mask sized by dim", edit=(MASK, "torch.tril(torch.ones(dim, dim, dtype=torch.bool))"),
          fails={P8: ["calling the model raised RuntimeError"]}),
    Right("p8_answer", "a persistent buffer", edit=(", persistent=False)", ")")),
    Right("p8_answer", "the mask built in forward on x's device",
          edit=("        self.register_buffer(\"mask\", " + MASK + ", persistent=False)\n", "",
                "~self.mask[:t, :t]", "~torch.ones(t, t, dtype=torch.bool, device=x.device).tril()")),
    Right("p8_answer", "a float mask compared with 0",
          edit=(MASK, "torch.ones(max_len, max_len).tril()", "~self.mask[:t, :t]", "self.mask[:t, :t] == 0")),

    # ---------------------------------------------------------------- patient 9: renamed checkpoint keys
    Wrong("p9_answer", "prefixes renamed, the index shift missed", source='''def upgrade_checkpoint(state_dict):
    return {k.replace("encoder.", "backbone.").replace("classifier.", "heads.sentiment."): t
            for k, t in state_dict.items()}
''', fails={P9: ["the names differ", "missing from the checkpoint: `backbone.2.bias`"]}),
    Wrong("p9_answer", "only old keys handled", source='''RENAMES = {"encoder.0.": "backbone.1.", "encoder.1.": "backbone.2.", "classifier.": "heads.sentiment."}


def upgrade_checkpoint(state_dict):
    upgraded = {}
    for key, tensor in state_dict.items():
        old = next(prefix for prefix in RENAMES if key.startswith(prefix))
        upgraded[RENAMES[old] + key[len(old):]] = tensor
    return upgraded
''', fails={P9_EVERY: ["upgrade_checkpoint(SentimentV2's state_dict) raised StopIteration"]}),
    Wrong("p9_answer", "str.replace anywhere in the key", source='''def upgrade_checkpoint(state_dict):
    upgraded = {}
    for key, tensor in state_dict.items():
        key = key.replace("encoder.0.", "backbone.1.").replace("encoder.1.", "backbone.2.")
        upgraded[key.replace("classifier.", "heads.sentiment.")] = tensor
    return upgraded
''', fails={P9_EVERY: ["your model cannot take upgrade_checkpoint(SentimentV2's state_dict): the names differ",
                       "heads.heads.sentiment"]}),
    Wrong("p9_answer", "keys renamed in the dict it is given", source='''RENAMES = {"encoder.0.": "backbone.1.", "encoder.1.": "backbone.2.", "classifier.": "heads.sentiment."}


def upgrade_checkpoint(state_dict):
    for key in list(state_dict):
        for old, new in RENAMES.items():
            if key.startswith(old):
                state_dict[new + key[len(old):]] = state_dict.pop(key)
    return state_dict
''', fails={P9: ["upgrade_checkpoint(SentimentV1's state_dict) changed the checkpoint it was given",
                 "`encoder.0.weight` was removed from it", "build a new dict"]}),
    Wrong("p9_answer", "the two indices swapped", edit=('"encoder.0.": "backbone.1.", "encoder.1.": "backbone.2."',
                                                    '"encoder.0.": "backbone.2.", "encoder.1.": "backbone.1."'),
          fails={P9: ["the names differ"]}),
    Wrong("p9_answer", "weights and biases only", source='''def upgrade_checkpoint(state_dict):
    renames = {"encoder.0.": "backbone.1.", "encoder.1.": "backbone.2.", "classifier.": "heads.sentiment."}
    upgraded = {}
    for key, tensor in state_dict.items():
        if not key.endswith(("weight", "bias")):
            continue
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
        upgraded[key] = tensor
    return upgraded
''', fails={P9: ["SentimentV2 cannot load this state_dict with strict=True"]}),
    Right("p9_answer", "regular expressions", source='''import re


def upgrade_checkpoint(state_dict):
    upgraded = {}
    for key, tensor in state_dict.items():
        key = re.sub(r"^encoder\\.(\\d+)\\.", lambda m: f"backbone.{int(m.group(1)) + 1}.", key)
        key = re.sub(r"^classifier\\.", "heads.sentiment.", key)
        upgraded[key] = tensor
    return upgraded
'''),
    Right("p9_answer", "removeprefix in a comprehension", source='''PAIRS = [("encoder.0.", "backbone.1."), ("encoder.1.", "backbone.2."), ("classifier.", "heads.sentiment.")]


def rename(key):
    for old, new in PAIRS:
        if key.startswith(old):
            return new + key.removeprefix(old)
    return key


def upgrade_checkpoint(state_dict):
    return {rename(key): tensor for key, tensor in state_dict.items()}
'''),
    Right("p9_answer", "a copy renamed, metadata kept", source='''from collections import OrderedDict


def upgrade_checkpoint(state_dict):
    upgraded = OrderedDict()
    for key, tensor in state_dict.items():
        head, _, rest = key.partition(".")
        if head == "encoder":
            index, _, rest = rest.partition(".")
            key = f"backbone.{int(index) + 1}.{rest}"
        elif head == "classifier":
            key = f"heads.sentiment.{rest}"
        upgraded[key] = tensor
    upgraded._metadata = getattr(state_dict, "_metadata", None)
    return upgraded
'''),

    # ---------------------------------------------------------------- patient 10: gradients pile up
    Wrong("p10_answer", "zero_grad() still missing", edit=(STEP_ZERO, ""),
          fails={P10: ["gradients accumulate across steps"], P10_MODES: ["gradients accumulate across steps"]}),
    Wrong("p10_answer", "zero_grad() between backward and step",
          edit=(STEP_ZERO, "", "    loss.backward()\n", "    loss.backward()\n    optimizer.zero_grad()\n"),
          fails={P10: ["after step 1, no parameter has changed", "zero_grad() does not sit between them"]}),
    Wrong("p10_answer", "the loss returned as a tensor", edit=("return loss.item()", "return loss"),
          fails={P10: ["fixed_train_step returned the loss as a tensor with its autograd graph, not as a number",
                       "loss.item()"]}),
    Wrong("p10_answer", "a hand-written update with lr 0.1", source='''def fixed_train_step(model, optimizer, loss_fn, x, y):
    model.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    return loss.item()
''', fails={P10: ["after step 1, the parameters differ from one SGD step on loss_fn(model(x), y)", "is off by up to"]}),
    Wrong("p10_answer", "a new optimizer in every step", edit=(STEP_ZERO,
          "    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n" + STEP_ZERO),
          fails={P10: ["the parameters differ from one SGD step"]}),
    Wrong("p10_answer", "loss_fn's arguments swapped", edit=("loss_fn(prediction, y)", "loss_fn(y, prediction)"),
          fails={P10: ["the parameters differ from one SGD step on loss_fn(model(x), y)"]}),
    Wrong("p10_answer", "the loss computed again after the step",
          edit=("return loss.item()", "return loss_fn(model(x), y).item()"),
          fails={P10: ["at step 1, fixed_train_step returned", "but the loss on this batch is"]}),
    Right("p10_answer", "zero_grad() after the step", source='''def fixed_train_step(model, optimizer, loss_fn, x, y):
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()
'''),
    Right("p10_answer", "model.zero_grad() and float()", edit=("optimizer.zero_grad()", "model.zero_grad()",
                                                              "return loss.item()", "return float(loss)")),
    Right("p10_answer", "gradients filled with zeros", edit=("optimizer.zero_grad()", "optimizer.zero_grad(set_to_none=False)")),

    # ---------------------------------------------------------------- patient 11: a shared layer counted thrice
    Wrong("p11_answer", "no de-duplication at all", source='''def fixed_count_trainable(module):
    total = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
    return total + sum(fixed_count_trainable(child) for child in module.children())
''', fails={P11: ["returned 1,316, but torch counts 772", "counts a shared tensor once per name"]}),
    Wrong("p11_answer", "shared modules skipped, tied tensors not", source='''def fixed_count_trainable(module, seen=None):
    seen = set() if seen is None else seen
    if id(module) in seen:
        return 0
    seen.add(id(module))
    total = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
    return total + sum(fixed_count_trainable(child, seen) for child in module.children())
''', fails={P11: ["fixed_count_trainable(TiedLM) returned", "`embed.weight` and `unembed.weight` are one tensor (400 elements), tied"]}),
    Wrong("p11_answer", "frozen parameters counted", edit=("if p.requires_grad and id(p) not in seen", "if id(p) not in seen"),
          fails={P11: ["20 parameters are frozen", "skip frozen parameters"]}),
    Wrong("p11_answer", "de-duplicated by name", source='''def fixed_count_trainable(module):
    seen = set()
    total = 0
    for name, p in module.named_parameters(remove_duplicate=False):
        if p.requires_grad and name not in seen:
            seen.add(name)
            total += p.numel()
    return total
''', fails={P11: ["returned 1,316, but torch counts 772", "counted once per name"]}),
    Wrong("p11_answer", "tensors counted, not elements", source='''def fixed_count_trainable(module):
    return len([p for p in module.parameters() if p.requires_grad])
''', fails={P11: ["returned 12, but torch counts 772", "model.named_parameters() if t.requires_grad"]}),
    Wrong("p11_answer", "state_dict de-duplicated by storage", source='''def fixed_count_trainable(module):
    unique = {t.data_ptr(): t for t in module.state_dict().values()}
    return sum(t.numel() for t in unique.values())
''', fails={P11: ["returned 47, but torch counts 18"]}),
    Right("p11_answer", "parameters() filtered", source='''def fixed_count_trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
'''),
    Right("p11_answer", "a walk that collects tensors by id", source='''def fixed_count_trainable(module):
    found = {}
    for layer in module.modules():
        for p in layer.parameters(recurse=False):
            if p.requires_grad:
                found[id(p)] = p.numel()
    return sum(found.values())
'''),
    Right("p11_answer", "named_parameters() with its default de-duplication", source='''def fixed_count_trainable(module):
    total = 0
    for name, p in module.named_parameters():
        if p.requires_grad:
            total += p.numel()
    return total
'''),

    # ---------------------------------------------------------------- patient 12: dropout in eval mode
    Wrong("p12_answer", "dropout deleted", edit=("        " + DROPOUT + "\n", ""),
          fails={P12: ["your train-mode `output` differs from the exercise's"]}),
    Wrong("p12_answer", "dropout by hand, without rescaling",
          edit=(DROPOUT, "if self.training:\n            h = h * (torch.rand_like(h) > self.p)"),
          fails={P12: ["your train-mode `output` differs from the exercise's"]}),
    Wrong("p12_answer", "the mode inverted", edit=("training=self.training", "training=not self.training"),
          fails={P12: ["two eval-mode calls on the same input give different outputs"]}),
    Wrong("p12_answer", "eval outputs scaled by 1 - p as well",
          edit=(DROPOUT, DROPOUT + "\n        if not self.training:\n            h = h * (1 - self.p)"),
          fails={P12: ["your eval-mode `output` differs from the exercise's"]}),
    Wrong("p12_answer", "p hard-coded", edit=("p=self.p", "p=0.3"),
          fails={P12: ["your train-mode `output` differs from the exercise's"]}),
    Wrong("p12_answer", "an nn.Dropout built inside forward", edit=(DROPOUT, "h = nn.Dropout(self.p)(h)"),
          fails={P12: ["two eval-mode calls on the same input give different outputs"]}),
    Right("p12_answer", "an nn.Dropout layer", source='''class FixedNoisyMLP(nn.Module):
    def __init__(self, in_features, hidden, out_features, p=0.3):
        super().__init__()
        self.p = p
        self.fc1 = nn.Linear(in_features, hidden)
        self.drop = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(x))))
'''),
    Right("p12_answer", "F.dropout only in train mode",
          edit=(DROPOUT, "if self.training:\n            h = F.dropout(h, self.p)")),
    Right("p12_answer", "torch.dropout", edit=(DROPOUT, "h = torch.dropout(h, self.p, self.training)")),
]
