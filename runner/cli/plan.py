"""`treadle plan [BASE] [HEAD]`: what a change to the definitions folder does.

Without revisions: the working tree (uncommitted edits included) against HEAD. With
one: the working tree against it. With two: BASE against HEAD, both read from git.
Exit 0 when the plan was made, 2 on bad input (not a git repository, an unknown
revision), and with `--fail-on-breaks` 1 when the new revision breaks something.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    p = sub.add_parser("plan", help="what a commit changes in the workflows, and who it breaks")
    p.add_argument("base", nargs="?", default="HEAD", help="git revision to compare from (default HEAD)")
    p.add_argument("head", nargs="?", default=None, help="git revision to compare to (default: the working tree)")
    p.add_argument("--definitions", default=defaults["definitions"],
                   help=f"the definitions folder (default {defaults['definitions']}; env TREADLE_DEFINITIONS)")
    p.add_argument("--format", choices=["text", "json", "markdown", "github"], default="text",
                   help="markdown: a pull-request comment; github: GitHub Actions annotations")
    p.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    p.add_argument("--fail-on-breaks", action="store_true",
                   help="exit 1 when the new revision breaks another workflow or has problems")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from ..gitops.plan import has_breaks, plan_between
    from ..gitops.plan_format import as_github, as_markdown, as_text

    doc = plan_between(Path(args.definitions), args.base, args.head)
    labels, plan = doc.pop("labels"), doc["workflows"]
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    elif args.format == "markdown":
        print(as_markdown(plan, labels["base"], labels["head"]), end="")
    elif args.format == "github":
        print(as_github(plan, args.definitions), end="")
    else:
        print(as_text(plan, labels["base"], labels["head"]), end="")
    return 1 if args.fail_on_breaks and has_breaks(plan) else 0
