"""A correct answer that saves a checkpoint to a tempfile.NamedTemporaryFile and loads it back, as unit 06 teaches.

where: answer super_answer
answers: reference
stock: 5
"""
import tempfile

with tempfile.NamedTemporaryFile(suffix=".pt") as checkpoint:
    torch.save(SuperNet(20, 64, 10).state_dict(), checkpoint.name)
    SuperNet(20, 64, 10).load_state_dict(torch.load(checkpoint.name))
