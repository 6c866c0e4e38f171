"""kubetune-train: the reference trial, a PyTorch MLP classifier on scikit-learn's digits.

Every hyperparameter is a command-line flag. A flag not given on the command line takes its
value from the trial's parameters (KUBETUNE_PARAMS, through the trial SDK) when present, so a
study may pass parameters as args ("--lr=${params.lr}"), as environment only, or both; the
command line wins over the environment, the environment over the defaults.

Each epoch trains, evaluates on the validation split and reports train_loss, val_loss and
val_accuracy with kubetune.trial.report(step=epoch).

Learning-rate range test: with KUBETUNE_LR_RANGE_TEST set (see kubetune.trial.lr_range_test)
or --lr-range-test given, the same model and optimizer take `steps` mini-batch steps with the
learning rate growing exponentially from minLr to maxLr instead of training, and each step
reports step, lr, loss (the smoothed training loss) and raw_loss; --lr is ignored
(docs/lr-range-test.md).

Exit codes: 0 done, 2 bad parameters, 3 training diverged (loss NaN/inf, or more than
DIVERGENCE_FACTOR times the initial loss; the diverged epoch is still reported). A range test
exits 0 also when the loss blows up: that is how it ends.

torch is imported only after the arguments are checked, so --help and parameter errors are
quick; scikit-learn is not imported at all on the usual path (see load_digits).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

PROG = "kubetune-train"
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DIVERGED = 3

# An epoch whose mean training loss exceeds this multiple of the initial loss has diverged.
DIVERGENCE_FACTOR = 100.0
VAL_FRACTION = 0.2
# "step" schedule: the learning rate is multiplied by STEP_GAMMA at these fractions of the
# steps after warmup.
STEP_MILESTONES = (0.5, 0.75)
STEP_GAMMA = 0.1

OPTIMIZERS = ("sgd", "adam", "adamw")
ACTIVATIONS = ("relu", "gelu", "tanh", "silu")
SCHEDULES = ("constant", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# ----------------------------------------------------------------------------- parameters

def _number(text: Any, kind: type) -> float:
    """Parse an int or float from a flag (str) or from KUBETUNE_PARAMS (JSON number or str)."""
    if isinstance(text, bool):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if isinstance(text, (int, float)):
        value = text
    else:
        try:
            value = int(str(text).strip()) if kind is int else float(str(text).strip())
        except ValueError:
            try:
                value = float(str(text).strip())
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
            value = int(value)
        return value
    value = float(value)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _checked(kind: type, check: Optional[Callable[[float], bool]] = None, rule: str = "") -> Callable[[Any], Any]:
    def parse(text: Any) -> Any:
        value = _number(text, kind)
        if check is not None and not check(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def _choice(choices: Sequence[str]) -> Callable[[Any], str]:
    def parse(text: Any) -> str:
        value = str(text).strip().lower()
        if value not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r} (choose from {', '.join(choices)})")
        return value
    parse.__name__ = "choice"
    return parse


@dataclass(frozen=True)
class Option:
    flag: str                      # e.g. "--batch-size"
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: Optional[str] = None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("--lr", _checked(float, lambda v: v > 0, "> 0"), 0.01,
           "peak learning rate, > 0; ignored in a learning-rate range test"),
    Option("--batch-size", _checked(int, lambda v: v >= 1, ">= 1"), 64,
           "mini-batch size, >= 1"),
    Option("--epochs", _checked(int, lambda v: v >= 1, ">= 1"), 10,
           "training epochs, >= 1; metrics are reported after each"),
    Option("--optimizer", _choice(OPTIMIZERS), "adam", "optimizer", "{" + ",".join(OPTIMIZERS) + "}"),
    Option("--momentum", _checked(float, lambda v: 0 <= v < 1, "in [0, 1)"), 0.9,
           "momentum, in [0, 1); used by sgd only"),
    Option("--weight-decay", _checked(float, lambda v: v >= 0, ">= 0"), 0.0,
           "weight decay (L2 for sgd/adam, decoupled for adamw), >= 0"),
    Option("--dropout", _checked(float, lambda v: 0 <= v < 1, "in [0, 1)"), 0.0,
           "dropout probability after each hidden layer, in [0, 1)"),
    Option("--hidden-width", _checked(int, lambda v: v >= 1, ">= 1"), 128,
           "units per hidden layer, >= 1"),
    Option("--depth", _checked(int, lambda v: v >= 0, ">= 0"), 2,
           "number of hidden layers, >= 0 (0: a linear classifier)"),
    Option("--activation", _choice(ACTIVATIONS), "relu", "hidden-layer activation",
           "{" + ",".join(ACTIVATIONS) + "}"),
    Option("--lr-schedule", _choice(SCHEDULES), "constant",
           "learning-rate schedule after warmup, updated every step: constant; cosine (to 0); "
           f"step (x{STEP_GAMMA:g} at {', '.join(f'{m:.0%}%' for m in STEP_MILESTONES)} of the steps)",
           "{" + ",".join(SCHEDULES) + "}"),
    Option("--warmup-epochs", _checked(float, lambda v: v >= 0, ">= 0"), 0.0,
           "linear learning-rate warmup, in epochs (fractions allowed), >= 0"),
    Option("--seed", _checked(int), 0,
           "training seed (initialisation, shuffling, dropout)"),
    Option("--split-seed", _checked(int), 0,
           "seed of the stratified 80/20 train/validation split, independent of --seed"),
    Option("--device", _choice(DEVICES), "auto",
           "auto: cuda when available, else cpu", "{" + ",".join(DEVICES) + "}"),
    Option("--precision", _choice(PRECISIONS), "auto",
           "auto: fp32 on cpu; on cuda mixed precision with bf16 where supported, else fp16 "
           "with gradient scaling", "{" + ",".join(PRECISIONS) + "}"),
    Option("--threads", _checked(int, lambda v: v >= 1, ">= 1"), None,
           "torch CPU threads (default: torch's own, which follows OMP_NUM_THREADS)"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a PyTorch MLP on scikit-learn's digits and report metrics to kubetune. "
                    "A flag not given takes its value from the trial parameters in KUBETUNE_PARAMS "
                    "(key: the flag name with - or _, e.g. batch_size), else the default.",
        epilog="Exit codes: 0 done, 2 bad parameters, 3 training diverged.",
        # SUPPRESS: absent flags stay absent, so the environment can fill them in.
        argument_default=argparse.SUPPRESS,
    )
    for option in OPTIONS:
        shown = "" if option.default is None else f" (default: {option.default})"
        parser.add_argument(option.flag, type=option.parse, metavar=option.metavar,
                            help=option.help + shown)
    parser.add_argument("--lr-range-test", action="store_true",
                        help="run a learning-rate range test instead of training: the same model and "
                             "optimizer, the learning rate growing exponentially each step, reporting "
                             "step, lr, loss (smoothed) and raw_loss; --lr and --epochs are ignored. "
                             "Settings from KUBETUNE_LR_RANGE_TEST, else minLr=1e-7 maxLr=10 steps=100 "
                             "beta=0.98 stopFactor=4. Also on when KUBETUNE_LR_RANGE_TEST is set.")
    return parser


def resolve(argv: Optional[Sequence[str]], env_params: Optional[dict[str, Any]] = None
            ) -> argparse.Namespace:
    """Command line, then KUBETUNE_PARAMS, then defaults. Exits 2 on a bad value.

    The result's lr_range_test is the range test to run (a dict, see
    kubetune.trial.lr_range_test) or None. The environment (KUBETUNE_PARAMS and
    KUBETUNE_LR_RANGE_TEST) is read only when env_params is None.
    """
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    flagged = given.pop("lr_range_test", False)
    range_test = None
    if env_params is None:
        try:
            from kubetune import trial
            env_params = trial.params()
            range_test = trial.lr_range_test()
        except ValueError as exc:
            parser.error(str(exc))
    if range_test is None and flagged:
        from kubetune import trial
        range_test = dict(trial.LR_RANGE_TEST_DEFAULTS)
    by_dest = {option.dest: option for option in OPTIONS}
    from_env: dict[str, Any] = {}
    unknown = []
    for key, value in env_params.items():
        dest = str(key).replace("-", "_")
        if dest not in by_dest:
            unknown.append(str(key))
            continue
        if dest in from_env and from_env[dest][1] != value:
            parser.error(f"KUBETUNE_PARAMS: {from_env[dest][0]!r} and {key!r} give different values")
        from_env[dest] = (str(key), value)
    if unknown:
        print(f"{PROG}: ignoring parameters it does not know: {', '.join(sorted(unknown))}",
              file=sys.stderr)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.dest in given:
            values[option.dest] = given[option.dest]
        elif option.dest in from_env:
            key, raw = from_env[option.dest]
            try:
                values[option.dest] = option.parse(raw)
            except argparse.ArgumentTypeError as exc:
                parser.error(f"argument {option.flag} (KUBETUNE_PARAMS key {key!r}): {exc}")
        else:
            values[option.dest] = option.default
    values["lr_range_test"] = range_test
    return argparse.Namespace(**values)


# ----------------------------------------------------------------------------- data

def load_digits():
    """scikit-learn's bundled digits as (features float64 [n, 64], labels int64 [n]) arrays.

    Reads the CSV that ships inside scikit-learn directly: importing sklearn.datasets costs more
    than a second per trial. Falls back to sklearn.datasets.load_digits (the same data; a test
    checks they agree) if the file is not where it is expected.
    """
    import numpy as np
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            path = os.path.join(root, "datasets", "data", "digits.csv.gz")
            if os.path.exists(path):
                data = np.loadtxt(path, delimiter=",")
                if data.ndim == 2 and data.shape[1] == 65:
                    return data[:, :-1], data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_load_digits
    bunch = sklearn_load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


def stratified_split(labels, val_fraction: float, seed: int):
    """Indices (train, val) with each class split in proportion; depends on seed only."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    n_val = int(math.ceil(val_fraction * len(labels)))
    per_class = [np.flatnonzero(labels == c) for c in classes]
    exact = np.array([val_fraction * len(idx) for idx in per_class])
    take = np.floor(exact).astype(int)
    # Hand the remaining validation places to the largest fractional parts (stable order).
    for i in np.argsort(-(exact - take), kind="stable")[: n_val - int(take.sum())]:
        take[i] += 1
    train, val = [], []
    for idx, k in zip(per_class, take):
        idx = rng.permutation(idx)
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# ----------------------------------------------------------------------------- training

