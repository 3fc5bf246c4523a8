"""What every command shares: log set-up and the one-line error a user sees for bad input."""

from __future__ import annotations

import logging
from typing import NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape


def fail(message: str) -> NoReturn:
    """Print ``error: message`` to stderr (unwrapped, so it can be copied) and exit with code 2."""
    # the message is text, not markup: "train.allow_config_changes=[method]" must print as written
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(2)


def setup_logging(verbose: bool) -> None:
    """Our INFO logs always (progress facts such as a one-time model conversion), everything with -v;
    transformers' own warnings and progress bars off."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,
    )
    logging.getLogger("hybridrft").setLevel(logging.INFO)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
