"""Command-line interface (Typer): ``hybridrft train | eval | quickstart``."""
