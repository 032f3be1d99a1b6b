"""Deprecated: ``python -m tileseg.workflows MANIFEST ...`` is ``tileseg batch MANIFEST ...``.

The scheduled-job runner is part of the one CLI: ``tileseg batch`` takes its options (``--lock``,
``--local-workers``, ``--slurm-jobs`` and the ``--slurm-*`` settings, ``--wait-workers``,
``--wait-timeout``) besides every predict option. This alias forwards its arguments there, with
``--wait-workers 1`` first (its old default, which later arguments override), and will be
removed; the job definitions in ``workflows/`` call ``tileseg batch``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``tileseg batch`` with ``argv`` (default: this process's arguments); its exit code."""
    from tileseg.cli.main import cli

    args = list(sys.argv[1:] if argv is None else argv)
    print("python -m tileseg.workflows is deprecated; it runs: tileseg batch "
          "--wait-workers 1 ARGUMENTS", file=sys.stderr)
    try:
        cli.main(["batch", "--wait-workers", "1", *args], prog_name="tileseg")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
