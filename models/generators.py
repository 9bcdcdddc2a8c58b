"""Where a random draw is made: on its generator's device."""

from __future__ import annotations

import torch


def generator_device(generator: torch.Generator | None) -> torch.device:
    """Where a draw from ``generator`` must be made: its own device (torch refuses a CUDA
    generator for a CPU tensor and vice versa); the CPU for the global generator."""
    return torch.device("cpu") if generator is None else generator.device
