"""The search: the search space a YAML file declares, and the Optuna study (sampler, pruner, budget) that draws it."""
