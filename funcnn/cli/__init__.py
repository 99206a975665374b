"""The ``funcnn`` command: train on MNIST, evaluate a checkpoint, check gradients.

    funcnn train --data DIR     # runs/mnist/: model.npz checkpoint.npz metrics.json curves.png
    funcnn train --model cnn --data DIR --out runs/cnn     # the small convolutional net
    funcnn evaluate --checkpoint runs/mnist/model.npz
    funcnn gradcheck --activation tanh

Installed as the ``funcnn`` script and runnable as ``python -m funcnn``. Each command
is a thin layer over the public API (``funcnn.fit``, ``funcnn.evaluate``,
``funcnn.save``/``load``, ``funcnn.data.load_mnist``, ``funcnn.testing.check_grads``).
A failure the user can fix is reported in one or two lines on stderr with exit code 2
(the command line is wrong) or 1 (anything else: files, data, environment, training).
"""

from __future__ import annotations

import os
import sys

import funcnn
from funcnn.cli import _evaluate, _gradcheck, _train
from funcnn.cli._common import CommandError, Parser, interrupt_later, versions

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    """The argument parser of ``funcnn`` and its three commands."""
    v = versions()
    parser = Parser(
        prog="funcnn",
        description="Functional neural networks on NumPy and JAX: train an MLP or a small "
                    "convolutional net on MNIST, evaluate it, or check the hand-written "
                    "gradients against autodiff.",
        epilog="Run 'funcnn COMMAND --help' for the flags of a command.",
    )
    parser.add_argument(
        "--version", action="version",
        version=f"funcnn {v['funcnn']} (numpy {v['numpy']}, jax {v['jax'] or 'not installed'}, "
                f"python {v['python']})",
    )
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for module in (_train, _evaluate, _gradcheck):
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``funcnn`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Whatever happens, the user sees one or two lines: Ctrl-C at any moment (also while
    jax is imported, before the command starts) exits 130.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("\nfuncnn: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    shadow = shadowing_folder()
    if shadow is not None:
        print(f"funcnn: error: the folder {shadow} (a clone of funcnn?) hides the installed "
              "funcnn package: Python imports that folder as 'funcnn'", file=sys.stderr)
        print("  hint: run python -m funcnn from another folder (e.g. inside the clone), "
              "or use the funcnn command", file=sys.stderr)
        return 1
    with interrupt_later():  # imports jax (to know whether it can): a second or more
        parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else 1
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("funcnn: error: choose a command: train, evaluate or gradcheck "
              "(see 'funcnn --help')", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except BrokenPipeError:  # `funcnn ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except MemoryError as err:
        failure = CommandError(f"out of memory ({err or 'MemoryError'})",
                               "choose smaller sizes (--hidden, --channels, --rows, --n-in, "
                               "--limit)")
    except CommandError as err:
        failure = err
    print(f"funcnn {args.command}: error: {failure}", file=sys.stderr)
    if failure.hint:
        print(f"  hint: {failure.hint}", file=sys.stderr)
    return failure.code


def shadowing_folder() -> str | None:
    """The folder imported as ``funcnn`` when it is not the package, else ``None``.

    From the folder that holds a clone named ``funcnn``, ``python -m funcnn`` finds that
    folder (the repository, with no ``__init__.py``) first and imports it as a namespace
    package, ahead of an editable install; the submodules still come from the install.
    """
    if getattr(funcnn, "__file__", None) is not None:
        return None
    return os.pathsep.join(list(getattr(funcnn, "__path__", None) or ["?"]))
