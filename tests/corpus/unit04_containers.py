"""Unit 04: realistic answers to each exercise, graded by tests/answer_lab.py against the visible and hidden tests."""

from answer_lab import Right, Wrong

STUB = '        raise NotImplementedError("replace this line with your code")\n'

# --- Part A: FixedEnsemble --------------------------------------------------------------------------------

MEMBERS = "self.members = nn.ModuleList(small_mlp(in_features, hidden, out_features) for _ in range(members))"

ENSEMBLE = [
    Wrong("ensemble_answer", "the stub, unanswered", edit=("        " + MEMBERS + "\n", STUB),
          fails={"test_ensemble_count": ["building the model raised NotImplementedError", "replace that line"],
                 "test_ensemble_trains": ["NotImplementedError", "replace that line"]}),
    Wrong("ensemble_answer", "still a plain list",
          edit=(MEMBERS, "self.members = [small_mlp(in_features, hidden, out_features) for _ in range(members)]"),
          fails={"test_ensemble_count": ["3 nn.Sequential layers sit in a plain list at `self.members`",
                                         "use nn.ModuleList"],
                 "test_ensemble_trains": ["plain list at `self.members`"]}),
    Wrong("ensemble_answer", "one member repeated",
          edit=(MEMBERS, "self.members = nn.ModuleList([small_mlp(in_features, hidden, out_features)] * members)"),
          fails={"test_ensemble_count": ["too few", "`members.0` and `members.1` and `members.2` are one shared module"]}),
    Wrong("ensemble_answer", "a ModuleDict, iterated as if it were a list",
          edit=(MEMBERS, "self.members = nn.ModuleDict({str(i): small_mlp(in_features, hidden, out_features) "
                         "for i in range(members)})"),
          fails={"test_ensemble_trains": ["calling the model raised TypeError: 'str' object is not callable"]}),
    Wrong("ensemble_answer", "nn.Sequential given a generator",
          edit=(MEMBERS, "self.members = nn.Sequential(small_mlp(in_features, hidden, out_features) for _ in range(members))"),
          fails={"test_ensemble_count": ["building the model raised TypeError"]}),
    Wrong("ensemble_answer", "the members' parameters copied into a ParameterList",
          edit=(MEMBERS, "self.members = [small_mlp(in_features, hidden, out_features) for _ in range(members)]\n"
                         "        self.weights = nn.ParameterList(p for m in self.members for p in m.parameters())"),
          fails={"test_ensemble_count": ["3 nn.Sequential layers sit in a plain list at `self.members`"]}),
    Wrong("ensemble_answer", "one member too few",
          edit=("for _ in range(members))", "for _ in range(members - 1))"),
          fails={"test_ensemble_count": ["the exercise asks for 3,009", "too few"]}),
    Right("ensemble_answer", "an nn.Sequential of the members (iterating it yields them)",
          edit=(MEMBERS, "self.members = nn.Sequential(*[small_mlp(in_features, hidden, out_features) "
                         "for _ in range(members)])")),
    Right("ensemble_answer", "a ModuleList filled with append",
          edit=(MEMBERS, "self.members = nn.ModuleList()\n        for _ in range(members):\n"
                         "            self.members.append(small_mlp(in_features, hidden, out_features))")),
]

# --- Part B: FixedMultiTaskNet ------------------------------------------------------------------------------

MT_HEAD = '''class FixedMultiTaskNet(nn.Module):
    def __init__(self, in_features, hidden, tasks):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
'''
MT_FORWARD = '''
    def forward(self, x):
        features = self.trunk(x)
        return {task: head(features) for task, head in self.heads.items()}
'''
HEADS = "self.heads = nn.ModuleDict({task: nn.Linear(hidden, classes) for task, classes in tasks.items()})"
ADD = "self.heads[task] = nn.Linear(self.trunk[0].out_features, classes)"

