"""TrainConfig: every knob of a training run, as plain values (defaults < YAML < CLI flags).

The `help` metadata of each field becomes the help text of its CLI flag (pipeline/cli_config.py), so the
flag list and this dataclass cannot drift apart. `resumable=True` marks the fields --resume (and
--extend) may change: where and how fast the run goes, not what it learns; any other difference
makes it another experiment (RESUME_MAY_CHANGE, read by train/resume.py and train/run_folder.py).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from pipeline.cli_config import setting as _opt
from pipeline.config import check_fields
from pipeline.errors import PipelineError


# The registries that build these are the lists of their names; read when a flag or value needs them.
def _optimizers():
    from pipeline.train.optim import OPTIMIZERS
    return OPTIMIZERS


def _schedules():
    from pipeline.train.schedules import SCHEDULES
    return SCHEDULES


def _policies():
    from pipeline.augment import POLICIES
    return POLICIES


def _pad_modes():
    from pipeline.augment.fast import PAD_MODES
    return PAD_MODES


def _flip_modes():
    from pipeline.augment.fast import FLIP_MODES
    return ["auto", *FLIP_MODES, "none"]


def _precisions():
    from pipeline.runtime import PRECISIONS
    return ["auto", *PRECISIONS]


@dataclass
class TrainConfig:
    # what to train on, and what
    data: str = _opt("data/digits", "Prepared data folder (written by `pipeline data`).", resumable=True)
    competition: Optional[str] = _opt(None, "Expected competition name; checked against meta.json.")
    model: str = _opt("resnet20", "Registered model name, or timm:<name>.")
    model_opts: dict = _opt({}, "Model options (CLI: --model-opt key=value, repeatable).")
    run: Optional[str] = _opt(None, "Run name; default <competition>-<model>.", resumable=True)
    out_dir: str = _opt("checkpoints", "Folder that holds one sub-folder per run.", resumable=True)
    # length and batches
    epochs: float = _opt(30, "Number of epochs; a fraction ends the schedule inside the last epoch (9.9).",
                         resumable=True)
    batch_size: int = _opt(128, "Training batch size per process.")
    eval_batch_size: int = _opt(512, "Validation batch size.", resumable=True)
    micro_batch_size: int = _opt(0, "Run each batch's forward/backward in slices of this many images and "
                                    "accumulate their gradients (0 = whole batch): the same step in less "
                                    "memory; BatchNorm then normalises each slice separately.")
    # optimizer
    optimizer: str = _opt("sgd", "Optimizer (muon: Muon on the conv filters, sgd on the rest).", choices=_optimizers)
    lr: float = _opt(0.1, "Peak learning rate.")
    momentum: float = _opt(0.9, "Momentum (sgd, rmsprop).")
    nesterov: bool = _opt(False, "Nesterov momentum (sgd).")
    betas: list = _opt([0.9, 0.999], "Adam-family betas (CLI: 0.9,0.999).")
    eps: float = _opt(1e-8, "Adam/RMSprop/Adagrad epsilon.")
    weight_decay: float = _opt(5e-4, "L2 weight decay (torch's coefficient: Keras l2(k) is 2k here; "
                                     "per 1024 examples with --decoupled).")
    decoupled: bool = _opt(False, "sgd: --lr and --weight-decay are per 1024 examples, decoupled as in airbench: "
                                  "the step size does not depend on batch size or momentum, the decay per step "
                                  "not on the lr (torch lr = lr*batch/(1024*(1+1/(1-momentum)))).")
    bn_bias_lr_scale: float = _opt(1.0, "Learning-rate multiplier for BatchNorm biases (airbench: 64).")
    head_lr: float = _opt(0.0, "Learning rate of the classifier (the last Linear layer); 0 = --lr.")
    muon_lr: float = _opt(0.24, "optimizer muon: learning rate of the conv filters (Muon's own scale).")
    muon_momentum: float = _opt(0.6, "optimizer muon: Nesterov momentum of the conv filters.")
    muon_ns_steps: int = _opt(3, "optimizer muon: Newton-Schulz iterations per step.")
    decay_bn_bias: bool = _opt(False, "Also decay BatchNorm and bias parameters (excluded by default).")
    l1: float = _opt(0.0, "L1 penalty lambda * sum|w| added to the loss (weights only).")
    # learning-rate schedule, stepped every iteration
    schedule: str = _opt("onecycle", "LR schedule.", choices=_schedules)
    warmup_epochs: float = _opt(0.0, "Linear warmup (epochs, may be fractional) before any schedule.")
    pct_start: float = _opt(0.25, "onecycle/triangle: fraction of training spent rising to the peak lr.")
    lr_start_factor: float = _opt(0.2, "triangle: lr at the first step, as a fraction of --lr.")
    lr_end_factor: float = _opt(0.07, "triangle: lr at the last step, as a fraction of --lr.")
    milestones: list = _opt([0.5, 0.75], "multistep: fractions of training where lr is x gamma (CLI: 0.5,0.75).")
    gamma: float = _opt(0.1, "step/multistep: lr factor per decay; exponential: factor per epoch.")
    step_epochs: float = _opt(10.0, "step: decay every this many epochs.")
    min_lr: float = _opt(0.0, "cosine/onecycle: final learning rate.")
    # loss and regularisation
    label_smoothing: float = _opt(0.0, "Label smoothing of the cross entropy.")
    mixup: float = _opt(0.0, "Mixup alpha (0 = off).")
    cutmix: float = _opt(0.0, "CutMix alpha (0 = off).")
    ema: float = _opt(0.0, "EMA decay of the weights (0 = off, e.g. 0.999); best.pt then follows the EMA.")
    lookahead: bool = _opt(False, "Lookahead-style EMA (airbench): every --lookahead-every steps the weights are "
                                  "averaged into an EMA and the EMA is copied back; the decay warms up as "
                                  "decay**every * (step/total)**pow.")
    lookahead_every: int = _opt(5, "lookahead: steps between averages.")
    lookahead_start_epochs: float = _opt(3.0, "lookahead: epochs before the first average.")
    lookahead_decay: float = _opt(0.95, "lookahead: per-step decay base.")
    lookahead_pow: float = _opt(3.0, "lookahead: power of the decay warm-up.")
    # initialisation
    dirac_init: bool = _opt(False, "Start every conv as an identity on its first in_channels filters.")
    whiten_init: bool = _opt(False, "Set the first conv (2*C*k*k filters) to a whitening of the training "
                                    "images' patches, frozen (airbench).")
    whiten_images: int = _opt(5000, "whiten_init: how many training images the patch covariance uses.")
    whiten_bias_epochs: float = _opt(0.0, "whiten_init: train the whitening conv's bias for this many epochs, "
                                          "then freeze it (0 = train it throughout).")
    grad_clip: float = _opt(0.0, "Clip the gradient norm to this value (0 = off).")
    early_stop_patience: int = _opt(0, "Stop after this many epochs without a better val accuracy (0 = off).",
                                    resumable=True)
    # augmentation
    augment: str = _opt("standard", "Augmentation policy: none; standard (random crop + horizontal flip); "
                                    "standard+cutout (DeVries: clipped at the borders); standard+cutout-inside "
                                    "(airbench96: the square wholly inside); lab (the ECE 590 lab policy: "
                                    "flips, padded crop, affine, "
                                    "color jitter in a per-image random order, then erasing; batched on the "
                                    "device); lab-albu (the same policy per image in albumentations "
                                    "workers); autoaugment (CIFAR-10 policy); randaugment (N=2, M=9).",
                         choices=_policies)
    cutout: int = _opt(0, "Cutout square size for the cutout policies (0 = half the image side).")
    crop_pad: int = _opt(4, "standard policies: random-crop padding in pixels (translate by up to this).")
    pad_mode: str = _opt("zero", "standard policies: crop padding fill.", choices=_pad_modes)
    flip_mode: str = _opt("auto", "Horizontal flips: auto (random where the data's meta.json says flips keep "
                                  "labels, else none: no mirrored digits), random (each image, each epoch), "
                                  "alternate (each image flipped on every other epoch, airbench; standard "
                                  "policies only) or none.", choices=_flip_modes)
    # speed
    precision: str = _opt("auto", "Autocast precision: auto (the fastest, measured by the probe on this "
                                  "machine), bf16, fp16 (CUDA only) or fp32.", choices=_precisions, resumable=True)
    channels_last: Optional[bool] = _opt(None, "channels_last memory format for model and inputs; unset = auto "
                                               "(measured by the probe).", resumable=True)
    compile: Optional[bool] = _opt(None, "torch.compile the model; unset = auto (probed only where a compile, "
                                         "as last timed on this machine, fits the probe's allowance).", resumable=True)
    probe: bool = _opt(True, "Settle the auto values above by timing a few real steps of each candidate "
                             "(<= 10 s or 2% of the run, cached per machine); --no-probe takes fp32 on CPU "
                             "(bf16/fp16 on CUDA), channels_last, no compile.", resumable=True)
    time_budget: float = _opt(0.0, "Train for this many seconds in all (0 = off): the epochs are planned from "
                                   "the measured speed; a run that falls behind ends its schedule sooner.",
                          resumable=True)
    recipe: str = _opt("none", "auto: with --time-budget, train the recipe (config) and epoch count expected to "
                               "score highest within the budget on this machine, from the leaderboard records "
                               "in --records (none: the config and flags given).", choices=("none", "auto"))
    records: str = _opt("results/leaderboard", "Folder of leaderboard records (<machine>/<run>.json) that "
                                               "--recipe auto plans from.", resumable=True)
    recipe_note: str = _opt("", "Written by --recipe auto: what it picked and why.", hidden=True, resumable=True)
    recipe_max_epochs: float = _opt(0.0, "Written by --recipe auto: the most epochs the chosen recipe's records "
                                         "measured (a run ahead of its plan may stretch to them, never past).",
                                    hidden=True, resumable=True)
    workers: int = _opt(2, "Data-loader worker processes.", resumable=True)
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N.", resumable=True)
    final_fit: bool = _opt(False, "Train on every labelled image (train + val split): the last fit before a "
                                  "submission. Val accuracy is then measured on training images.")
    # reproducibility and bookkeeping
    seed: int = _opt(0, "Seeds python, numpy, torch and the loader workers.")
    deterministic: bool = _opt(False, "Deterministic algorithms only (slower on GPU).", resumable=True)
    save_every: int = _opt(0, "Also keep epoch_<N>.pt every this many epochs (0 = off).", resumable=True)
    resume: bool = _opt(False, "Continue the run from its last.pt.", resumable=True)
    overwrite: bool = _opt(False, "Start the run afresh even if its folder holds checkpoints.", resumable=True)
    replace: bool = _opt(False, "Retrain an existing run into a staging folder beside it that takes the run's "
                                "place only when training completes (the earlier run stays whole until then; "
                                "what `make train` uses).", resumable=True)
    extend: bool = _opt(False, "With --replace: if the existing run differs only by a smaller --epochs, continue it "
                               "from last.pt instead (the lr schedule is rebuilt for the new length).", resumable=True)
    log_every: int = _opt(20, "Refresh the progress bar (and check the loss is finite) every N steps.", resumable=True)


RESUME_MAY_CHANGE = frozenset(f.name for f in fields(TrainConfig) if f.metadata.get("resumable"))


def check_config(cfg: TrainConfig) -> None:
    """Unknown names and out-of-range values as one-line errors before any data is read."""
    check_fields(cfg)  # the choices declared on the fields, from the registries that build them
    rules = [
        ("epochs", cfg.epochs > 0, "positive"),
        ("batch_size", cfg.batch_size >= 1, "at least 1"),
        ("eval_batch_size", cfg.eval_batch_size >= 1, "at least 1"),
        ("micro_batch_size", cfg.micro_batch_size >= 0, "0 (whole batch) or a slice size"),
        ("lr", cfg.lr > 0, "positive"),
        ("weight_decay", cfg.weight_decay >= 0, "non-negative"),
        ("l1", cfg.l1 >= 0, "non-negative"),
        ("min_lr", 0 <= cfg.min_lr <= cfg.lr, "between 0 and --lr"),
        ("warmup_epochs", 0 <= cfg.warmup_epochs <= cfg.epochs, "between 0 and --epochs"),
        ("bn_bias_lr_scale", cfg.bn_bias_lr_scale > 0, "positive"),
        ("head_lr", cfg.head_lr >= 0, "non-negative (0 = --lr)"),
        ("muon_lr", cfg.muon_lr > 0, "positive"),
        ("muon_momentum", 0 <= cfg.muon_momentum < 1, "in [0, 1)"),
        ("muon_ns_steps", cfg.muon_ns_steps >= 1, "at least 1"),
        ("lr_start_factor", cfg.lr_start_factor >= 0, "non-negative"),
        ("lr_end_factor", cfg.lr_end_factor >= 0, "non-negative"),
        ("lookahead_every", cfg.lookahead_every >= 1, "at least 1"),
        ("lookahead_start_epochs", cfg.lookahead_start_epochs >= 0, "non-negative"),
        ("lookahead_decay", 0 < cfg.lookahead_decay <= 1, "in (0, 1]"),
        ("lookahead_pow", cfg.lookahead_pow >= 0, "non-negative"),
        ("whiten_images", cfg.whiten_images >= 1, "at least 1"),
        ("whiten_bias_epochs", cfg.whiten_bias_epochs >= 0, "non-negative"),
        ("crop_pad", cfg.crop_pad >= 0, "non-negative"),
        ("label_smoothing", 0 <= cfg.label_smoothing < 1, "in [0, 1)"),
        ("mixup", cfg.mixup >= 0, "non-negative"),
        ("cutmix", cfg.cutmix >= 0, "non-negative"),
        ("ema", 0 <= cfg.ema < 1, "0 (off) or a decay in (0, 1)"),
        ("grad_clip", cfg.grad_clip >= 0, "non-negative"),
        ("early_stop_patience", cfg.early_stop_patience >= 0, "non-negative"),
        ("save_every", cfg.save_every >= 0, "non-negative"),
        ("workers", cfg.workers >= 0, "non-negative"),
        ("log_every", cfg.log_every >= 1, "at least 1"),
        ("time_budget", cfg.time_budget >= 0, "0 (off) or seconds"),
        ("seed", cfg.seed >= 0, "non-negative"),
    ]
    for name, ok, expected in rules:
        if not ok:
            raise PipelineError(f"--{name.replace('_', '-')} must be {expected}, got {getattr(cfg, name)}")
    if cfg.resume and (cfg.overwrite or cfg.replace):
        raise PipelineError(f"--resume and --{'overwrite' if cfg.overwrite else 'replace'} contradict each other; "
                            "pick one")
