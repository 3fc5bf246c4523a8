"""``python -m hybridrft``: the same command line as the ``hybridrft`` console script (and what
``accelerate launch -m hybridrft train ...`` runs on every process)."""

from hybridrft.cli.main import app

if __name__ == "__main__":
    app(prog_name="hybridrft")