MULTITASK = [
    Wrong("multitask_answer", "the stub, unanswered",
          MT_HEAD + STUB + "\n    def add_task(self, task, classes):\n" + STUB + MT_FORWARD,
          fails={"test_multitask_count": ["building the model raised NotImplementedError", "replace that line"]}),
    Wrong("multitask_answer", "still a plain dict",
          edit=(HEADS, "self.heads = {task: nn.Linear(hidden, classes) for task, classes in tasks.items()}"),
          fails={"test_multitask_count": ["2 nn.Linear layers sit in a plain dict at `self.heads`", "use nn.ModuleDict"],
                 "test_multitask_trains": ["plain dict at `self.heads`"]}),
    Wrong("multitask_answer", "add_task registers the head beside `heads`",
          edit=(ADD, "setattr(self, task, nn.Linear(self.trunk[0].out_features, classes))"),
          fails={"test_multitask_trains": ["`size.weight` gets no gradient: `size` never runs in forward"]}),
    Wrong("multitask_answer", "add_task replaces every head",
          edit=(ADD, "self.heads = nn.ModuleDict({task: nn.Linear(self.trunk[0].out_features, classes)})"),
          fails={"test_multitask_count": ["the exercise asks for 1,167", "too few"]}),
    Wrong("multitask_answer", "add_task rebuilds a plain dict",
          edit=(ADD, "self.heads = {**self.heads, task: nn.Linear(self.trunk[0].out_features, classes)}"),
          fails={"test_multitask_count": ["raised TypeError: cannot assign 'dict' as child module 'heads'",
                                          "add to the container you have"]}),
    Wrong("multitask_answer", "the new head reads the input size, not the trunk's",
          edit=(ADD, "self.heads[task] = nn.Linear(self.trunk[0].in_features, classes)"),
          fails={"test_multitask_count": ["the model has 1,131 trainable parameters; the exercise asks for 1,167"]}),
    Wrong("multitask_answer", "the new head's size hard-coded",
          edit=(ADD, "self.heads[task] = nn.Linear(32, classes)"),
          fails={"test_multitask_count": ["the model has 288 trainable parameters; the exercise asks for 64"]}),
    Right("multitask_answer", "a loop into an empty ModuleDict; update() in add_task", MT_HEAD + '''        self.heads = nn.ModuleDict()
        for task, classes in tasks.items():
            self.heads[task] = nn.Linear(hidden, classes)

    def add_task(self, task, classes):
        self.heads.update({task: nn.Linear(self.trunk[0].out_features, classes)})
''' + MT_FORWARD),
    Right("multitask_answer", "the size kept on self; add_module", '''class FixedMultiTaskNet(nn.Module):
    def __init__(self, in_features, hidden, tasks):
        super().__init__()
        self.hidden = hidden
        self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.heads = nn.ModuleDict()
        for task, classes in tasks.items():
            self.add_task(task, classes)

    def add_task(self, task, classes):
        self.heads.add_module(task, nn.Linear(self.hidden, classes))
''' + MT_FORWARD),
]

# --- Part C: FixedSkipNet -------------------------------------------------------------------------------------

SKIP_HEAD = '''class FixedSkipNet(nn.Module):
    def __init__(self, in_features, hidden, out_features):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))
'''
PROJECT = "self.project = nn.Linear(in_features, out_features, bias=False)"
SUM = "return self.body(x) + self.project(x)"

SKIP = [
    Wrong("skip_answer", "the stub, unanswered", SKIP_HEAD + STUB + "\n    def forward(self, x):\n" + STUB,
          fails={"test_skip_net": ["building the model raised NotImplementedError", "replace that line"]}),
    Wrong("skip_answer", "the projection subtracted", edit=(SUM, "return self.body(x) - self.project(x)"),
          fails={"test_skip_net": ["your train-mode `output` differs from the exercise's", "largest gap"]}),
    Wrong("skip_answer", "a bias on the projection", edit=(", bias=False)", ")"),
          fails={"test_skip_net": ["the model has 1,212 trainable parameters; the exercise asks for 1,202", "too many"]}),
    Wrong("skip_answer", "forward still builds a local projection",
          edit=(SUM, "project = nn.Linear(x.shape[-1], self.body[-1].out_features, bias=False)\n"
                     "        return self.body(x) + project(x)"),
          fails={"test_skip_net": ["model.parameters() does not list", "a layer created inside forward"]}),
    Wrong("skip_answer", "the projection built but never used", edit=(SUM, "return self.body(x)"),
          fails={"test_skip_net": ["`project.weight` gets no gradient: `project` never runs in forward"]}),
    Wrong("skip_answer", "a ReLU on the sum", edit=(SUM, "return torch.relu(self.body(x) + self.project(x))"),
          fails={"test_skip_net": ["your train-mode `output` differs from the exercise's"]}),
    Wrong("skip_answer", "the projection's sizes swapped",
          edit=(PROJECT, "self.project = nn.Linear(out_features, in_features, bias=False)"),
          fails={"test_skip_net": ["calling the model raised RuntimeError", "shapes cannot be multiplied"]}),
    Wrong("skip_answer", "the projection called through .forward()", edit=(SUM, "return self.body(x) + self.project.forward(x)"),
          fails={"test_skip_net": ["a layer took part in forward without being called", "`project` (nn.Linear)"]}),
    Right("skip_answer", "the projection as a bare nn.Parameter", SKIP_HEAD + '''        self.project = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.project, a=5 ** 0.5)

    def forward(self, x):
        return self.body(x) + x @ self.project.T
'''),
    Right("skip_answer", "add_module, and the sum the other way round",
          edit=(PROJECT, 'self.add_module("project", nn.Linear(in_features, out_features, bias=False))',
                SUM, "return self.project(x) + self.body(x)")),
]

