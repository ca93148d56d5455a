"""The README's GPU block, drawn from a device-check JSON alone, between its markers.

From a GPU run: the airbench94 target's verdict, every recipe's accuracies and training seconds,
the throughput of each precision/layout/compile variant, the cuda tests' counts and any step the
budget skipped. From a CPU run (the tiny path): "not measured on a GPU" and what that path checked.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from pipeline.artifacts import write_between_markers
from pipeline.info import markdown_table

START, END = "<!-- device-check:start -->", "<!-- device-check:end -->"
TRAIN_S_NOTE = ("training seconds are the sum of each run's per-epoch `seconds` in metrics.jsonl (training "
                "steps plus that epoch's val pass; process start, data loading, the probe and the whitening "
                "init are outside it)")


def replace_block(readme: Path, block: str) -> None:
    write_between_markers(readme, START, END, block)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def recipe_runs(result: dict) -> dict[str, list[dict]]:
    """config -> the records of its runs that finished, in step order."""
    found: dict[str, list[dict]] = {}
    for record in result["steps"].values():
        if record.get("status") == "ok" and "config" in record:
            found.setdefault(record["config"], []).append(record)
    return found


def recipe_rows(result: dict) -> list[list[str]]:
    rows = []
    for config, runs in recipe_runs(result).items():
        def mean(key: str, level: str | None = None):
            values = [r[key][level] if level else r[key] for r in runs]
            return statistics.fmean(values) if values else None

        best = max(runs[0]["tta_val_acc"], key=lambda level: mean("tta_val_acc", level))
        choice = runs[0]["speed_choice"]
        rows.append([Path(config).stem, f"{runs[0]['epochs']:g}", ", ".join(str(r["seed"]) for r in runs),
                     pct(mean("tta_val_acc", "none")), f"{pct(mean('tta_val_acc', best))} ({best})",
                     f"{mean('train_s'):.2f}", f"{mean('train_img_per_s'):,.0f}",
                     f"{choice['precision']}{', channels_last' if choice['channels_last'] else ''}"
                     f"{', compile' if choice['compile'] else ''}"])
    return rows


def throughput_table(result: dict) -> str:
    record = result["steps"].get("throughput", {})
    if record.get("status") != "ok":
        return ""
    rows = [[name.replace("_", " "), f"{row['img_per_s']:,.0f}", f"{row['compile_s']:.0f}" if "compile_s" in row
             else "-"] for name, row in record["variants"].items()]
    return (f"ResNet-20 training throughput (bench/run.py's loop, batch {record['batch_size']}):\n\n"
            + markdown_table(["variant", "img/s", "compile s"], rows) + "\n")


def cuda_line(result: dict) -> str:
    record = result["steps"].get("cuda-tests", {})
    if "tests" not in record:
        return f"CUDA tests: {record.get('status', 'not run')}" + (f" ({record['reason']})" if "reason" in record
                                                                  else "") + "."
    return (f"CUDA tests (pytest -m cuda): {record['passed']} passed, {record['failed']} failed, "
            f"{record['errors']} errors, {record['skipped']} skipped.")


def not_done(result: dict) -> list[str]:
    return [f"- {name}: {r['status']} ({r.get('reason', '')})" for name, r in result["steps"].items()
            if r["status"] != "ok"]


def render_gpu(result: dict) -> str:
    env, target = result["steps"]["environment"], result["target"]
    lines = [f"Measured {result['date']} by `make device-check` on {env.get('device_name')}, torch "
             f"{env['versions'].get('torch')}: {result['used_s']:.0f} s of its {result['budget_s']:g} s budget "
             f"(`{result['out']}`). Shared CIFAR-10 bundle (JPEG), 45,000 train / 5,000 val images, final "
             f"weights; {TRAIN_S_NOTE}.", "", f"airbench94 target ({target['wanted']}): **{target['verdict']}**"
             f" - {target['detail']}.", "",
             markdown_table(["recipe", "epochs", "seeds", "val none %", "val best TTA %", "train s",
                             "train img/s", "speed settings"], recipe_rows(result)), ""]
    table = throughput_table(result)
    lines += [table] if table else []
    lines += [cuda_line(result)]
    skipped = not_done(result)
    lines += (["", "Not done:", "", *skipped] if skipped else [])
    return "\n".join(lines) + "\n"


def render_cpu(result: dict) -> str:
    env = result["steps"]["environment"]
    lines = ["**GPU figures: not measured on a GPU.** No lent GPU has run `make device-check` yet; its "
             "table goes here when one does.", "",
             f"What the CPU tiny path checked (`make device-check TINY=1`, {result['date']}, "
             f"{env['machine']['label']}, torch {env['versions'].get('torch')}, {result['used_s']:.0f} s): "
             "the same steps at tiny scale, accuracies near chance (a wiring check, not a measurement).", ""]
    for name, record in result["steps"].items():
        lines.append(f"- {name}: {record['status']}" + (f" - {describe(record)}" if describe(record) else ""))
    return "\n".join(lines) + "\n"


def describe(record: dict) -> str:
    """One step's figures in a few words, for the CPU block's list."""
    if "reason" in record:
        return record["reason"]
    if "cuda_available" in record:
        absent = [name for name, version in record["optional_packages"].items() if version is None]
        return (f"python {record['python']}, CUDA {'available' if record['cuda_available'] else 'not available'}"
                + (f"; not installed: {', '.join(absent)}" if absent else ""))
    if "counts" in record:
        counts = record["counts"]
        limit = f" (--limit {record['limit']})" if record.get("limit") else ""
        return (f"{counts['train']} train / {counts['val']} val / {counts['test']} test images prepared from "
                f"{record.get('source')}{limit}")
    if "tta_val_acc" in record:
        levels = ", ".join(f"{level} {pct(acc)}%" for level, acc in record["tta_val_acc"].items())
        return f"{record['epochs']:g} epochs, trained in {record['train_s']:.1f} s; val {levels}"
    if "variants" in record:
        timed = ", ".join(f"{n.replace('_', ' ')} {r['img_per_s']:.0f}" for n, r in record["variants"].items())
        untimed = "; ".join(f"{k}: {v}" for k, v in record.get("not_timed", {}).items())
        return f"img/s {timed}" + (f"; not timed: {untimed}" if untimed else "")
    if "tests" in record:
        return f"{record['tests']} collected: {record['passed']} passed, {record['skipped']} skipped (no GPU)"
    return ""


def render(result: dict) -> str:
    return render_gpu(result) if result["mode"] == "gpu" else render_cpu(result)
