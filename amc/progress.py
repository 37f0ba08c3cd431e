"""Rich progress bars for long work (training, evaluation sweeps, searches)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(*, enabled: bool = True, console: Console | None = None) -> Progress:
    """A progress bar with count, elapsed time and ETA; ``enabled=False`` shows nothing."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        disable=not enabled,
        console=console,
        transient=False,
    )
