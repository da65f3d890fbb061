"""Fill the README's benchmark blocks from the files the benchmarks wrote: no figure is retyped by hand.

    python -m benchmarks.readme            # rewrite every block in README.md
    python -m benchmarks.readme --check    # exit 1 if a block differs from its file (or the file is missing)

A block is
    <!-- include: benchmarks/results/tasks.md -->
    ...whatever the file held when it was last included...
    <!-- end include -->
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from benchmarks._common import REPO

BLOCK = re.compile(r"(<!-- include: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.DOTALL)


def fill(text: str, root: Path) -> tuple[str, list[str]]:
    """``text`` with every block replaced by its file's content; and the blocks whose file is missing."""
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        path = root / match.group("path")
        if not path.is_file():
            missing.append(match.group("path"))
            return match.group(0)
        body = path.read_text(encoding="utf-8")
        return match.group(1) + body.rstrip("\n") + "\n" + match.group(4)

    return BLOCK.sub(replace, text), missing


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", default=str(REPO / "README.md"))
    parser.add_argument("--check", action="store_true", help="only report blocks that are out of date")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text(encoding="utf-8")
    filled, missing = fill(text, readme.parent)
    for path in missing:
        print(f"{readme}: block for {path} kept as it was: the file does not exist (run its benchmark)")
    if args.check:
        stale = filled != text
        print(f"{readme}: {'out of date: run python -m benchmarks.readme' if stale else 'up to date'}")
        return 1 if stale or missing else 0
    readme.write_text(filled, encoding="utf-8")
    print(f"{readme}: {len(BLOCK.findall(text))} blocks filled")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
