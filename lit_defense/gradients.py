"""Input gradients that never fail.

The one autograd helper the attacks, the checklist and the training modules share (it lives below
all of them, so none imports another for it).
"""

from __future__ import annotations

import torch


def input_gradient(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``d loss / d x``, with zeros where the model gives none.

    A forward pass computed outside autograd (e.g. JPEG) or one that ignores ``x`` has no
    gradient, which attacks see as zero. Only ``x``'s gradient is taken (``torch.autograd.grad``):
    parameter ``.grad`` fields and DDP hooks are untouched.
    """
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
        if grad is not None:
            return grad
    return torch.zeros_like(x)
