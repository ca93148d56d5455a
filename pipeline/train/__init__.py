"""The train stage: a prepared data folder in, checkpoints + metrics + curves + manifest out.

    config.py     TrainConfig, the stage's one config dataclass
    engine.py     run_training / train_one_epoch / evaluate
    optim.py      optimizer registry and weight-decay parameter groups
    schedules.py  learning-rate schedule registry (stepped per iteration)
    ema.py        exponential moving average of the weights
    logbook.py    metrics.csv, metrics.jsonl and curves.png of a run
    distributed.py  torchrun/DDP detection and collectives
    stage.py      the `python -m pipeline train` click command
"""
