"""Problems for bench_strategies.py: synthetic functions with known optima and real model tuning.

Every problem is a search space in kubetune's own terms (the `parameters` of a study), a
function to minimise, and its optimum where known. Real tuning problems evaluate a
scikit-learn model by cross-validation on a dataset bundled with scikit-learn (nothing is
downloaded); their optimum is unknown, so the benchmark uses the best value any contender
found in the same run.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Problem:
    name: str
    parameters: list[dict[str, Any]]
    function: Callable[[dict[str, Any]], float]
    optimum: Optional[float]  # None: estimated from the run
    kind: str  # "synthetic" or "model"
    about: str


def floats(names: str, low: float, high: float) -> list[dict[str, Any]]:
    return [{"name": n, "type": "float", "min": low, "max": high} for n in names.split()]


# -- synthetic ------------------------------------------------------------------------------


def branin(p: dict) -> float:
    x1, x2 = p["x1"], p["x2"]
    return ((x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10)


_H6_A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
_H6_P = [[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]]
_H6_ALPHA = [1.0, 1.2, 3.0, 3.2]


def hartmann6(p: dict) -> float:
    x = [p[f"x{i}"] for i in range(1, 7)]
    return -sum(a * math.exp(-sum(_H6_A[i][j] * (x[j] - _H6_P[i][j] * 1e-4) ** 2 for j in range(6)))
                for i, a in enumerate(_H6_ALPHA))


def rosenbrock(p: dict) -> float:
    x = [p[f"x{i}"] for i in range(1, 6)]
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(4))


def styblinski_tang(p: dict) -> float:
    return sum(v ** 4 - 16 * v ** 2 + 5 * v for v in (p[f"x{i}"] for i in range(1, 6))) / 2


def learning_rate_like(p: dict) -> float:
    """A validation loss shaped like a real training run's.

    The best learning rate grows with the batch size (the linear-scaling rule, softened), weight
    decay matters much less, dropout a little, and past a learning rate that also grows with the
    batch size the run diverges to a flat bad loss. momentum, width and activation do nothing:
    a strategy must learn to ignore them.
    """
    log_lr, log_bs = math.log10(p["lr"]), math.log2(p["batch_size"])
    best_log_lr = -3.0 + 0.15 * (log_bs - 6)
    if log_lr > best_log_lr + 1.6:
        return 2.5  # diverged
    return (0.05 + 0.4 * (log_lr - best_log_lr) ** 2 + 0.05 * (math.log10(p["weight_decay"]) + 4) ** 2
            + 0.8 * (p["dropout"] - 0.2) ** 2)


SYNTHETIC = [
    Problem("branin", [{"name": "x1", "type": "float", "min": -5.0, "max": 10.0},
                       {"name": "x2", "type": "float", "min": 0.0, "max": 15.0}],
            branin, 0.397887, "synthetic", "Branin, 2-D, three global minima"),
    Problem("hartmann6", floats("x1 x2 x3 x4 x5 x6", 0.0, 1.0), hartmann6, -3.32237, "synthetic",
            "Hartmann, 6-D, multimodal"),
    Problem("rosenbrock5", floats("x1 x2 x3 x4 x5", -5.0, 10.0), rosenbrock, 0.0, "synthetic",
            "Rosenbrock, 5-D, a long curved valley and values spanning six orders of magnitude"),
    Problem("styblinski_tang5", floats("x1 x2 x3 x4 x5", -5.0, 5.0), styblinski_tang, -39.16617 * 5, "synthetic",
            "Styblinski-Tang, 5-D, 2^5 local minima"),
    Problem("lr_like", [
        {"name": "lr", "type": "float", "min": 1e-5, "max": 1.0, "scale": "log"},
        {"name": "batch_size", "type": "int", "min": 16, "max": 512, "scale": "pow2"},
        {"name": "weight_decay", "type": "float", "min": 1e-6, "max": 1e-1, "scale": "log"},
        {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5, "step": 0.05},
        {"name": "momentum", "type": "float", "min": 0.0, "max": 0.99},
        {"name": "width", "type": "int", "min": 16, "max": 1024, "scale": "log"},
        {"name": "activation", "type": "categorical", "values": ["relu", "gelu", "tanh"]},
    ], learning_rate_like, 0.05, "synthetic",
        "learning-rate-like: log-scaled lr interacting with a pow2 batch size, a divergence cliff, 3 irrelevant parameters"),
]


# -- real model tuning -----------------------------------------------------------------------


@lru_cache(maxsize=None)
def dataset(name: str):
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine, "digits": datasets.load_digits}[name]
    return loader(return_X_y=True)


def cv_error(model, data: str) -> float:
    """3-fold cross-validated error rate (1 - accuracy), with a fixed split."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x, y = dataset(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings are part of what is being tuned
        scores = cross_val_score(model, x, y, cv=StratifiedKFold(3, shuffle=True, random_state=0))
    return 1.0 - float(scores.mean())


