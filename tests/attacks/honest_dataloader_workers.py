"""A correct answer cell that first loads batches with a DataLoader and two worker processes.

where: prepend super_answer
answers: reference
needs: processes
stock: 5
"""
from torch.utils.data import DataLoader, TensorDataset

batches = [x for (x,) in DataLoader(TensorDataset(torch.randn(8, 20)), batch_size=4, num_workers=2)]
assert len(batches) == 2