# --- Part D: FixedStemNet -------------------------------------------------------------------------------------

STEM_HEAD = '''class FixedStemNet(nn.Module):
    def __init__(self, in_features, hidden, out_features):
        super().__init__()
'''
STEM_FORWARD = "return self.head(torch.relu(self.stem(x)))"

STEM = [
    Wrong("stem_answer", "the stub, unanswered", STEM_HEAD + STUB + "\n    def forward(self, x):\n" + STUB,
          fails={"test_stem_net": ["building the model raised NotImplementedError", "replace that line"]}),
    Wrong("stem_answer", "the ReLU dropped", edit=(STEM_FORWARD, "return self.head(self.stem(x))"),
          fails={"test_stem_net": ["your train-mode `output` differs from the exercise's"]}),
    Wrong("stem_answer", "a lazy stem", edit=("self.stem = nn.Linear(in_features, hidden)", "self.stem = nn.LazyLinear(hidden)"),
          fails={"test_stem_net": ["2 parameters have no size yet", "`stem.weight` is uninitialized"]}),
    Wrong("stem_answer", "built in __init__, and again in forward",
          edit=(STEM_FORWARD, "self.stem = nn.Linear(x.shape[-1], self.head.in_features)\n        " + STEM_FORWARD),
          fails={"test_stem_net": ["calling the model registers new parameters", "`self.stem` is assigned inside forward"]}),
    Wrong("stem_answer", "tanh instead of ReLU", edit=(STEM_FORWARD, "return self.head(torch.tanh(self.stem(x)))"),
          fails={"test_stem_net": ["your train-mode `output` differs from the exercise's"]}),
    Wrong("stem_answer", "the ReLU after the head", edit=(STEM_FORWARD, "return torch.relu(self.head(self.stem(x)))"),
          fails={"test_stem_net": ["your train-mode `output` differs from the exercise's"]}),
    Wrong("stem_answer", "the stem built at the first call",
          STEM_HEAD + '''        self.hidden = hidden
        self.head = nn.Linear(hidden, out_features)

    def forward(self, x):
        if not hasattr(self, "stem"):
            self.stem = nn.Linear(x.shape[-1], self.hidden)
        return self.head(torch.relu(self.stem(x)))
''',
          fails={"test_stem_net": ["the model has 330 trainable parameters; the exercise asks for 1,002", "too few"]}),
    Right("stem_answer", "one nn.Sequential", STEM_HEAD + '''        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, x):
        return self.net(x)
'''),
    Right("stem_answer", "an nn.ReLU module and F.relu's twin", STEM_HEAD + '''        self.stem = nn.Linear(in_features, hidden)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, out_features)

    def forward(self, x):
        return self.head(self.act(self.stem(x)))
'''),
]

# --- Part E: ResidualMLP ---------------------------------------------------------------------------------------

RES_INIT = '''class ResidualMLP(nn.Module):
    def __init__(self, in_features, width, hidden, blocks, out_features):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                          nn.Linear(hidden, width), nn.BatchNorm1d(width))
            for _ in range(blocks))
        self.head = nn.Linear(width, out_features)
'''
SKIPPED = "x = torch.relu(x + branch(x))"


def residual_forward(body: str) -> str:
    return RES_INIT + "\n    def forward(self, x):\n        x = self.stem(x)\n" + body + "        return self.head(x)\n"


