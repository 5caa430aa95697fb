"""A correct answer cell that first tries out @torch.compile with its default backend, inductor, which starts
compiler processes and writes a cache.

where: prepend super_answer
answers: reference
needs: processes
stock: 5
"""
@torch.compile
def doubled(x):
    return 2 * x


assert torch.equal(doubled(torch.ones(3)), torch.full((3,), 2.0))
