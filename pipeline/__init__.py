"""From raw competition data to a scored Kaggle submission, one file-based stage at a time."""

__version__ = "0.1.0"
