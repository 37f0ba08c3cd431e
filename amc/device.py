"""Where models run: ``--device cpu``, ``cuda`` or ``cuda:N``.

:func:`check_device_name` checks the spelling only (no torch import: the command lines use it as an
argument type); :func:`resolve_device` also checks that the device exists on this machine, so a
missing GPU is one line naming the option and the fix, not a CUDA traceback.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from amc.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

DEVICE_CHOICES = "cpu, cuda or cuda:N"
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_device_name(device: str) -> str:
    """``device`` when it is spelled ``cpu``, ``cuda`` or ``cuda:N``; else :class:`ConfigError`."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError(f"--device {device!r} is not a device: use {DEVICE_CHOICES}")
    return device


def resolve_device(device: str) -> torch.device:
    """The ``torch.device`` of ``device``, after checking that this machine has it.

    Raises:
        ConfigError: A bad spelling, no CUDA device (a CPU-only PyTorch build, or no GPU visible), or a
            ``cuda:N`` beyond the devices this machine has.
    """
    import torch

    check_device_name(device)
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = ("this PyTorch is a CPU-only build" if torch.version.cuda is None
               else "no CUDA device is visible (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them)")
        raise ConfigError(f"--device {device!r}: {why} (torch {torch.__version__}); use --device cpu, or run on "
                          "a machine with an NVIDIA GPU and a CUDA build of PyTorch")
    count = torch.cuda.device_count()
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise ConfigError(f"--device {device!r}: this machine has {count} CUDA device(s), cuda:0 to "
                          f"cuda:{count - 1}; pick one of them")
    return torch.device(device)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a model without either."""
    import itertools

    import torch

    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device
