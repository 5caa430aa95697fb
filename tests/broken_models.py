"""A corpus of broken models, each with the fix a student should make.

Each entry is (name, factory, example input shape). The grader tests assert that
the right check rejects each one with the right hint.
"""

import torch
import torch.nn.functional as F
from torch import nn

IN, HIDDEN, OUT = 20, 32, 10
EXAMPLE = (8, IN)


def linear_count(*sizes):
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


class GoodMLP(nn.Module):
    def __init__(self, dropout=0.2):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.bn = nn.BatchNorm1d(HIDDEN)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.bn(self.fc1(x)))))


GOOD_COUNT = linear_count(IN, HIDDEN) + 2 * HIDDEN + linear_count(HIDDEN, OUT)


class ListOfLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = [nn.Linear(IN, HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, OUT)]

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class ListBesideRegistered(nn.Module):
    """The list is not the only thing: the optimizer silently skips its layers."""
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(IN, HIDDEN)
        self.blocks = [nn.Linear(HIDDEN, HIDDEN) for _ in range(2)]
        self.out = nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


class DictOfHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(IN, HIDDEN)
        self.heads = {"cls": nn.Linear(HIDDEN, OUT), "reg": nn.Linear(HIDDEN, 1)}

    def forward(self, x):
        h = self.body(x)
        return torch.cat([self.heads["cls"](h), self.heads["reg"](h)], dim=1)


class TupleOfLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair = (nn.Linear(IN, HIDDEN), nn.Linear(HIDDEN, OUT))

    def forward(self, x):
        return self.pair[1](self.pair[0](x))


class LocalLayerInForward(nn.Module):
    """Flavour 1: a local layer in forward is never registered."""
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)

    def forward(self, x):
        fc2 = nn.Linear(HIDDEN, OUT)
        return fc2(self.fc1(x))


class AttributeLayerInForward(nn.Module):
    """Flavour 2: self.fc2 assigned in forward is re-registered on every call."""
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)

    def forward(self, x):
        self.fc2 = nn.Linear(HIDDEN, OUT)
        return self.fc2(self.fc1(x))


class PlainTensorWeight(nn.Module):
    """A learnable scale stored as a plain tensor instead of an nn.Parameter."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN, OUT)
        self.scale = torch.ones(OUT, requires_grad=True)

    def forward(self, x):
        return self.fc(x) * self.scale


class PlainTensorMask(nn.Module):
    """A constant mask stored as a plain tensor instead of a buffer."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN, OUT)
        self.mask = (torch.arange(OUT) % 2).float()

    def forward(self, x):
        return self.fc(x) * self.mask


class TensorMadeInForward(nn.Module):
    """A constant created inside forward on the default device."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN, OUT)

    def forward(self, x):
        return self.fc(x) + torch.ones(OUT)


class ForgottenEval(nn.Module):
    """Overrides train() without passing the mode to its children: eval() never reaches them."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN, HIDDEN)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(HIDDEN, OUT)

    def train(self, mode=True):
        self.training = mode
        return self

    def forward(self, x):
        return self.out(self.drop(self.fc(x)))


class FunctionalDropoutAlwaysOn(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN, OUT)

    def forward(self, x):
        return F.dropout(self.fc(x), p=0.5, training=True)


class DetachedOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        return self.fc2(self.fc1(x).detach())


class NumpyInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN, OUT)

    def forward(self, x):
        return torch.from_numpy(self.fc(x).numpy())


class UnusedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN, OUT)
        self.extra = nn.Linear(OUT, OUT)

    def forward(self, x):
        return self.fc(x)


class FrozenLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, OUT)
        self.fc1.requires_grad_(False)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class SharedWhereTwoMeant(nn.Module):
    """Meant two HIDDEN->HIDDEN layers; reused one."""
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(IN, HIDDEN)
        self.mid1 = nn.Linear(HIDDEN, HIDDEN)
        self.mid2 = self.mid1
        self.out = nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        return self.out(self.mid2(F.relu(self.mid1(F.relu(self.inp(x))))))


class NoSuperInit(nn.Module):
    def __init__(self):
        self.fc = nn.Linear(IN, OUT)

    def forward(self, x):
        return self.fc(x)


class BatchStatsInEval(nn.Module):
    """A BatchNorm-like layer that normalises with the batch's statistics even in eval mode."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN, OUT)
        self.register_buffer("running_mean", torch.zeros(OUT))

    def forward(self, x):
        h = self.fc(x)
        if self.training:
            self.running_mean.mul_(0.9).add_(0.1 * h.mean(0).detach())
        return h - h.mean(0)


class UpdatesStatsInEval(nn.Module):
    """Updates its running mean whatever the mode."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN, OUT)
        self.register_buffer("running_mean", torch.zeros(OUT))

    def forward(self, x):
        h = self.fc(x)
        self.running_mean.mul_(0.9).add_(0.1 * h.mean(0).detach())
        return h - self.running_mean


class InplaceBreaksAutograd(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        h = torch.sigmoid(self.fc1(x))
        h += 1  # sigmoid's backward needs its output unchanged
        return self.fc2(h)


class HookEveryCall(nn.Module):
    """Keeps the hidden activation with a forward hook, registered anew on every call and never removed."""
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, OUT)
        self.features = None

    def _keep(self, module, args, output):
        self.features = output.detach()

    def forward(self, x):
        self.fc1.register_forward_hook(self._keep)
        return self.fc2(F.relu(self.fc1(x)))


class InplaceHook(nn.Module):
    """Caps the hidden activation in a forward hook, in place: ReLU saved that tensor for backward."""
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(HIDDEN, OUT)
        self.act.register_forward_hook(self._cap)

    def _cap(self, module, args, output):
        output.clamp_(max=1.0)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ForwardCalledDirectly(nn.Module):
    """`self.fc1.forward(x)` computes the same values, but fc1's hooks never run."""
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1.forward(x)))


class WeightsUsedDirectly(nn.Module):
    """The layer's weights go through F.linear: same values, but the layer is never called."""
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        return self.fc2(F.relu(F.linear(x, self.fc1.weight, self.fc1.bias)))


class TiedByWeight(nn.Module):
    """Correct: the output layer reuses the embedding's matrix; every layer is called."""
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(OUT, HIDDEN)
        self.fc = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, tokens):
        return F.linear(torch.tanh(self.fc(self.embed(tokens))), self.embed.weight)


class WithAttention(nn.Module):
    """Correct: nn.MultiheadAttention uses its out_proj's weights directly, by design."""
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(HIDDEN, 4, batch_first=True)
        self.fc = nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        out, _ = self.attn(x, x, x)
        return self.fc(out)
