"""sweep: hyperparameter search for audio classifiers on Optuna, submitit and one common trainer."""

__version__ = "0.1.0"
