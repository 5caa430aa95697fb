"""Which devices the checks run on: the device matrix."""

import os

import torch

ENV_VAR = "GRADER_DEVICES"


def selected() -> list[torch.device]:
    """The devices every check runs on.

    By default: cpu, plus cuda when torch can see a GPU. ``GRADER_DEVICES=cpu,cuda``
    forces a set and fails loudly when a device in it is missing, so a CUDA runner
    can never skip CUDA in silence.
    """
    spec = os.environ.get(ENV_VAR, "").strip()
    if not spec:
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    devices = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"{ENV_VAR}={spec!r}: {name!r} is not a torch device; use names such as cpu, cuda or cuda:1") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"{ENV_VAR}={spec!r}: the grader runs on cpu and cuda, not {device.type}")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"{ENV_VAR}={spec!r} asks for {name}, but torch.cuda.is_available() is False "
                    f"(torch {torch.__version__}): this runner has no usable GPU"
                )
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise RuntimeError(f"{ENV_VAR}={spec!r} asks for {name}, but only {torch.cuda.device_count()} GPU(s) are visible")
        if device not in devices:
            devices.append(device)
    if not devices:
        raise ValueError(f"{ENV_VAR}={spec!r} names no device")
    return devices


def label(devices: list[torch.device]) -> str:
    """'cpu, cuda' for a verdict line."""
    return ", ".join(str(d) for d in devices)
