"""`cuedpain participants declare|set|show`: the participants of a dataset and their group.

    cuedpain participants declare protocols/participants.yaml [--data DIR]
    cuedpain participants set P01 --field group=patient --field age=45 [--fields FILE] [--data DIR]
    cuedpain participants show [--data DIR]

Everything is checked against the fields the lab declared (experiment/outputs/participants.py);
bad input is one message naming the file or field and what it takes, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from experiment.errors import InputError
from experiment.cli.options import Subparsers

DEFAULT_DATA = Path("data")


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("participants", help="declare, set and show the participants' group and other fields "
                                            "(participants.tsv)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", parser_class=type(p))
    verbs.required = True
    declare = verbs.add_parser("declare", help="keep the lab's participant fields (a YAML file) in participants.json")
    declare.add_argument("fields_file", metavar="FIELDS.yaml")
    put = verbs.add_parser("set", help="set fields of one participant")
    put.add_argument("participant", metavar="ID")
    put.add_argument("--field", metavar="NAME=VALUE", action="append", default=[], required=True,
                     help="a declared field and its value (n/a clears it); repeat for several")
    put.add_argument("--fields", metavar="FILE", default=None,
                     help="the lab's field declaration (YAML), kept in participants.json; needed the first time")
    show = verbs.add_parser("show", help="print participants.tsv and the declared fields")
    for q in (declare, put, show):
        q.add_argument("--data", metavar="DIR", default=None, help=f"BIDS dataset root (default: {DEFAULT_DATA})")


def _show(root: Path) -> int:
    from experiment.outputs.participants import read_participants, subjects_with_data

    files = read_participants(root)
    out = sys.stdout
    if files.declaration is not None:
        out.write(f"fields declared in {files.declaration.source}:\n")
        for f in files.declaration.fields:
            out.write(f"  {f.name:<12} {f.allowed()}: {f.description}\n")
    if files.table is None:
        out.write(f"{root / 'participants.tsv'}: none yet\n")
    else:
        widths = [max(len(c), *(len(r[k]) for r in files.table.rows)) if files.table.rows else len(c)
                  for k, c in enumerate(files.table.columns)]
        for row in (files.table.columns, *files.table.rows):
            out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")
    listed = set(files.table.ids()) if files.table is not None else set()
    unlisted = [s for s in subjects_with_data(root) if s not in listed]
    if unlisted:
        out.write(f"not in participants.tsv yet (data, no row): {', '.join(unlisted)}\n")
    for name, problem in files.problems:
        out.write(f"problem: {name}: {problem}\n")
    return 0


def command(args: argparse.Namespace) -> int:
    """Exit 0 done, 2 bad input."""
    from experiment.outputs import participants

    root = Path(args.data) if args.data else DEFAULT_DATA
    if args.verb == "declare":
        decl = participants.declare_fields(root, Path(args.fields_file))
        sys.stdout.write(f"{root / participants.JSON_NAME}: fields {', '.join(decl.names)}\n")
        return 0
    if args.verb == "set":
        row = participants.set_participant(root, args.participant, participants.parse_assignments(args.field),
                                           fields_file=Path(args.fields) if args.fields else None)
        sys.stdout.write(f"{root / participants.TSV_NAME}: " + ", ".join(f"{k}={v}" for k, v in row.items()) + "\n")
        return 0
    return _show(root)
