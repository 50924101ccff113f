"""``distributed-h5``: the command line, a thin layer over the Python API.

A user mistake (bad file, bad argument, unwritable output) prints one line to stderr and
exits with status 2, never a traceback; under a launcher every rank prints the same line.
TensorFlow is imported only by the commands that need it, and then without its start-up
noise (:mod:`distributed_h5.quiet`; ``DH5_TF_LOG=1`` shows it).

One module per command group, each with its parser beside its handler: :mod:`.data`
(make-synthetic, convert, inspect, inspect-checkpoint), :mod:`.train`, :mod:`.scoring`
(evaluate, predict), :mod:`.bench` (bench io, scaling, au) and :mod:`.doctor`. This module
holds what they share: :func:`main`, the policy from errors to exit statuses, the argument
types and the engine start. It imports no framework; a command imports what it needs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from ..checkpoints import EXIT_PREEMPTED
from ..data.dataset import DatasetError
from ..engines.collective import BACKENDS, ENGINES

EXIT_USAGE = 2
SEED_MAX = 2**63 - 1  # numpy takes any seed >= 0, Keras' seed generators an int64, the augmentation keys 64 bits
ENGINE_COMMANDS = ("train", "evaluate", "predict")  # the commands that start an engine (--engine)


# Argument types: each refuses a bad value in one line naming what is allowed.

def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _finite_positive(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _finite_non_negative(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _unit(text: str) -> float:
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text}")
        return value

    return parse


def _int_in(low: int, high: int):
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {text}")
        return value

    return parse


_positive = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _seed(text: str) -> int:
    """``--seed``: an integer in [0, 2**63 - 1], what every random stream seeded from it accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {SEED_MAX}], got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {SEED_MAX}] (2**63 - 1), got {text}")
    return value


def _rank_counts(text: str) -> list[int]:
    """``--ranks``: a comma-separated list of integers >= 1."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ValueError(f"--ranks must be comma-separated integers >= 1, e.g. 1,2,4,8. Received: {text!r}")
    return counts


# The parser: one line for a usage mistake, and every default shown in --help.

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and a pointer to --help), exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default after its help, unless the help already says it or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == [] \
            or action.default == argparse.SUPPRESS  # a flag's False and an unset option's None say nothing
        if "default" in text.lower() or nothing or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _command(commands, name: str, help: str, handler, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose handler is ``handler(args) -> exit status``."""
    command = commands.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter, **kwargs)
    command.set_defaults(handler=handler)
    return command


def _version() -> str:
    from .. import __version__

    return f"distributed-h5 {__version__}"


def _parser() -> argparse.ArgumentParser:
    from . import bench, data, doctor, scoring, train

    parser = _Parser(prog="distributed-h5", description=__doc__.splitlines()[0], formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)
    doctor.add_commands(commands)
    data.add_commands(commands)
    train.add_commands(commands)
    scoring.add_commands(commands)
    bench.add_commands(commands)
    return parser


# The engine: chosen (with Keras' backend) before Keras is imported, started before any model.

def _add_engine_argument(command) -> None:
    command.add_argument("--engine", choices=ENGINES, default=os.environ.get("DH5_ENGINE") or None,
                         help="horovod (Keras on TensorFlow; horovodrun, mpirun, srun) or jax (Keras on JAX; mpirun, "
                              "srun). Default: $DH5_ENGINE, else the one that fits $KERAS_BACKEND, else horovod")


def _add_tf_threads_argument(command, help: str) -> None:
    command.add_argument("--tf-threads", type=_positive, default=os.environ.get("DH5_TF_THREADS"), help=help)