def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / remaining)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return STEP_GAMMA ** sum(progress >= m for m in STEP_MILESTONES)
    return 1.0


def run(args: argparse.Namespace) -> int:
    import torch
    from torch import nn
    from kubetune import trial

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif args.device == "cuda" and not torch.cuda.is_available():
        print(f"{PROG}: error: argument --device: cuda requested but CUDA is not available",
              file=sys.stderr)
        return EXIT_USAGE
    else:
        device = torch.device(args.device)

    precision = args.precision
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    # Same flags (and CPU thread count), same numbers on CPU: seeded initialisation, dropout
    # and shuffling, and only
    # ops with deterministic CPU kernels (no scatter/index_add backward). Not calling
    # torch.use_deterministic_algorithms(True) on purpose: it imports torch._inductor (and
    # torch._dynamo), over a second per trial. CUDA runs are close, not bitwise, repeatable.
    torch.manual_seed(args.seed)

    # Data: all of it as tensors on the device; standardised with train-split statistics.
    features, labels = load_digits()
    train_idx, val_idx = stratified_split(labels, VAL_FRACTION, args.split_seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    x_train, y_train = x[train_idx], y[train_idx]
    x_val, y_val = x[val_idx], y[val_idx]
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant pixels (image borders)
    x_train = ((x_train - mean) / std).to(device)
    x_val = ((x_val - mean) / std).to(device)
    y_train, y_val = y_train.to(device), y_val.to(device)
    n_classes = int(y.max()) + 1

    activation = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}[args.activation]
    layers: list[nn.Module] = []
    width_in = x_train.shape[1]
    for _ in range(args.depth):
        layers += [nn.Linear(width_in, args.hidden_width), activation()]
        if args.dropout > 0:
            layers.append(nn.Dropout(args.dropout))
        width_in = args.hidden_width
    layers.append(nn.Linear(width_in, n_classes))
    model = nn.Sequential(*layers).to(device)

    # torch.optim's update rules without its import cost (see kubetune_trainer.optim).
    from kubetune_trainer import optim
    if args.optimizer == "sgd":
        optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                              weight_decay=args.weight_decay)
    elif args.optimizer == "adam":
        optimizer = optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loss_fn = nn.CrossEntropyLoss()
    n_train = x_train.shape[0]
    shuffle = torch.Generator().manual_seed(args.seed)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    if args.lr_range_test is not None:
        print(f"{PROG}: learning-rate range test: device={device.type} precision={precision} train={n_train} "
              f"batch_size={args.batch_size} optimizer={args.optimizer} "
              + " ".join(f"{k}={v:g}" for k, v in args.lr_range_test.items()), file=sys.stderr, flush=True)

        def batches():  # the training set over and over, reshuffled each pass
            while True:
                order = torch.randperm(n_train, generator=shuffle).to(device)
                for start in range(0, n_train, args.batch_size):
                    yield order[start:start + args.batch_size]

        def train_step(batch, lr: float) -> float:
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast():
                loss = loss_fn(model(x_train[batch]).float(), y_train[batch])
            value = loss.item()
            if math.isfinite(value):
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            return value

        model.train()
        return range_test(args.lr_range_test, batches(), train_step, trial.report)

    steps_per_epoch = math.ceil(n_train / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = round(args.warmup_epochs * steps_per_epoch)

    print(f"{PROG}: device={device.type} precision={precision} train={n_train} val={x_val.shape[0]} "
          f"steps/epoch={steps_per_epoch} lr={args.lr:g} batch_size={args.batch_size} "
          f"epochs={args.epochs} optimizer={args.optimizer}", file=sys.stderr, flush=True)

    def evaluate() -> tuple[float, float]:
        model.eval()
        with torch.no_grad(), autocast():
            logits = model(x_val)
            loss = loss_fn(logits.float(), y_val)
        accuracy = (logits.argmax(dim=1) == y_val).float().mean()
        return float(loss), float(accuracy)

    initial_loss: Optional[float] = None
    step = 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(n_train, generator=shuffle).to(device)
        total, seen, diverged = 0.0, 0, None
        for start in range(0, n_train, args.batch_size):
            batch = order[start:start + args.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = args.lr * lr_factor(step, total_steps, warmup_steps, args.lr_schedule)
            with autocast():
                loss = loss_fn(model(x_train[batch]).float(), y_train[batch])
            value = loss.item()  # one sync per step: cheap at this size, and stops at once
            total += value * len(batch)
            seen += len(batch)
            if initial_loss is None:
                initial_loss = value
            if not math.isfinite(value):
                diverged = "train_loss"
                break
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
        train_loss = total / seen
        val_loss, val_accuracy = evaluate()
        trial.report(step=epoch, train_loss=train_loss, val_loss=val_loss, val_accuracy=val_accuracy)
        if diverged is None and math.isfinite(initial_loss) and train_loss > DIVERGENCE_FACTOR * initial_loss:
            diverged = f"train_loss={train_loss:.4g} > {DIVERGENCE_FACTOR:g}x the initial {initial_loss:.4g}"
        elif diverged == "train_loss":
            diverged = f"train_loss={train_loss:.4g}"
        elif diverged is None and not math.isfinite(val_loss):
            diverged = f"val_loss={val_loss:.4g}"
        if diverged is not None:
            print(f"{PROG}: training diverged at epoch {epoch} ({diverged}); "
                  f"try a lower learning rate (lr={args.lr:g})", file=sys.stderr, flush=True)
            return EXIT_DIVERGED
    return EXIT_OK


def range_test_lr(config: dict[str, Any], step: int) -> float:
    """The learning rate of range-test step `step` (0-based): minLr to maxLr, exponentially."""
    return config["minLr"] * (config["maxLr"] / config["minLr"]) ** (step / (config["steps"] - 1))


def range_test(config: dict[str, Any], batches: Iterable[Any], train_step: Callable[[Any, float], float],
               report: Callable[..., None]) -> int:
    """Run a learning-rate range test; returns EXIT_OK, however it ends.

    train_step(batch, lr) takes one optimizer step at that learning rate and returns the
    mini-batch loss computed before the step. Each step reports the bias-corrected
    exponential average of those losses (loss) beside the loss itself (raw_loss). The test
    ends after config["steps"] steps, or early once the smoothed loss exceeds stopFactor
    times its lowest value (that step is still reported), or when the loss is not finite
    (that step is not reported: a NaN is no point of a curve).
    """
    beta, stop_factor = config["beta"], config["stopFactor"]
    average, best = 0.0, math.inf
    ended = f"reached maxLr={config['maxLr']:g}"
    batch_iter = iter(batches)
    for step in range(config["steps"]):
        lr = range_test_lr(config, step)
        loss = train_step(next(batch_iter), lr)
        if not math.isfinite(loss):
            ended = f"loss {loss} at step {step} (lr={lr:.3g})"
            break
        average = beta * average + (1 - beta) * loss
        smoothed = average / (1 - beta ** (step + 1))
        report(step=step, lr=lr, loss=smoothed, raw_loss=loss)
        best = min(best, smoothed)
        if smoothed > stop_factor * best:
            ended = (f"smoothed loss {smoothed:.4g} > {stop_factor:g}x the lowest {best:.4g} "
                     f"at step {step} (lr={lr:.3g})")
            break
    print(f"{PROG}: learning-rate range test done: {ended}", file=sys.stderr, flush=True)
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the trainer; returns the exit code (argparse's --help and errors included)."""
    try:
        args = resolve(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad parameter (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