RESIDUAL = [
    Wrong("residual_answer", "the stub, unanswered",
          RES_INIT.split("        self.stem")[0] + STUB + "\n    def forward(self, x):\n" + STUB,
          fails={"test_residual_count": ["building the model raised NotImplementedError", "replace that line"]}),
    Wrong("residual_answer", "no skip", edit=(SKIPPED, "x = torch.relu(branch(x))"),
          fails={"test_residual_trains": ["your train-mode `output` differs from the exercise's", "largest gap"]}),
    Wrong("residual_answer", "no ReLU after the skip", edit=(SKIPPED, "x = x + branch(x)"),
          fails={"test_residual_trains": ["your train-mode `output` differs from the exercise's"]}),
    Wrong("residual_answer", "every skip from the stem's output",
          residual_forward("        stem = x\n        for branch in self.blocks:\n"
                           "            x = torch.relu(stem + branch(x))\n"),
          fails={"test_residual_trains": ["your train-mode `output` differs from the exercise's"]}),
    Wrong("residual_answer", "ReLU and BatchNorm swapped inside the branch",
          edit=("nn.BatchNorm1d(hidden), nn.ReLU(),", "nn.ReLU(), nn.BatchNorm1d(hidden),"),
          fails={"test_residual_trains": ["your train-mode `output` differs from the exercise's"]}),
    Wrong("residual_answer", "the branch subtracted", edit=(SKIPPED, "x = torch.relu(x - branch(x))"),
          fails={"test_residual_trains": ["your train-mode `output` differs from the exercise's"]}),
    Wrong("residual_answer", "the ReLU inside the skip", edit=(SKIPPED, "x = x + torch.relu(branch(x))"),
          fails={"test_residual_trains": ["your train-mode `output` differs from the exercise's"]}),
    Wrong("residual_answer", "the sum added in place into the ReLU's output",
          edit=(SKIPPED, "x += branch(x)\n            x = torch.relu(x)"),
          fails={"test_residual_trains": ["backward() raised RuntimeError", "modified by an inplace operation"]}),
    Wrong("residual_answer", "one branch repeated",
          RES_INIT.replace('''        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                          nn.Linear(hidden, width), nn.BatchNorm1d(width))
            for _ in range(blocks))''', '''        branch = nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                               nn.Linear(hidden, width), nn.BatchNorm1d(width))
        self.blocks = nn.ModuleList([branch] * blocks)''')
          + "\n    def forward(self, x):\n        x = self.stem(x)\n        for branch in self.blocks:\n"
            "            x = torch.relu(x + branch(x))\n        return self.head(x)\n",
          fails={"test_residual_count": ["too few", "are one shared module"]}),
    Wrong("residual_answer", "the branches in a plain list",
          edit=("self.blocks = nn.ModuleList(\n", "self.blocks = list(\n"),
          fails={"test_residual_count": ["3 nn.Sequential layers sit in a plain list at `self.blocks`",
                                         "use nn.ModuleList"]}),
    Wrong("residual_answer", "the branch's last BatchNorm left out",
          edit=("nn.Linear(hidden, width), nn.BatchNorm1d(width))", "nn.Linear(hidden, width))"),
          fails={"test_residual_count": ["the model has 8,602 trainable parameters; the exercise asks for 8,986", "too few"]}),
    Right("residual_answer", "a Residual module per block", '''class Residual(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                    nn.Linear(hidden, width), nn.BatchNorm1d(width))

    def forward(self, x):
        return torch.relu(x + self.branch(x))


class ResidualMLP(nn.Module):
    def __init__(self, in_features, width, hidden, blocks, out_features):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU())
        self.blocks = nn.ModuleList([Residual(width, hidden) for _ in range(blocks)])
        self.head = nn.Linear(width, out_features)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)
'''),
    Right("residual_answer", "blocks appended in a loop, indexed in forward, F.relu", '''class ResidualMLP(nn.Module):
    def __init__(self, in_features, width, hidden, blocks, out_features):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU())
        self.blocks = nn.ModuleList()
        for _ in range(blocks):
            self.blocks.append(nn.Sequential(
                nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                nn.Linear(hidden, width), nn.BatchNorm1d(width)))
        self.head = nn.Linear(width, out_features)

    def forward(self, x):
        h = self.stem(x)
        for i in range(len(self.blocks)):
            h = nn.functional.relu(self.blocks[i](h) + h)
        return self.head(h)
'''),
]