def _engine_backend(engine: str | None) -> str:
    """The engine a command runs, with KERAS_BACKEND set to fit it before Keras is imported."""
    backend = os.environ.get("KERAS_BACKEND")
    if engine is None:
        engine = "jax" if backend == BACKENDS["jax"] else "horovod"
    if engine not in BACKENDS:
        raise ValueError(f"--engine (or DH5_ENGINE) must be one of {sorted(BACKENDS)}. Received: {engine!r}")
    if backend not in (None, "", BACKENDS[engine]):
        raise ValueError(f"--engine {engine} runs Keras on {BACKENDS[engine]}, but KERAS_BACKEND={backend}: "
                         f"unset KERAS_BACKEND or pick the engine that fits it")
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != BACKENDS[engine]:
        raise ValueError(f"--engine {engine} needs Keras on {BACKENDS[engine]}, and Keras was already imported "
                         f"on {sys.modules['keras'].backend.backend()} in this process")
    os.environ["KERAS_BACKEND"] = BACKENDS[engine]
    return engine


def _quiet_other_ranks() -> None:
    # Before TensorFlow loads: its C++ start-up logs, once per rank, drown rank 0's output.
    # No engine is initialised yet, so the launcher's variables are all there is.
    from ..engines.launcher import launcher_world

    try:
        launched = launcher_world()
    except ValueError:  # garbage in the launcher's variables: the command says so later
        return
    if launched is not None and launched[0] != 0:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _start_engine(args) -> None:
    """Before any model exists: JAX joins the other processes (it must, before it computes
    anything); TensorFlow takes its thread count (before it starts its thread pools: one
    thread per rank lets as many ranks as cores share a machine without oversubscribing it)."""
    if args.engine == "jax":
        from ..engines import init_engine

        init_engine("jax")
    elif args.tf_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(int(args.tf_threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(args.tf_threads))


def _rank() -> int:
    from ..engines.launcher import world

    return world()[0]


# Errors to exit statuses.

def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


ERROR_GRACE_SECONDS = 2.0


def _let_other_ranks_report() -> None:
    # A launcher kills every rank once one exits non-zero. Every rank meets a user mistake
    # (a bad file, a bad argument) within moments of the others; waiting a little before
    # exiting lets each print the same line instead of some being killed mid-way.
    from ..engines.launcher import launcher_world

    try:
        launched = launcher_world()
    except ValueError:  # the launcher's variables are garbage: nothing to wait for
        return
    if launched is not None and launched[1] > 1:
        time.sleep(ERROR_GRACE_SECONDS)


def _fail(command: str, exc: BaseException) -> int:
    print(f"distributed-h5 {command}: error: {_one_line(exc)}", file=sys.stderr, flush=True)
    _let_other_ranks_report()
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ENGINE_COMMANDS:
        try:
            args.engine = _engine_backend(args.engine)
        except ValueError as exc:
            return _fail(args.command, exc)
    if args.command in ("bench", "doctor") or (
            args.command in ENGINE_COMMANDS and args.engine == "horovod"):  # the commands that load TensorFlow: quietly, first
        from ..quiet import import_tensorflow

        try:
            import_tensorflow()
        except ImportError as exc:
            if args.command != "doctor":  # doctor reports it among its checks
                print(f"distributed-h5 {args.command}: error: TensorFlow cannot be imported ({_one_line(exc)}); "
                      "run `make install`", file=sys.stderr)
                return 1
    try:
        return args.handler(args)
    except (DatasetError, ValueError) as exc:
        return _fail(args.command, exc)
    except OSError as exc:  # an unreadable input or unwritable output the checks could not foresee
        return _fail(args.command, exc)
    except RuntimeError as exc:  # Horovod missing, a locked or unwritable checkpoint dir, a non-finite loss,
        status = getattr(exc, "exit_status", 1)  # or callbacks.Preempted (75: run again with --resume)
        if status == EXIT_PREEMPTED:
            print(f"distributed-h5 {args.command}: {_one_line(exc)}", file=sys.stderr)
            return status
        print(f"distributed-h5 {args.command}: error: {_one_line(exc)}", file=sys.stderr, flush=True)
        _let_other_ranks_report()
        return status
    except KeyboardInterrupt:
        return 130