def svm(data: str) -> Callable[[dict], float]:
    def evaluate(p: dict) -> float:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        return cv_error(make_pipeline(StandardScaler(), SVC(C=p["C"], gamma=p["gamma"])), data)
    return evaluate


def random_forest(data: str) -> Callable[[dict], float]:
    def evaluate(p: dict) -> float:
        from sklearn.ensemble import RandomForestClassifier

        return cv_error(RandomForestClassifier(
            n_estimators=p["n_estimators"], max_depth=p["max_depth"], min_samples_split=p["min_samples_split"],
            max_features=p["max_features"], criterion=p["criterion"], random_state=0, n_jobs=1), data)
    return evaluate


def mlp(data: str) -> Callable[[dict], float]:
    def evaluate(p: dict) -> float:
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return cv_error(make_pipeline(StandardScaler(), MLPClassifier(
            hidden_layer_sizes=(p["width"],), alpha=p["alpha"], learning_rate_init=p["lr"],
            batch_size=p["batch_size"], max_iter=30, random_state=0)), data)
    return evaluate


SVM_SPACE = [{"name": "C", "type": "float", "min": 1e-2, "max": 1e2, "scale": "log"},
             {"name": "gamma", "type": "float", "min": 1e-4, "max": 1.0, "scale": "log"}]
FOREST_SPACE = [
    {"name": "n_estimators", "type": "int", "min": 4, "max": 32, "scale": "pow2"},
    {"name": "max_depth", "type": "int", "min": 1, "max": 12},
    {"name": "min_samples_split", "type": "int", "min": 2, "max": 32, "scale": "log"},
    {"name": "max_features", "type": "float", "min": 0.05, "max": 1.0},
    {"name": "criterion", "type": "categorical", "values": ["gini", "entropy"]},
]
MLP_SPACE = [
    {"name": "width", "type": "int", "min": 8, "max": 128, "scale": "log"},
    {"name": "alpha", "type": "float", "min": 1e-6, "max": 1.0, "scale": "log"},
    {"name": "lr", "type": "float", "min": 1e-4, "max": 1.0, "scale": "log"},
    {"name": "batch_size", "type": "int", "min": 16, "max": 256, "scale": "pow2"},
]

MODELS = [
    Problem("svm_breast_cancer", SVM_SPACE, svm("breast_cancer"), None, "model", "SVC (C, gamma) on breast cancer, 3-fold CV error"),
    Problem("svm_digits", SVM_SPACE, svm("digits"), None, "model", "SVC (C, gamma) on digits, 3-fold CV error"),
    Problem("forest_wine", FOREST_SPACE, random_forest("wine"), None, "model", "random forest (5 parameters) on wine, 3-fold CV error"),
    Problem("mlp_breast_cancer", MLP_SPACE, mlp("breast_cancer"), None, "model", "MLP (4 parameters, 30 epochs) on breast cancer, 3-fold CV error"),
]

PROBLEMS = {p.name: p for p in SYNTHETIC + MODELS}
#: The default run: every synthetic function and the real problems that fit ~45 minutes on 2 cores.
DEFAULT = [p.name for p in SYNTHETIC] + ["svm_breast_cancer", "forest_wine"]
