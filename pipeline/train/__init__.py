"""The train stage: a prepared data folder in, checkpoints + metrics + curves + manifest out.

    stage.py      the `python -m pipeline train` click command
    config.py     TrainConfig, the stage's one config dataclass (and which fields --resume may change)
    engine.py     run_training: one run as a short sequence of named steps
    trainer.py    Trainer, build_trainer and train_step (one optimizer step)
    epoch.py      train_one_epoch / evaluate (one pass each) and an epoch's metrics row
    tune.py       the probe's answer for the auto precision / channels_last / compile
    probe.py      timing candidates, and the per-machine cache of their answers
    budget.py     --time-budget: the plan, and keeping a running trainer inside it
    resume.py     checkpoint contents, exact resume, RNG state and seeding
    run_folder.py the run folder's checks, a fresh folder, a retrain's staging and swap
    optim.py      optimizer registry and weight-decay parameter groups
    muon.py       the Muon optimizer (orthogonalised conv updates)
    schedules.py  learning-rate schedule registry (stepped per iteration)
    ema.py        exponential moving average of the weights
    logbook.py    metrics.csv, metrics.jsonl and curves.png of a run
    distributed.py  torchrun/DDP detection and collectives

Imports run one way: engine -> epoch/tune/resume -> trainer -> budget/optim/schedules/ema;
nothing imports engine but the stage and its callers.
"""
