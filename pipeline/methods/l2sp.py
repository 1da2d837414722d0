"""L2-SP (Li, Grandvalet, Davoine 2018): keep the backbone near its pretrained weights.

    Omega(theta) = alpha/2 ||theta_body - theta_0||^2 + beta/2 ||theta_head||^2

A regulariser of the method registry (:func:`build`): active when alpha or beta is > 0.
The anchor theta_0 is the backbone only: unlike the reference repo's ``.fc.``
name filter (which misses timm and CLIP head names and so pulls the head toward
its random or LP init), the new head gets plain L2 with its own coefficient.
The penalty's gradient is added to the parameters' gradients after the backward
pass (two foreach passes, no graph, no temporaries); :meth:`L2SP.penalty` gives
the value for logging and for tests against autograd. Memory: +4 B per trainable
backbone parameter for the anchor.
"""
from __future__ import annotations

import torch
from torch import nn


class L2SP:
    """The L2-SP penalty of a model's trainable parameters."""

    def __init__(self, model: nn.Module, alpha: float, beta: float, head: tuple[str, ...]):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.alpha, self.beta = float(alpha), float(beta)
        self.body = [p for n, p in named if n not in head] if self.alpha > 0 else []
        self.head = [p for n, p in named if n in head] if self.beta > 0 else []
        # Taken when the optimizer is built, i.e. from the pretrained (and, for LP-FT, LP) weights.
        self.anchors = [p.detach().clone() for p in self.body]

    def penalty(self) -> torch.Tensor:
        """The value of Omega at the current weights (differentiable)."""
        total = torch.zeros(())
        for p, a in zip(self.body, self.anchors):
            total = total + 0.5 * self.alpha * (p - a).pow(2).sum()
        for p in self.head:
            total = total + 0.5 * self.beta * p.pow(2).sum()
        return total

    @torch.no_grad()
    def after_backward(self) -> None:
        """grad += alpha (theta - theta_0) on the backbone and beta theta on the head."""
        for params, coef in ((self.body, self.alpha), (self.head, self.beta)):
            if not params:
                continue
            for p in params:
                if p.grad is None:   # a parameter the loss did not reach still feels the penalty
                    p.grad = torch.zeros_like(p)
            grads = [p.grad for p in params]
            torch._foreach_add_(grads, params, alpha=coef)
        if self.body:
            torch._foreach_add_([p.grad for p in self.body], self.anchors, alpha=-self.alpha)


def build(model: nn.Module, settings: dict, head: tuple[str, ...]) -> L2SP | None:
    """The L2-SP hook of a run, or None when both coefficients are 0."""
    alpha, beta = float(settings["l2sp_alpha"]), float(settings["l2sp_beta"])
    return L2SP(model, alpha, beta, head) if alpha > 0 or beta > 0 else None
