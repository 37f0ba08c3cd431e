"""A search from its command line: the parser derived from :class:`~search.options.SearchOptions`, the
``--config`` file, the run and its summary.

``scripts/search.py`` (:mod:`search.cli.search`) and the service's search process
(:mod:`search.service.worker`) both run :func:`main`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from search.options import (
    ConfigFileError,
    SearchOptions,
    first_error,
    options,
    read_config_file,
)
from search.values import OptionError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line (exit code 2), without the usage block."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def argparse_type(read: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from a reader of :mod:`search.values` (its reason becomes argparse's message)."""
    def parse(text: str) -> Any:
        try:
            return read(text)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = getattr(read, "__name__", "value")
    parse.read = read
    return parse


def command_line(*, prog: str = "search.py", description: str | None = None) -> OneLineParser:
    """The parser of a search's options: one argument per :class:`SearchOptions` field, plus ``--config``.

    Only the options given are in its namespace (the defaults are the model's).
    """
    parser = OneLineParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                           argument_default=argparse.SUPPRESS)
    for name, option in options().items():
        if option.kind == "boolean":
            parser.add_argument(option.flag, dest=name, action="store_true", help=option.help)
        elif option.names is not None:
            parser.add_argument(option.flag, dest=name, choices=option.choices, help=option.help)
        else:
            parser.add_argument(option.flag, dest=name, type=argparse_type(option.read), help=option.help)
    parser.add_argument("--config", help="TOML file of option values")
    return parser


def resolve_options(argv: list[str] | None, parser: argparse.ArgumentParser | None = None) -> SearchOptions:
    """Defaults, then ``--config``, then the command line (``out`` defaults to ``runs/<timestamp>``).

    Raises:
        SystemExit: A bad argument or a bad value in the ``--config`` file (one line, exit code 2).
        ConfigFileError: A ``--config`` file that cannot be read, or with unknown keys.
    """
    parser = parser or command_line()
    given = vars(parser.parse_args(argv))
    path = given.pop("config", None)
    values = read_config_file(path) if path is not None else {}
    try:
        SearchOptions.model_validate(values)  # a bad value in the file is refused, even where an option overrides it
        resolved = SearchOptions.model_validate({**values, **given})
    except ValidationError as exc:
        name, reason = first_error(exc, order=list(values))
        parser.error(f"argument {options()[name].flag if name in options() else name}: {reason}")
    if resolved.resume and resolved.out is None:
        parser.error("--resume needs --out RUN_FOLDER: the folder of the run to continue (or drop --resume)")
    if resolved.out is None:
        resolved = resolved.model_copy(update={"out": str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))})
    return resolved


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's intra-op threads of this process (None leaves torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def interrupted_message(prog: str, out: str) -> str:
    """What a search stopped before it wrote its outputs says: where its evaluations are and how to go on,
    or that nothing was evaluated (stopped while it loaded data, trained the base model or timed latency)."""
    from amc.errors import AmcError
    from search.history import read_history

    try:
        evaluated = bool(read_history(Path(out) / "history.csv"))
    except AmcError:  # a file that is not a history.csv: say where to look all the same
        evaluated = True
    if evaluated:
        return (f"{prog}: interrupted; every evaluated policy is in {out}/history.csv; continue with the same "
                f"options plus --resume --out {out}")
    return f"{prog}: interrupted before any policy was evaluated: nothing to resume (run it again to start over)"