# --- Part F: counting by hand ------------------------------------------------------------------------------------

BLOCK = "    block = (width * hidden + hidden) + 2 * hidden + (hidden * width + width) + 2 * width\n"
RESIDUAL_TOTAL = ("    return (in_features * width + width) + 2 * width + blocks * block + "
                  "(width * out_features + out_features)\n")
MULTITASK_COUNT = ("    return (in_features * hidden + hidden) + sum(hidden * classes + classes "
                   "for classes in tasks.values())\n")

COUNTS = [
    Wrong("counts_answer", "BatchNorm's running statistics counted as parameters",
          edit=(BLOCK, "    block = (width * hidden + hidden) + 4 * hidden + (hidden * width + width) + 4 * width\n"),
          fails={"test_counts": ["residual_mlp_params(20, 64, 16, 3, 10) returned", "trainable parameters"]}),
    Wrong("counts_answer", "the stem's BatchNorm forgotten",
          edit=(RESIDUAL_TOTAL, "    return (in_features * width + width) + blocks * block + "
                                "(width * out_features + out_features)\n"),
          fails={"test_counts": ["residual_mlp_params(20, 64, 16, 3, 10) returned"]}),
    Wrong("counts_answer", "one block whatever `blocks` is",
          edit=("blocks * block", "block"),
          fails={"test_counts": ["residual_mlp_params(", "returned"]}),
    Wrong("counts_answer", "one bias per head instead of one per class",
          edit=(MULTITASK_COUNT, "    return (in_features * hidden + hidden) + sum(hidden * classes + 1 "
                                 "for classes in tasks.values())\n"),
          fails={"test_counts": ["multitask_params(20, 32, {'digit': 10, 'parity': 2}) returned"]}),
    Wrong("counts_answer", "the tied matrix counted twice in parameters()",
          edit=("    return vocab * dim + (dim * dim + dim) + vocab\n",
                "    return 2 * vocab * dim + (dim * dim + dim) + vocab\n"),
          fails={"test_counts": ["tied_lm_params(100, 16) returned 3572",
                                 "TiedLM built with (100, 16) has 1,972 trainable parameters"]}),
    Wrong("counts_answer", "the tied matrix counted once in state_dict()",
          edit=("    return 2 * vocab * dim + (dim * dim + dim) + vocab\n",
                "    return vocab * dim + (dim * dim + dim) + vocab\n"),
          fails={"test_counts": ["tied_lm_saved(100, 16) returned 1972", "has 3,572 state_dict elements"]}),
    Wrong("counts_answer", "the output layer's bias forgotten",
          edit=("    return vocab * dim + (dim * dim + dim) + vocab\n", "    return vocab * dim + (dim * dim + dim)\n"),
          fails={"test_counts": ["tied_lm_params(100, 16) returned 1872"]}),
    Right("counts_answer", "layer by layer, with loops", '''def linear(i, o):
    return i * o + o


def residual_mlp_params(in_features, width, hidden, blocks, out_features):
    total = linear(in_features, width) + 2 * width
    for _ in range(blocks):
        total += linear(width, hidden) + 2 * hidden + linear(hidden, width) + 2 * width
    return total + linear(width, out_features)


def multitask_params(in_features, hidden, tasks):
    total = linear(in_features, hidden)
    for classes in tasks.values():
        total += linear(hidden, classes)
    return total


def tied_lm_params(vocab, dim):
    return vocab * dim + linear(dim, dim) + vocab


def tied_lm_saved(vocab, dim):
    return tied_lm_params(vocab, dim) + vocab * dim
'''),
    Right("counts_answer", "factored formulas", '''def residual_mlp_params(in_features, width, hidden, blocks, out_features):
    return (in_features + 3) * width + blocks * ((2 * width + 3) * hidden + 3 * width) + (width + 1) * out_features


def multitask_params(in_features, hidden, tasks):
    return (in_features + 1) * hidden + (hidden + 1) * sum(tasks.values())


def tied_lm_params(vocab, dim):
    return (dim + 1) * (vocab + dim)


def tied_lm_saved(vocab, dim):
    return (2 * dim + 1) * vocab + dim * (dim + 1)
'''),
]

ANSWERS = ENSEMBLE + MULTITASK + SKIP + STEM + RESIDUAL + COUNTS
