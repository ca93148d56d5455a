"""Training and evaluation loaders: `build_train_loader(images, labels, policy=...)`, `build_eval_loader`.

Loaders take canonical uint8 NHWC numpy arrays and yield uint8 NCHW tensors on the device (the
training loop normalises them with runtime.to_model_input), so augmentation stays exact on bytes.

Policies (POLICIES registry; each entry builds a TrainLoader):
  none, standard (random crop from a 4-pixel zero pad + random horizontal flip; crop_pad, pad_mode
      and flip_mode change that, e.g. airbench's 2-pixel reflect pad with alternating flips),
  standard+cutout (DeVries & Taylor: centred anywhere, clipped at the borders),
  standard+cutout-inside (airbench96: the whole square inside the image)
      -> fast.FastTrainLoader: the dataset on the device, augmented in batches, no workers;
  lab (the ECE 590 lab's policy: flips, padded crop, affine, colour jitter in a per-image random
      order, then erasing; see lab.py)
      -> batched.PolicyTrainLoader with lab.LabPolicy: also on the device, in batches, each image
         with its own random parameters;
  lab-albu (the same policy in albumentations), autoaugment, randaugment (torchvision v2)
      -> albu.WorkerTrainLoader: per-sample augmentation in persistent DataLoader workers.
  Measured (shared 2-core AMX Xeon, batch 64, 32x32x3): the policy alone, lab 27.7k img/s on one
  thread vs lab-albu 10.1k in 2 workers; LeNet-5 training, interleaved in one process: none 2294,
  lab 2423, lab-albu 377 img/s (its workers take the cores the training needs).
Epoch order and DDP sharding are shared by both (see loaders.EpochPlan); call
loader.set_epoch(epoch) before every epoch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.augment.albu import WorkerTrainLoader, autoaugment_policy, lab_policy, randaugment_policy
from pipeline.augment.batched import PolicyTrainLoader
from pipeline.augment.fast import FLIP_MODES, FastTrainLoader
from pipeline.augment.lab import LabPolicy
from pipeline.augment.loaders import EvalLoader, TrainLoader
from pipeline.errors import PipelineError
from pipeline.registry import Registry

__all__ = ["POLICIES", "build_train_loader", "build_eval_loader", "TrainLoader", "EvalLoader"]

POLICIES = Registry("augmentation policy")

CROP_PAD = 4


@POLICIES.register("none")
def _none(images, labels, *, cutout, workers, crop, **common) -> TrainLoader:
    return FastTrainLoader(images, labels, **common)


@POLICIES.register("standard")
def _standard(images, labels, *, cutout, workers, crop, **common) -> TrainLoader:
    return FastTrainLoader(images, labels, **_crop_flip(crop), **common)


@POLICIES.register("standard+cutout")
def _standard_cutout(images, labels, *, cutout, workers, crop, **common) -> TrainLoader:
    # 0 means the usual size: half the image side (16 on CIFAR-10, as in DeVries & Taylor).
    size = cutout or images.shape[1] // 2
    return FastTrainLoader(images, labels, cutout=size, **_crop_flip(crop), **common)


@POLICIES.register("standard+cutout-inside")
def _standard_cutout_inside(images, labels, *, cutout, workers, crop, **common) -> TrainLoader:
    size = cutout or images.shape[1] // 2
    return FastTrainLoader(images, labels, cutout=size, cutout_inside=True, **_crop_flip(crop), **common)


def _crop_flip(crop: dict) -> dict:
    # flip_mode "none": the data's labels do not survive a mirror (digits, text); see pipeline.flips
    flip = crop["flip_mode"] != "none"
    return {**crop, "flip": flip, "flip_mode": crop["flip_mode"] if flip else "random"}


@POLICIES.register("lab")
def _lab(images, labels, *, cutout, workers, crop, **common) -> TrainLoader:
    policy = LabPolicy(images.shape[1], images.shape[2], pad=CROP_PAD, hflip=crop["flip_mode"] != "none")
    return PolicyTrainLoader(images, labels, policy, **common)


@POLICIES.register("lab-albu")
def _lab_albu(images, labels, *, cutout, workers, crop, **common) -> TrainLoader:
    augment = lab_policy(images.shape[1], images.shape[2], pad=CROP_PAD, hflip=crop["flip_mode"] != "none")
    return WorkerTrainLoader(images, labels, augment, workers=workers, **common)


@POLICIES.register("autoaugment")
def _autoaugment(images, labels, *, cutout, workers, crop, **common) -> TrainLoader:
    return WorkerTrainLoader(images, labels, autoaugment_policy(), workers=workers, **common)


@POLICIES.register("randaugment")
def _randaugment(images, labels, *, cutout, workers, crop, **common) -> TrainLoader:
    return WorkerTrainLoader(images, labels, randaugment_policy(), workers=workers, **common)


# Policies that honour crop_pad / pad_mode / flip_mode; the others refuse non-default values.
CROP_POLICIES = ("standard", "standard+cutout", "standard+cutout-inside")
CUTOUT_POLICIES = ("standard+cutout", "standard+cutout-inside")


def build_train_loader(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    policy: str = "standard",
    workers: int = 2,
    cutout: int = 0,
    crop_pad: int = CROP_PAD,
    pad_mode: str = "zero",
    flip_mode: str = "random",
    **batching: Any,
) -> TrainLoader:
    """A shuffled, augmented TrainLoader for `policy`.

    batching: the fields of loaders.Batching (batch_size, device, seed, drop_last, rank, world_size),
    passed through to the policy's loader as they are.
    workers: DataLoader processes for the per-sample policies (0 = in this process, for debugging);
    the batched policies ignore it. crop_pad, pad_mode (zero|reflect), flip_mode (random|alternate|none):
    the crop and flip of the standard policies; "none" also takes the mirror out of "lab" and
    "lab-albu". cutout: square size for the cutout policies (0 = half the image side); any other
    policy with cutout > 0 is an error rather than a silently ignored setting.
    """
    build = POLICIES.get(policy)
    if cutout and policy not in CUTOUT_POLICIES:
        raise PipelineError(f"cutout={cutout} is only used by policies {', '.join(CUTOUT_POLICIES)}, not '{policy}'")
    crop = {"pad": crop_pad, "pad_mode": pad_mode, "flip_mode": flip_mode}
    if flip_mode not in (*FLIP_MODES, "none"):
        raise PipelineError(f"unknown flip mode '{flip_mode}'; choose from: {', '.join(FLIP_MODES)}, none")
    # "none" is accepted everywhere (lab drops its mirror; the other policies never flip)
    if policy not in CROP_POLICIES and (crop_pad, pad_mode, flip_mode) not in (
            (CROP_PAD, "zero", "random"), (CROP_PAD, "zero", "none")):
        raise PipelineError(f"crop_pad/pad_mode/flip_mode are used by policies {', '.join(CROP_POLICIES)}, "
                            f"not '{policy}'")
    return build(images, labels, cutout=cutout, workers=workers, crop=crop, **batching)


def build_eval_loader(images: np.ndarray, labels: np.ndarray | None, **options: Any) -> EvalLoader:
    """Unaugmented batches in the data's order (options: EvalLoader's batch_size, device, rank,
    world_size); with world_size > 1 see EvalLoader.indices."""
    return EvalLoader(images, labels, **options)
