"""Whether a horizontal flip keeps an image's label, decided once per dataset and obeyed by every stage.

A mirrored cat is a cat, a mirrored shirt a shirt; a mirrored 3 is an "E" and a mirrored "b" a "d".
The data stage records the answer in meta.json (`flip_safe`, `flip_why`): from --flip/--no-flip if
given, else from the competition's name, else from its class names. Training's default flip mode
and predict's default TTA level follow it; an explicit choice still wins, with a warning when it
mirrors data marked not flip-safe. meta.json files written before this field existed count as
flip-safe (what every stage assumed then).
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Iterable

log = logging.getLogger(__name__)

# Patterns on the competition's names (competition, source format, Kaggle slug, source file), tried
# in order; the first that matches decides. "fashion" comes before "mnist": Fashion-MNIST is clothing.
NAME_RULES: tuple[tuple[str, bool, str], ...] = (
    (r"fashion|cloth|apparel", True, "clothing keeps its label when mirrored"),
    (r"mnist|digit|svhn|letter|handwrit|kanji|hanzi|alphabet|captcha|\bocr\b|\bchar(acter)?s?\b|\btext\b"
     r"|\bsigns?\b", False, "digits, characters and signs change meaning when mirrored"),
    (r"cifar|stl-?10|imagenet|flower|food|bird|animal|plant|leaf|scene|\bpets?\b|\bcats?\b|\bdogs?\b",
     True, "natural images keep their label when mirrored"),
)
UNKNOWN_WHY = "no rule matched: assumed, as for most photographs; pass --no-flip if a mirror changes the label"


def decide(override: bool | None, names: Iterable[str], classes: Iterable[str]) -> tuple[bool, str]:
    """(flip_safe, why) for a dataset."""
    if override is not None:
        return override, "--flip" if override else "--no-flip"
    text = " ".join(str(n).lower() for n in names if n)
    for pattern, safe, why in NAME_RULES:
        match = re.search(pattern, text)
        if match:
            return safe, f"'{match.group(0)}' in its name: {why}"
    classes = [str(c) for c in classes]
    if classes and all(len(c) == 1 and c.isalnum() for c in classes):
        return False, "its classes are single digits or letters, which change meaning when mirrored"
    return True, UNKNOWN_WHY


def flip_safe(meta: dict[str, Any]) -> bool:
    return bool(meta.get("flip_safe", True))


def where(meta: dict[str, Any]) -> str:
    why = meta.get("flip_why")
    return f"meta.json of '{meta.get('competition')}' marks horizontal flips as not label-preserving" + (
        f" ({why})" if why else "")


# -- train -----------------------------------------------------------------------------------------

# Policies that mirror images, and through which setting; the others never flip.
FLIPPING_POLICIES = ("standard", "standard+cutout", "standard+cutout-inside", "lab", "lab-albu")


def resolve_train(cfg, meta: dict[str, Any]):
    """cfg (a TrainConfig) with flip_mode resolved, so the saved config.yaml says what ran."""
    return dataclasses.replace(cfg, flip_mode=train_flip_mode(cfg.flip_mode, cfg.augment, meta))


def train_flip_mode(flip_mode: str, policy: str, meta: dict[str, Any]) -> str:
    """The flip mode a run uses: "auto" follows meta.json (random if flip-safe, else none); an
    explicit random/alternate is kept, with a warning when the data is marked not flip-safe."""
    if flip_mode == "auto":
        return "random" if flip_safe(meta) else "none"
    if flip_mode != "none" and policy in FLIPPING_POLICIES and not flip_safe(meta):
        log.warning("training with horizontal flips (--flip-mode %s, --augment %s) although the %s; "
                    "--flip-mode none or auto turns them off", flip_mode, policy, where(meta))
    return flip_mode


# -- predict ---------------------------------------------------------------------------------------

def default_tta(meta: dict[str, Any]) -> list[str]:
    """Predict's TTA when none is asked for: a mirror view only where mirrors keep labels."""
    return ["flip"] if flip_safe(meta) else ["none"]


def check_tta(mirroring: list[str], meta: dict[str, Any]) -> None:
    """One warning when explicitly chosen TTA levels (those given) average in mirrored views of
    data marked not flip-safe."""
    if mirroring and not flip_safe(meta):
        log.warning("TTA %s averages mirrored images although the %s; --tta none avoids that",
                    ", ".join(mirroring), where(meta))
