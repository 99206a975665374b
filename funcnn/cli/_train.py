"""``funcnn train``: the MNIST recipes of ``examples/mnist.py`` (``--model mlp``, the
default) and ``examples/cnn_mnist.py`` (``--model cnn``) without their shifted images,
with files a person can read.

Writes into ``--out``: ``model.npz`` (the trained params with the net spec and its
model state, for
``funcnn evaluate`` and ``funcnn.load``), ``checkpoint.npz`` (the whole fit state,
written after every epoch by ``funcnn.callbacks.checkpoint``; ``--resume`` continues
from it bit for bit), ``metrics.json`` (configuration, per-epoch history, test loss
and accuracy, seconds, versions, machine) and ``curves.png``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import funcnn
from funcnn.activations import ACTIVATIONS
from funcnn.checkpoint import CheckpointError
from funcnn.cli import _plots
from funcnn.cli._common import (
    CommandError,
    channels,
    check_out,
    describe_net,
    drops_units,
    fraction,
    interrupt_later,
    load_data,
    machine,
    non_negative_float,
    positive_float,
    positive_int,
    seed,
    versions,
    widths,
    write_json,
)
from funcnn.train import TrainingDiverged

__all__ = ["add_parser", "run"]

DEFAULT_LR = {"adamw": 2e-3, "adam": 2e-3, "sgd": 0.05, "rmsprop": 1e-3, "adagrad": 1e-2}
MODELS = ("mlp", "cnn")
# The defaults that depend on --model: the recipes of examples/mnist.py and cnn_mnist.py
# (the cnn's warm-up of 100 steps is about a quarter of an epoch of 422 steps).
RECIPES = {
    "mlp": {"optimizer": "adamw", "epochs": 20, "warmup_epochs": 1.0},
    "cnn": {"optimizer": "adam", "epochs": 8, "warmup_epochs": 0.25},
}
CNN_LR = {"adam": 1e-2}  # the cnn's peak rate where it differs from DEFAULT_LR
# The flags of one model only, with their defaults; given for the other, they are refused.
MODEL_FLAGS = {
    "mlp": {"hidden": (512, 256), "activation": "relu", "dropout": 0.2},
    "cnn": {"channels": (16, 32)},
}
IMAGE = (28, 28, 1)  # one MNIST image for the cnn, channels last
SCHEDULES = ("warmup_cosine", "cosine", "constant")
MODEL, CHECKPOINT = "model.npz", "checkpoint.npz"
METRICS, CURVES = "metrics.json", "curves.png"
# Flags that may differ between a run and its --resume (they do not change the numbers).
NOT_COMPARED = ("data", "out", "resume", "no_progress")
# The most steps a run may take: jax counts the optimizer's steps in int32.
MAX_STEPS = 2**31 - 1
STOPPING = ("Ctrl-C: stopping when this epoch ends, once its checkpoint is written "
            "(Ctrl-C again stops at once)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    jax_default = "jax" if funcnn.backend.jax_available() else "numpy"
    p = subparsers.add_parser(
        "train", help="train an MLP or a small convolutional net on MNIST: model, "
                      "checkpoint, metrics, curves",
        description="Train a net on MNIST with funcnn.fit. --model mlp (the default) is the "
                    "recipe of examples/mnist.py without its shifted copies: 784-512-256-10 "
                    "ReLU, dropout 0.2, AdamW (lr 2e-3, weight decay 1e-4 on the weights), "
                    "one epoch of warm-up then cosine decay, batch 128, 20 epochs. --model cnn "
                    "is the recipe of examples/cnn_mnist.py without its shifted images: two "
                    "blocks of 3x3 convolution, 2x2 max-pooling, BatchNorm and ReLU (16 and 32 "
                    "channels), dense 128 with BatchNorm and ReLU, dense 10; Adam (lr 1e-2), "
                    "a quarter epoch of warm-up then cosine decay, batch 128, 8 epochs. 10% "
                    "of the training images are held out for validation. Writes model.npz, "
                    "checkpoint.npz, metrics.json and curves.png into --out and ends with one "
                    "JSON line on stdout.",
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR",
                   help="folder with the four MNIST files, raw or .gz (default: "
                        "$FUNCNN_DATA, then ~/.cache/funcnn/mnist, then download)")
    g.add_argument("--limit", type=positive_int, metavar="N",
                   help="train on the first N training images only (quick tries, CI)")
    g.add_argument("--validation", type=fraction, default=0.1, metavar="FRACTION",
                   help="share of the training images held out for validation, 0 for none "
                        "(default: 0.1)")
    g = p.add_argument_group("network")
    g.add_argument("--model", default="mlp", choices=MODELS, metavar="NAME",
                   help="mlp (a multilayer perceptron) or cnn (a small convolutional net "
                        "with BatchNorm) (default: mlp)")
    g.add_argument("--hidden", type=widths, metavar="W,W",
                   help="mlp: hidden widths, comma-separated; 'none' for no hidden layer "
                        "(default: 512,256)")
    g.add_argument("--activation", choices=tuple(ACTIVATIONS), metavar="NAME",
                   help=f"mlp: hidden activation: {', '.join(ACTIVATIONS)} (default: relu)")
    g.add_argument("--dropout", type=fraction, metavar="P",
                   help="mlp: probability of dropping a hidden unit while training "
                        "(default: 0.2)")
    g.add_argument("--channels", type=channels, metavar="C,C",
                   help="cnn: the channels of its one or two convolution blocks (default: "
                        "16,32)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=tuple(DEFAULT_LR), metavar="NAME",
                   help=f"{', '.join(DEFAULT_LR)} (default: adamw for the mlp, adam for the "
                        "cnn)")
    g.add_argument("--lr", type=positive_float, metavar="LR",
                   help="peak learning rate (default: 2e-3 for adamw and adam, 0.05 for sgd, "
                        "1e-3 for rmsprop, 1e-2 for adagrad; 1e-2 for the cnn's adam)")
    g.add_argument("--weight-decay", type=fraction, default=1e-4, metavar="WD",
                   help="adamw's decoupled weight decay, on the weights only (default: 1e-4)")
    g.add_argument("--momentum", type=fraction, default=0.9, metavar="M",
                   help="sgd's momentum (default: 0.9)")
    g.add_argument("--schedule", default="warmup_cosine", choices=SCHEDULES, metavar="NAME",
                   help="learning rate over the steps: warmup_cosine (linear warm-up, then "
                        "cosine decay to 0), cosine (decay from the start) or constant "
                        "(default: warmup_cosine)")
    g.add_argument("--warmup-epochs", type=non_negative_float, metavar="E",
                   help="length of the warm-up, in epochs (default: 1 for the mlp, 0.25 for "
                        "the cnn)")
    g.add_argument("--epochs", type=positive_int, metavar="N",
                   help="(default: 20 for the mlp, 8 for the cnn)")
    g.add_argument("--batch-size", type=positive_int, default=128, metavar="N",
                   help="(default: 128)")
    g.add_argument("--early-stopping", type=positive_int, metavar="N",
                   help="stop after N epochs without a lower validation loss and keep the "
                        "best epoch's params")
    g = p.add_argument_group("computation and output")
    g.add_argument("--backend", default=jax_default, choices=funcnn.backend.BACKENDS,
                   metavar="NAME", help="jax (each epoch one compiled program) or numpy "
                   f"(default: jax when installed, else numpy; here {jax_default})")
    g.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   metavar="NAME", help="float32 or float64 (default: float32)")
    g.add_argument("--seed", type=seed, default=0, metavar="N",
                   help="the init uses SEED, shuffling and dropout SEED+1, the validation "
                        "split SEED+2 (default: 0)")
    g.add_argument("--out", default="runs/mnist", metavar="DIR",
                   help="folder for model.npz, checkpoint.npz, metrics.json, curves.png "
                        "(default: runs/mnist)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, bit for bit")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar: one line per epoch instead")
    p.set_defaults(run=run)
    return p


# ---------------------------------------------------------------------------- set-up


def resolve_model_flags(args: argparse.Namespace) -> None:
    """Refuse the flags of the other model (one line, exit 2), then fill in the defaults
    that depend on ``--model``."""
    for model, flags in MODEL_FLAGS.items():
        for name in flags:
            if model != args.model and getattr(args, name) is not None:
                raise CommandError(f"--{name} applies to --model {model} only, not to "
                                   f"--model {args.model}", code=2)
    for name, default in {**MODEL_FLAGS[args.model], **RECIPES[args.model]}.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.lr is None:
        args.lr = (CNN_LR if args.model == "cnn" else {}).get(args.optimizer,
                                                             DEFAULT_LR[args.optimizer])


def config_of(args: argparse.Namespace) -> dict:
    config = {k: v for k, v in vars(args).items() if k not in ("run", "command")}
    for name in ("hidden", "channels"):  # JSON lists, as metrics.json keeps them
        if config[name] is not None:
            config[name] = list(config[name])
    return config


def build_net(args: argparse.Namespace, n_pixels: int) -> funcnn.MLP | funcnn.Net:
    """The MLP of ``--hidden``, ``--activation`` and ``--dropout``, or the cnn of
    ``--channels``: per block a 3x3 convolution without bias (BatchNorm's shift is one),
    2x2 max-pooling, BatchNorm and ReLU, then dense 128 with BatchNorm and ReLU and the 10
    logits, as ``examples/cnn_mnist.py``'s ``bn_net``."""
    if args.model == "mlp":
        return funcnn.MLP((n_pixels, *args.hidden, 10), hidden=args.activation,
                          output="softmax", dropout=args.dropout)
    L = funcnn.layers
    blocks = [layer for c in args.channels for layer in (
        L.Conv2D(c, 3, padding="same", bias=False), L.MaxPool2D(2), L.BatchNorm(),
        L.Activation("relu"))]
    return funcnn.Net([*blocks, L.Flatten(), L.Dense(128, bias=False), L.BatchNorm(),
                       L.Activation("relu"), L.Dense(10)], IMAGE)


def check_args(args: argparse.Namespace) -> None:
    if args.early_stopping is not None and args.validation == 0:
        raise CommandError("--early-stopping needs a validation set (--validation > 0)", code=2)
    if args.backend == "jax":
        if not funcnn.backend.jax_available():
            raise CommandError("--backend jax needs jax, which is not installed",
                               "pip install 'funcnn[jax]', or use --backend numpy")
        if args.dtype == "float64":
            import jax  # optional dependency; float64 on jax needs 64-bit mode

            jax.config.update("jax_enable_x64", True)


def check_resume(out: Path, config: dict) -> None:
    """A resumed run must be the same run: the flags that change the numbers must agree."""
    try:
        saved = json.loads((out / METRICS).read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record of the run: the checkpoint callback checks the net
    changed = [k for k in config if k not in NOT_COMPARED and k in saved and saved[k] != config[k]]
    if changed:
        was = ", ".join(f"--{k.replace('_', '-')} {_flag(saved[k])} (now {_flag(config[k])})"
                        for k in changed)
        raise CommandError(f"--resume: the run in {out} was started with {was}",
                           "resume with the same flags, or train into a new --out", code=2)


def _flag(value) -> str:
    """A configuration value as it is written on the command line."""
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return "unset" if value is None else str(value)


def check_steps(args: argparse.Namespace, steps_per_epoch: int) -> None:
    total = args.epochs * steps_per_epoch
    if total > MAX_STEPS:
        raise CommandError(
            f"--epochs {args.epochs} of {steps_per_epoch} steps each make {total} steps, more "
            f"than a run can count ({MAX_STEPS})", "lower --epochs or raise --batch-size", code=2)


def make_optimizer(args: argparse.Namespace, lr: float, steps_per_epoch: int):
    total = args.epochs * steps_per_epoch
    if args.schedule == "constant":
        schedule = lr
    elif args.schedule == "cosine":
        schedule = funcnn.schedules.cosine_decay(lr, total)
    else:
        warmup = min(int(args.warmup_epochs * steps_per_epoch), total - 1)
        schedule = funcnn.schedules.warmup_cosine_decay(lr, warmup, total)
    if args.optimizer == "adamw":
        return funcnn.optim.adamw(schedule, weight_decay=args.weight_decay,
                                  mask=funcnn.optim.weights_only)
    if args.optimizer == "sgd":
        return funcnn.optim.sgd(schedule, momentum=args.momentum)
    return getattr(funcnn.optim, args.optimizer)(schedule)


def split_data(args: argparse.Namespace, data: funcnn.data.MNIST, shape: tuple):
    """The training images as examples of ``shape`` and their labels, and the validation
    pair (``None`` without one)."""
    x, y = data.x_train.reshape(-1, *shape), data.y_train
    if args.limit is not None:
        x, y = x[: args.limit], y[: args.limit]
    if args.validation == 0:
        return x, y, None
    try:
        x, y, x_val, y_val = funcnn.data.train_val_split(args.seed + 2, x, y, args.validation)
    except ValueError as err:
        raise CommandError(f"--validation {args.validation:g}: {err}", code=2) from None
    return x, y, (x_val, y_val)


# ---------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    resolve_model_flags(args)
    check_args(args)
    config = config_of(args)
    out = check_out(args.out)
    if args.resume:
        check_resume(out, config)
    data = load_data(args.data)  # checked here: no training on data that would fail later
    net = build_net(args, data.x_train.shape[1])
    x, y, validation = split_data(args, data, net.in_shape)
    steps_per_epoch = -(-len(x) // args.batch_size)
    check_steps(args, steps_per_epoch)
    try:
        optimizer = make_optimizer(args, config["lr"], steps_per_epoch)
    except ValueError as err:
        raise CommandError(str(err), code=2) from None
    params = funcnn.init_params(net, args.seed, backend=args.backend, dtype=args.dtype)
    state = funcnn.init_state(net, backend=args.backend, dtype=args.dtype)  # () for the mlp
    rows = {"train": len(x), "validation": 0 if validation is None else len(validation[0]),
            "test": len(data.x_test)}
    if not args.resume and (out / CHECKPOINT).exists():
        print(f"note: starting a new run in {out}, replacing its checkpoint "
              "(--resume would continue it)", file=sys.stderr)
    record = {"status": "running", "config": config, "rows": rows}
    write_json(out / METRICS, record)
    older = None if args.resume else file_identity(out / CHECKPOINT)
    try:
        params, state, history, session = train(args, net, params, state, optimizer, (x, y),
                                                validation, out, record)
        return report(args, net, params, state, history, session, data, out, record)
    except KeyboardInterrupt:
        epochs = write_stopped(out, record, older, status="interrupted")
        if epochs:
            print(f"\ninterrupted: {out / CHECKPOINT} holds epoch {epochs}, the last "
                  "finished; run the same command with --resume to continue", file=sys.stderr)
        else:
            print("\ninterrupted before the first epoch ended: nothing to resume from",
                  file=sys.stderr)
        return 130
    except CommandError as err:
        write_stopped(out, record, older, status="failed", error=str(err))
        raise


def per_epoch(history: dict) -> dict:
    """``fit``'s history without the per-step ``loss``."""
    return {k: v for k, v in history.items() if k != "loss"}


def file_identity(path: Path) -> tuple[int, int] | None:
    """``(inode, mtime)`` of ``path``, or ``None`` when there is no file: a checkpoint is
    replaced atomically (a new inode), so a changed identity means a new checkpoint."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def write_stopped(out: Path, record: dict, older: tuple[int, int] | None, **status) -> int:
    """Write ``metrics.json`` for a run that stopped before its end, with the epochs its
    checkpoint holds and their history; return how many. The checkpoint is what
    ``--resume`` continues from, so it is read rather than what ``fit`` was doing when it
    stopped; a checkpoint of an older run (its identity still ``older``) counts none."""
    ckpt, epochs, history = out / CHECKPOINT, 0, {}
    if file_identity(ckpt) not in (None, older):
        try:
            saved = funcnn.load(ckpt).metadata
            epochs, history = int(saved["epoch"]), per_epoch(saved["history"])
        except (OSError, CheckpointError, ValueError, KeyError, TypeError):
            pass  # unreadable: no epoch to report (--resume will say what is wrong)
    write_json(out / METRICS, {**record, **status, "epochs_trained": epochs,
                               "history": history})
    return epochs


def train(args, net, params, state, optimizer, data, validation, out: Path, record: dict):
    """``funcnn.fit`` with the checkpoint written after every epoch; ``(params, state,
    history, seconds)``, or a CommandError. KeyboardInterrupt passes through."""
    ckpt = out / CHECKPOINT
    start = time.perf_counter()
    try:
        with interrupt_later(STOPPING) as check:
            stop = [] if args.early_stopping is None else [  # before the checkpoint, which
                funcnn.callbacks.early_stopping(args.early_stopping)]  # then saves its memory
            callbacks = [*stop,  # a Ctrl-C stops the run after the epoch is saved and shown
                funcnn.callbacks.checkpoint(ckpt, every=1, resume=args.resume),
                funcnn.callbacks.print_epochs() if args.no_progress
                else funcnn.callbacks.progress_bar(),
                funcnn.callbacks.Callback(on_epoch_end=lambda state, info: check()),
            ]
            params, _, history, state = funcnn.fit(
                net, params, optimizer, *data, epochs=args.epochs, batch_size=args.batch_size,
                key=args.seed + 1, validation=validation, progress=False, callbacks=callbacks,
                state=state,
            )
    except TrainingDiverged as err:
        raise CommandError(
            f"training diverged: the loss became NaN or infinite in epoch {err.epoch + 1}, "
            f"step {err.step + 1}", f"lower --lr (it was {record['config']['lr']:g}) or check "
            "the data",
        ) from None
    except CheckpointError as err:
        raise CommandError(str(err).splitlines()[0], "train into a new --out") from None
    except (ValueError, TypeError) as err:
        if not args.resume:
            raise
        raise CommandError(f"cannot resume from {ckpt}: {str(err).splitlines()[0]}",
                           "resume with the flags of that run, or train into a new "
                           "--out") from None
    except OSError as err:
        raise CommandError(f"cannot write {ckpt}: {err.strerror or err}") from None
    return params, state, history, time.perf_counter() - start


def report(args, net, params, state, history, session: float, data, out: Path,
           record: dict) -> int:
    """Test the trained params, write the model, the curves and the final metrics.json,
    and say what was done (the last line: one JSON object)."""
    rows, ckpt = record["rows"], out / CHECKPOINT
    test = funcnn.evaluate(net, params, data.x_test.reshape(-1, *net.in_shape), data.y_test,
                           state=state)
    trained = len(history["train_loss"])
    best = history.get("best_epoch")
    model = out / MODEL  # the params fit returned (the best epoch's, with early stopping)
    funcnn.save(model, params, net=net, state=state, metadata={
        "epochs": trained, "best_epoch": None if best is None else best[0] + 1,
        "test_loss": test["loss"], "test_accuracy": test["accuracy"]})
    curves = draw_curves(out / CURVES, history, net, args, rows, test)
    write_json(out / METRICS, {
        **record, "status": "finished", "net": describe_net(net), "sizes": sizes_of(net),
        "epochs_trained": trained, "history": per_epoch(history),
        "test": {"loss": test["loss"], "accuracy": test["accuracy"]},
        "seconds": {"training": sum(history["seconds"]), "this_session": session},
        "versions": versions(), "machine": machine(),
    })

    print(f"trained a {describe_net(net)} on {rows['train']} MNIST images "
          f"({rows['validation']} held out for validation): {trained} epoch"
          f"{'s' if trained != 1 else ''}, "
          f"{sum(history['seconds']):.1f} s ({args.backend}, {args.dtype})")
    if best is not None:
        stopped = f"stopped early after epoch {trained}; " if trained < args.epochs else ""
        print(f"{stopped}kept the params of epoch {best[0] + 1}, the lowest validation loss")
    print(f"test set, {rows['test']} images: loss {test['loss']:.4f}, "
          f"accuracy {100 * test['accuracy']:.2f}%")
    written = [model, ckpt, out / METRICS] + ([curves] if curves is not None else [])
    print(f"wrote {', '.join(map(str, written))}")
    print(f"next: {next_command(model, args.data)}")
    print(json.dumps({
        "test_accuracy": round(test["accuracy"], 6), "test_loss": round(test["loss"], 6),
        "epochs": trained, "seconds": round(sum(history["seconds"]), 2),
        "backend": args.backend, "dtype": args.dtype, "net": describe_net(net),
        "sizes": sizes_of(net),
        "train_rows": rows["train"], "validation_rows": rows["validation"],
        "model": str(model), "checkpoint": str(ckpt), "metrics": str(out / METRICS),
        "plot": None if curves is None else str(curves),
    }))
    return 0


def sizes_of(net: funcnn.MLP | funcnn.Net) -> list[int] | None:
    """The MLP's layer widths; ``None`` for another net (``metrics.json``'s ``net`` says
    what it is)."""
    return list(net.sizes) if isinstance(net, funcnn.MLP) else None


def next_command(model: Path, data: str | None) -> str:
    """The ``funcnn evaluate`` command for ``model``, ready to paste: with the same
    ``--data`` as the training (the test images are in that folder), shell-quoted."""
    words = ["funcnn", "evaluate", "--checkpoint", str(model)]
    if data is not None:
        words += ["--data", data]
    return shlex.join(words)


def draw_curves(path: Path, history: dict, net, args, rows: dict, test: dict) -> Path | None:
    title = (f"MNIST, {rows['train']} training images: {describe_net(net)}, "
             f"{args.optimizer}, batch {args.batch_size}\n"
             f"test accuracy {100 * test['accuracy']:.2f}% ({rows['test']} images)")
    try:
        _plots.curves_figure(history, path, title=title, test=test,
                             dropout=drops_units(net))
    except ImportError:
        print(f"no {CURVES}: matplotlib is missing (pip install 'funcnn[examples]')",
              file=sys.stderr)
        return None
    return path
