"""Muon for conv filters beside SGD for the rest, as one torch optimizer (airbench94_muon).

Muon (K. Jordan et al. 2024) replaces a weight matrix's Nesterov-momentum update by its nearest
semi-orthogonal matrix, computed with a few Newton-Schulz iterations. A conv filter bank
(out, in, kh, kw) is orthogonalised as the (out, in*kh*kw) matrix it is a view of; torch.optim.Muon
takes only 2-D parameters, which is why this is our own. As in airbench94_muon, each Muon step
first rescales the filter bank to norm sqrt(out) (so the fixed-size orthogonal update keeps a
fixed relative size) and the iteration runs in bfloat16 (airbench's GPU choice), or in float32
for a run the probe found fastest in fp32: there bf16 matmuls are the slow path, and the
orthogonalised update is only an approximation anyway.

Groups whose "role" is "filter" get the Muon update; every other group is plain SGD with Nesterov
momentum and (coupled) weight decay, step for step as torch.optim.SGD(nesterov=True). One
optimizer means one LambdaLR schedules every group and one state_dict checkpoints it.
"""
from __future__ import annotations

import torch

# Quintic Newton-Schulz coefficients chosen (by Muon's authors) to maximise the slope at zero:
# the iteration then maps singular values into roughly [0.5, 1.5] within a few steps instead of
# converging exactly to 1, which trains as well as the exact orthogonal factor.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalise(matrix: torch.Tensor, steps: int, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximately U V^T of matrix = U S V^T, by `steps` quintic Newton-Schulz iterations in `dtype`."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(dtype)
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1: inside the iteration's basin
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T  # iterate on the smaller Gram matrix
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class MuonWithSGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float, ns_steps: int = 3, weight_decay: float = 0.0,
                 ns_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, weight_decay=weight_decay,
                                      role="other"))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["role"] == "filter":
                self._muon_group(group)
            else:
                self._sgd_group(group)
        return loss

    def _momentum(self, p: torch.Tensor, grad: torch.Tensor, momentum: float) -> torch.Tensor:
        """Nesterov: buf = m*buf + g (buf = g on the first step), update = g + m*buf."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = grad.clone()
        else:
            state["momentum_buffer"].mul_(momentum).add_(grad)
        return grad.add(state["momentum_buffer"], alpha=momentum)

    def _muon_group(self, group: dict) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            update = self._momentum(p, p.grad, group["momentum"])
            p.mul_(p.shape[0] ** 0.5 / p.norm().clamp_min(1e-12))
            flat = orthogonalise(update.reshape(p.shape[0], -1), group["ns_steps"], dtype=self.ns_dtype)
            p.add_(flat.view(p.shape).to(p.dtype), alpha=-group["lr"])

    def _sgd_group(self, group: dict) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            if group["weight_decay"]:
                grad = grad.add(p, alpha=group["weight_decay"])
            p.add_(self._momentum(p, grad, group["momentum"]), alpha=-group["lr"])
