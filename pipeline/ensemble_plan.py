"""The runs of an ensemble that fit a total training budget on this machine, chosen for diversity.

A blend gains most from members that err differently: another architecture before another seed of
the same one. From the leaderboard records (pipeline/records.py) each recipe has an expected
accuracy at its own epoch count (any machine) and an expected training time here (this machine's
runs, else no plan for it). plan() takes the most accurate recipe that fits first, then each time
the most accurate recipe of an architecture not yet in the blend, and only when no new architecture
fits, another seed of the most accurate recipe that does, until no run fits what is left.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.train.recipe_auto import accuracy_curve, expected_acc, time_from_records


@dataclass(frozen=True)
class Member:
    config: str
    model: str
    epochs: float
    seed: int
    acc: float  # expected val accuracy with TTA, from the records
    seconds: float  # expected training seconds here

    def spec(self) -> str:
        """The leaderboard's CONFIG@EPOCHS form (one seed each: the member's own)."""
        return f"{self.config}@{self.epochs:g}"


def candidates(records: list[dict[str, Any]], machine_id: str, images: int) -> list[Member]:
    """One member per recipe measured on this machine, at its most accurate measured epoch count."""
    runs = [r for r in records if r.get("kind") != "ensemble" and r.get("config")]
    found = []
    for config in sorted({r["config"] for r in runs}):
        here = [r for r in runs if r["config"] == config and r["machine_id"] == machine_id]
        timing = time_from_records(here)
        curve = accuracy_curve(runs, config)
        if timing is None or not curve:
            continue
        epochs = max(curve, key=lambda point: point[1])[0]
        model = next((r.get("model") for r in here if r.get("model")), None) or Path(config).stem
        found.append(Member(config, model, epochs, 0, expected_acc(curve, epochs), timing.seconds(epochs, images)))
    return found


def plan(records: list[dict[str, Any]], machine_id: str, budget_s: float, images: int,
         root: str | Path = "results/leaderboard") -> list[Member]:
    """The members, in the order chosen, whose expected training seconds sum to at most budget_s."""
    pool = candidates(records, machine_id, images)
    if not pool:
        raise PipelineError(f"ensemble plan: no recipe with records of this machine in {root}/ "
                            "(`make leaderboard` writes them)")
    chosen: list[Member] = []
    left = budget_s
    while True:
        fits = [m for m in pool if m.seconds <= left]
        if not fits:
            break
        models = {m.model for m in chosen}
        fresh = [m for m in fits if m.model not in models]
        pick = max(fresh or fits, key=lambda m: (m.acc, -m.seconds))
        seed = sum(1 for m in chosen if m.config == pick.config)
        chosen.append(Member(pick.config, pick.model, pick.epochs, seed, pick.acc, pick.seconds))
        left -= pick.seconds
    if not chosen:
        cheapest = min(pool, key=lambda m: m.seconds)
        raise PipelineError(f"ensemble plan: no run fits {budget_s:g} s here (the cheapest, "
                            f"{Path(cheapest.config).stem}, needs ~{cheapest.seconds:.0f} s)")
    return chosen
