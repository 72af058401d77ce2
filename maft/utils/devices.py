"""The ``--device`` / ``device=`` check shared by the entry points: a clear ValueError, before any model is
built, for a device name torch does not know or a device this machine does not have."""
from __future__ import annotations

import torch

AVAILABLE = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available()}


def check_device(name: str | torch.device, what: str = "--device") -> torch.device:
    """``name`` as a torch.device once it is known to exist here; ValueError naming ``what`` otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{what} {str(name)!r} is not a device name (use cpu, cuda, cuda:N or mps; {error})") from None
    if device.type == "cpu":
        return device
    available = AVAILABLE.get(device.type)
    if available is None or not available():
        raise ValueError(f"{what} {str(name)!r}: no {device.type} device is available on this machine "
                         "(use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{what} {str(name)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