def summary_table(result):
    """The run's summary: base, searched and baseline policies (with ``--select``, their test accuracy after
    the deploy recipe), the verdict as the caption, then the per-layer keep ratios."""
    from rich.table import Table

    deployed = result.deployed_test or {}
    recipe = (result.policy.meta.get("select") or {}).get("recipe", "fine-tune")
    table = Table(title=f"{result.policy.meta['strategy']} search: {result.out}",
                  caption=result.verdict.text() if result.verdict is not None else None)
    for name in ("", "val acc", "test acc", "cost ratio", *((f"test acc after {recipe}",) if deployed else ())):
        table.add_column(name, style="bold" if not name else None, justify="right" if name else "left")

    def row(label: str, val: str, test: str, cost: str, origin: str | None) -> None:
        after = (f"{deployed[origin]:.4f}" if origin in deployed else "",) if deployed else ()
        table.add_row(label, val, test, cost, *after)

    row("base model", f"{result.base_val_accuracy:.4f}", f"{result.base_test_accuracy:.4f}", "1.0000", None)
    searched_val = result.policy.metrics.get("search_val_accuracy", result.best.accuracy)  # the search's score, as uniform's
    row(f"searched policy ({result.best.origin})", f"{searched_val:.4f}", f"{result.test_accuracy:.4f}",
        f"{result.best.cost_ratio:.4f}", "best")
    row("uniform policy", f"{result.uniform.accuracy:.4f}", f"{result.uniform_test_accuracy:.4f}",
        f"{result.uniform.cost_ratio:.4f}", "baseline:uniform")
    if "baseline:tp-global" in deployed:
        row("Torch-Pruning global", "", "", "", "baseline:tp-global")
    dropped = result.policy.dropped
    layers = Table(title="per-layer keep ratios (channels)" + (f"; dropped blocks: {', '.join(dropped)}"
                                                             if dropped else ""))
    layers.add_column("layer")
    layers.add_column("searched", justify="right")
    layers.add_column("uniform", justify="right")
    for name, keep, uni in zip(result.layer_names, result.best.keep, result.uniform.keep):
        layers.add_row(name, f"{keep:.3f} ({result.policy.channels[name]})",
                       f"{uni:.3f} ({result.uniform_policy.channels[name]})")
    return table, layers


def main(argv: list[str] | None = None, *, prog: str = "search.py", description: str | None = None) -> int:
    """Runs the search a command line describes and prints its summary; returns the exit status."""
    parser = command_line(prog=prog, description=description)
    try:
        resolved = resolve_options(argv, parser)
    except ConfigFileError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.logging import RichHandler

    from amc.errors import AmcError

    console = Console(stderr=True)
    # The console shows warnings and errors; the run's INFO log goes to runs/<name>/run.log.
    console_handler = RichHandler(console=console, show_path=False, level=logging.WARNING)
    logging.basicConfig(level=logging.WARNING, handlers=[console_handler], format="%(message)s")
    try:
        config = resolved.to_config()
        set_threads(resolved.threads)
        from search.runner import run_search

        result = run_search(config)
    except AmcError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted_message(prog, resolved.out), file=sys.stderr)
        return 130
    out = Console()
    if hasattr(result, "summary"):  # a language model's sparsity search (search.lm.LMSearchResult)
        for item in result.summary():
            out.print(item)
        return 130 if result.interrupted else 0
    for table in summary_table(result):
        out.print(table)
    metrics = result.policy.metrics
    if "latency_ratio_measured" in metrics:
        exported = metrics.get("latency_ratio_measured_exported")
        out.print(f"FLOPs ratio {metrics['flops_ratio']:.4f}, latency ratio predicted "
                  f"{metrics['latency_ratio_predicted']:.4f}, measured {metrics['latency_ratio_measured']:.4f} "
                  f"({metrics['latency_ms_measured']:.3f} ms vs {metrics['base_latency_ms_measured']:.3f} ms)"
                  + (f", exported program {exported:.4f} ({metrics['latency_ms_measured_exported']:.3f} ms vs "
                     f"{metrics['base_latency_ms_measured_exported']:.3f} ms)" if exported is not None else ""))
    wrote_program = config.export and (result.out / "pruned.pt2").exists()
    out.print(f"wrote {result.out}/policy.json, history.csv, report.png, report.html"
              + (", pruned.pt2" if wrote_program else "") + f" in {result.seconds:.1f} s"
              + (" (interrupted: best so far)" if result.interrupted else ""))
    if result.interrupted:  # the outputs are written, but the search did not finish: say so in the exit status
        own = result.policy.meta.get("evaluations", result.evaluations)  # the strategy's own, as --evaluations counts
        count = f"{own} evaluation" + ("" if own == 1 else "s")
        print(f"{prog}: interrupted after {count}; continue with the same options plus --resume --out {result.out}",
              file=sys.stderr)
        return 130
    return 0
