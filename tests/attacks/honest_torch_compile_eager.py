"""A correct SuperNet whose forward calls a function decorated with @torch.compile (backend eager).

where: replace super_answer
answers: reference
stock: 5
"""
@torch.compile(backend="eager")
def activation(x):
    return torch.relu(x)


class SuperNet(nn.Module):
    def __init__(self, in_features, hidden, out_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x):
        return self.fc2(activation(self.fc1(x)))
