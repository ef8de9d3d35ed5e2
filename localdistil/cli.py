"""The ``localdistil`` command line. Each sub-command parses its arguments and calls one
library function, which is importable and tested on its own.

    localdistil records stats traces/*.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import LocaldistilError

EPILOG = """examples:
  localdistil records stats traces/three_digit_multiply.jsonl
"""


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="localdistil",
        description="Distil a Python function into a small local model: trace, train, dispatch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    records = commands.add_parser("records", help="inspect trace files")
    records_commands = records.add_subparsers(dest="records_command", metavar="SUBCOMMAND", required=True)
    stats = records_commands.add_parser(
        "stats",
        help="per function: records, distinct inputs, invalid lines, output schemas",
        epilog="example:\n  localdistil records stats 'traces/*.jsonl'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stats.add_argument("files", nargs="+", help="JSONL files, globs or directories")
    stats.add_argument("--strict", action="store_true", help="fail on the first invalid line")
    stats.set_defaults(handler=_records_stats)
    return parser


def _records_stats(args: argparse.Namespace) -> int:
    from .records import read_records, summarize_records

    record_set = read_records(args.files, strict=args.strict)
    print(f"{len(record_set.files)} file(s), {len(record_set.records)} record(s), "
          f"{len(record_set.problems)} invalid line(s)")
    for summary in summarize_records(record_set):
        print(f"\n{summary.function}")
        print(f"  records          {summary.records}")
        print(f"  distinct inputs  {summary.distinct_inputs}")
        if summary.without_args:
            print(f"  prompt only      {summary.without_args} (arguments not recoverable; trained on the recorded prompt)")
        print(f"  formats          {', '.join(f'{k} {v}' for k, v in sorted(summary.formats.items()))}")
        for schema, count in sorted(summary.schemas.items()):
            print(f"  output schema    {schema}: {count}")
    if record_set.problems:
        print("\ninvalid lines")
        for problem in record_set.problems[:50]:
            print(f"  {problem}")
        if len(record_set.problems) > 50:
            print(f"  ... and {len(record_set.problems) - 50} more")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = make_parser().parse_args(argv)
    try:
        return args.handler(args)
    except LocaldistilError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
