"""What is recorded in MLflow: the store (`store`), one tracked run with or without repeats
(`run`), and an Optuna study of runs (`sweep`)."""
