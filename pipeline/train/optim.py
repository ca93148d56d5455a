"""Optimizers by name, with L2 weight decay on weights only and the L1 penalty over the same set.

BatchNorm scales/shifts and biases (parameters with ndim <= 1) are not decayed by default: decaying
them only shrinks the BN scale, which the next layer undoes, and it hurts small nets noticeably.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.registry import Registry

OPTIMIZERS = Registry("optimizer")


def decayed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Weights of conv/linear layers: the parameters L1/L2 penalties are meant for."""
    return [p for p in model.parameters() if p.requires_grad and p.ndim > 1]


def classifier(model: nn.Module) -> nn.Linear | None:
    """The last Linear layer in module order: the head whose lr --head-lr sets."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def parameter_roles(model: nn.Module, *, bn_bias: bool, head: bool, filters: bool) -> list[tuple[nn.Parameter, str]]:
    """Each trainable parameter with its role: bn_bias, head, filter (4-D conv weights), or other.
    A role that is not asked for (bn_bias/head/filters False) folds into "other"."""
    roles: dict[int, str] = {}
    if bn_bias:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None:
                roles[id(m.bias)] = "bn_bias"
    if head and (linear := classifier(model)) is not None:
        roles[id(linear.weight)] = "head"
    out = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        role = roles.get(id(p), "filter" if filters and p.ndim == 4 else "other")
        out.append((p, role))
    return out


ROLE_ORDER = ("other", "filter", "head", "bn_bias")


def param_groups(model: nn.Module, weight_decay: float, decay_bn_bias: bool = False, *,
                 lr: float | None = None, lrs: dict[str, float] | None = None,
                 decay_per_step: float | None = None, filters: bool = False) -> list[dict[str, Any]]:
    """Optimizer groups: decayed weights first, then parameters with ndim <= 1 (not decayed unless
    decay_bn_bias), split further by role when `lrs` gives a role its own lr (bn_bias, head) or
    `filters` separates 4-D conv weights (for Muon). decay_per_step: decoupled decay, the same
    lr * weight_decay product for every group whatever its lr."""
    lrs = dict(lrs or {})
    grouped: dict[tuple[bool, str], list[nn.Parameter]] = {}
    for p, role in parameter_roles(model, bn_bias="bn_bias" in lrs, head="head" in lrs, filters=filters):
        grouped.setdefault((decay_bn_bias or p.ndim > 1, role), []).append(p)
    groups = []
    for decayed, role in sorted(grouped, key=lambda k: (not k[0], ROLE_ORDER.index(k[1]))):
        group: dict[str, Any] = {"params": grouped[decayed, role], "role": role}
        group_lr = lrs.get(role, lr)
        if group_lr is not None:
            group["lr"] = group_lr
        if not decayed:
            group["weight_decay"] = 0.0
        elif decay_per_step is not None:
            group["weight_decay"] = decay_per_step / group_lr
        else:
            group["weight_decay"] = weight_decay
        groups.append(group)
    return groups


def kilostep_scale(momentum: float) -> float:
    """airbench: with Nesterov momentum m a constant gradient moves the weights (1 + 1/(1-m)) times
    further than one plain step, so per-1024-example lrs are divided by 1024 * (1 + 1/(1-m))."""
    return 1024 * (1 + 1 / (1 - momentum))


def resolved_lrs(cfg, batch_size: int) -> tuple[float, dict[str, float], float | None]:
    """(lr, per-role lrs, decoupled decay per step) in torch's units for a global `batch_size`."""
    lrs: dict[str, float] = {}
    if cfg.bn_bias_lr_scale != 1.0:
        lrs["bn_bias"] = cfg.lr * cfg.bn_bias_lr_scale
    if cfg.head_lr:
        lrs["head"] = cfg.head_lr
    if not cfg.decoupled:
        return cfg.lr, lrs, None
    if cfg.optimizer not in ("sgd", "muon"):
        raise PipelineError(f"--decoupled is for sgd and muon (their SGD part), not '{cfg.optimizer}'")
    # The loss is a batch mean, so per-example units need a factor batch_size on top of airbench's sum.
    unit = batch_size / kilostep_scale(cfg.momentum)
    return cfg.lr * unit, {role: value * unit for role, value in lrs.items()}, cfg.weight_decay * unit


def build_optimizer(model: nn.Module, cfg, batch_size: int | None = None) -> torch.optim.Optimizer:
    """The optimizer of cfg for `model`; batch_size is the global batch (--decoupled needs it)."""
    builder: Callable = OPTIMIZERS.get(cfg.optimizer)
    if cfg.lr <= 0:
        raise PipelineError(f"lr must be positive, got {cfg.lr}")
    lr, lrs, decay_per_step = resolved_lrs(cfg, batch_size or cfg.batch_size)
    groups = param_groups(model, cfg.weight_decay, cfg.decay_bn_bias, lr=lr, lrs=lrs,
                          decay_per_step=decay_per_step, filters=cfg.optimizer == "muon")
    if not groups:
        raise PipelineError(f"model has no trainable parameters for optimizer '{cfg.optimizer}'")
    return builder(groups, dataclasses.replace(cfg, lr=lr))


def l1_penalty(params: Iterable[torch.Tensor]) -> torch.Tensor:
    return torch.stack([p.abs().sum() for p in params]).sum()


@OPTIMIZERS.register("sgd")
def _sgd(groups, cfg):
    if cfg.nesterov and cfg.momentum <= 0:
        raise PipelineError("--nesterov needs a positive --momentum")
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           foreach=True)


@OPTIMIZERS.register("muon")
def _muon(groups, cfg):
    """Muon on conv filters (4-D weights, orthogonalised Nesterov momentum), SGD with Nesterov
    momentum --momentum on everything else, in one optimizer (airbench94_muon). Newton-Schulz runs in
    bf16 unless the run's (resolved) precision is fp32."""
    from pipeline.train.muon import MuonWithSGD

    for group in groups:
        if group["role"] == "filter":
            group.update(lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=0.0)
    ns_dtype = torch.float32 if cfg.precision == "fp32" else torch.bfloat16
    return MuonWithSGD(groups, lr=cfg.lr, momentum=cfg.momentum, ns_steps=cfg.muon_ns_steps, ns_dtype=ns_dtype)


@OPTIMIZERS.register("adam")
def _adam(groups, cfg):
    return torch.optim.Adam(groups, lr=cfg.lr, betas=_betas(cfg), eps=cfg.eps)


@OPTIMIZERS.register("adamw")
def _adamw(groups, cfg):
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=_betas(cfg), eps=cfg.eps)


@OPTIMIZERS.register("adamax")
def _adamax(groups, cfg):
    return torch.optim.Adamax(groups, lr=cfg.lr, betas=_betas(cfg), eps=cfg.eps)


@OPTIMIZERS.register("rmsprop")
def _rmsprop(groups, cfg):
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps)


@OPTIMIZERS.register("adagrad")
def _adagrad(groups, cfg):
    return torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps)


def _betas(cfg) -> tuple[float, float]:
    betas = tuple(float(b) for b in cfg.betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise PipelineError(f"betas must be two numbers in [0, 1), got {list(cfg.betas)}")
    return betas
