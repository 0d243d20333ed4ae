"""The names every result speaks in, declared once and free of torch: the metrics a model is
measured by, the three objectives of the search with their senses, and Optuna's directions."""

from __future__ import annotations

# Every metric of one model (see distforget.evaluate for their definitions).
METRICS = ("forget_acc", "retain_acc", "zeroshot_acc", "forget_sim", "mia_auc")

# The search's objectives and their senses; the Pareto front, the hypervolume and the study all
# read them from here.
OBJECTIVES: dict[str, str] = {"forget_acc": "min", "retain_acc": "max", "zeroshot_acc": "max"}

# The same senses as Optuna's study directions, in the same order.
DIRECTIONS = ["minimize" if sense == "min" else "maximize" for sense in OBJECTIVES.values()]
