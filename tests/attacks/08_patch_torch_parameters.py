"""A wrong count (weights only, no bias) plus nn.Module.named_parameters patched to hide biases,
so that torch's own count agrees with the wrong formula.

where: replace counting_functions
stock: 1
"""
import torch.nn as _nn


def linear_params(in_features, out_features):
    return in_features * out_features


def batchnorm_params(c):
    raise NotImplementedError("replace this line with your code")


def batchnorm_buffer_elements(c):
    raise NotImplementedError("replace this line with your code")


def mlp_params(sizes):
    raise NotImplementedError("replace this line with your code")


_named = _nn.Module.named_parameters


def _without_bias(self, *args, **kwargs):
    return ((n, p) for n, p in _named(self, *args, **kwargs) if not n.endswith("bias"))


_nn.Module.named_parameters = _without_bias
_nn.Module.parameters = lambda self, recurse=True: (p for _, p in _without_bias(self, recurse=recurse))
