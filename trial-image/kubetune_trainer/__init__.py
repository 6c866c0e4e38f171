"""The reference kubetune trial: a PyTorch MLP on scikit-learn's digits (`kubetune-train`).

Importing this package imports neither torch nor scikit-learn; see kubetune_trainer.train.
"""

__all__ = ["main"]


def main(argv=None) -> int:
    from kubetune_trainer.train import main as _main
    return _main(argv)
