"""``python -m tileseg`` runs the CLI."""

from tileseg.cli.main import cli

if __name__ == "__main__":
    cli()
