"""``python -m warehouse serve|stop ...``: the embedded server's own entry point.

It imports the warehouse package only (no ingester, dbt or Airflow), so the server
process maps nothing the product's other commands need.
"""

from __future__ import annotations

import argparse
import sys

from . import commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m warehouse")
    actions = parser.add_subparsers(dest="action", required=True)
    commands.add_serve_arguments(actions.add_parser("serve", help=commands.SERVE_HELP))
    commands.add_stop_arguments(actions.add_parser("stop", help=commands.STOP_HELP))
    args = parser.parse_args(argv)
    return commands.serve(args) if args.action == "serve" else commands.stop(args)


if __name__ == "__main__":
    sys.exit(main())
