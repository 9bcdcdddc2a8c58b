"""A TorchFunctionMode that makes CUDA-only device mistakes fail on a CPU.

On a GPU, torch refuses a draw whose tensor is not on its generator's device ("Expected
a 'cpu' device type for generator but found 'cuda'") and an op whose tensors sit on two
devices. On a CPU-only machine every generator and tensor is a CPU one, so neither
mistake shows. ``DeviceGuard`` checks what a GPU would, on any device:

- every call given ``generator=`` names its device: a factory (torch.randn, randint,
  rand, randperm, normal, ...) must pass ``device=`` equal to ``generator.device``
  (omitting it means "the CPU", which is wrong for a CUDA generator), and an in-place
  draw (``t.normal_(generator=g)``, ...) must fill a tensor on ``generator.device``;
- with ``same_device=True``, every op's tensor arguments of one or more dimensions sit
  on one device (0-dim tensors may mix, as torch allows): run on the ``meta`` device, a
  tensor created without ``device=`` (a CPU one) shows up.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


class DeviceMismatch(AssertionError):
    pass


class DeviceGuard(TorchFunctionMode):
    def __init__(self, same_device: bool = False):
        super().__init__()
        self.same_device = same_device
        self.draws: list[str] = []  # the calls that passed a generator, by name

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", repr(func))
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator):
            self.draws.append(name)
            target = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if target is not None and name.endswith("_"):  # in place: t.normal_(...)
                where = target.device
            elif "device" in kwargs and kwargs["device"] is not None:
                where = torch.device(kwargs["device"])
            else:
                raise DeviceMismatch(f"{name}(generator=...) without device=")
            if where.type != generator.device.type or (
                where.index is not None
                and generator.device.index is not None
                and where.index != generator.device.index
            ):
                raise DeviceMismatch(
                    f"{name} draws on {where} from a generator on {generator.device}"
                )
        if self.same_device:
            leaves, _ = tree_flatten((args, kwargs))
            devices = {t.device for t in leaves if isinstance(t, torch.Tensor) and t.dim() > 0}
            if len(devices) > 1:
                raise DeviceMismatch(f"{name} mixes tensors on {sorted(map(str, devices))}")
        return func(*args, **kwargs)
