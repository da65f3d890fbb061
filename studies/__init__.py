"""Studies: Optuna searches over students, tracked in MLflow, and the comparisons built on them."""
