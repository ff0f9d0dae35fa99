"""The ``fm-callback`` command: ``report``, ``snapshot`` and ``view``."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fm-callback",
        description="Feature maps and dead filters of CNNs, from TensorBoard logs or images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    report = sub.add_parser("report", help="dead filters over time, read back from a run's event files")
    report.add_argument("logdir", help="a TensorBoard log directory (searched recursively)")
    report.add_argument("--json", action="store_true", help="print JSON instead of tables")
    report.add_argument("--plot", metavar="PNG", help="also save the dead-filter timeline picture here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        from .report import report_command

        return report_command(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
