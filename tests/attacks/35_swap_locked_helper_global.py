"""A wrong mlp_params (always 0) plus `nn` rebound to a look-alike whose Sequential holds no parameters: the locked
helper linear_stack, which builds the test's reference model, then builds an empty one, whose count agrees.

where: replace counting_functions
stock: 1
"""
import torch as _torch


class _LookAlike:
    """torch.nn, except that a Sequential of layers has no parameters."""

    def __getattr__(self, name):
        return getattr(_torch.nn, name)

    @staticmethod
    def Sequential(*layers):
        return _torch.nn.Sequential()


nn = _LookAlike()


def mlp_params(sizes):
    return 0
