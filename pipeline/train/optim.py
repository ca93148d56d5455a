"""Optimizers by name, with L2 weight decay on weights only and the L1 penalty over the same set.

BatchNorm scales/shifts and biases (parameters with ndim <= 1) are not decayed by default: decaying
them only shrinks the BN scale, which the next layer undoes, and it hurts small nets noticeably.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.registry import Registry

OPTIMIZERS = Registry("optimizer")


def decayed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Weights of conv/linear layers: the parameters L1/L2 penalties are meant for."""
    return [p for p in model.parameters() if p.requires_grad and p.ndim > 1]


def param_groups(model: nn.Module, weight_decay: float, decay_bn_bias: bool = False) -> list[dict[str, Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_bn_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": no_decay, "weight_decay": 0.0}) if g["params"]]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    builder: Callable = OPTIMIZERS.get(cfg.optimizer)
    if cfg.lr <= 0:
        raise PipelineError(f"lr must be positive, got {cfg.lr}")
    return builder(param_groups(model, cfg.weight_decay, cfg.decay_bn_bias), cfg)


def l1_penalty(params: Iterable[torch.Tensor]) -> torch.Tensor:
    return torch.stack([p.abs().sum() for p in params]).sum()


@OPTIMIZERS.register("sgd")
def _sgd(groups, cfg):
    if cfg.nesterov and cfg.momentum <= 0:
        raise PipelineError("--nesterov needs a positive --momentum")
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


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
