"""The `labelq` command line.

The core's own commands live here (`classify`, `calibrate eval`). Commands that need the service
(`serve`, `worker`, `db`, `submit`, ...) are registered by the service packages through the
`labelq.commands` entry point group, so the core imports none of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import entry_points
from itertools import islice
from pathlib import Path
from typing import Any

from labelq.errors import LabelqError
from labelq.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _cmd_classify(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from labelq.backends.vllm_backend import VllmBackend
    from labelq.jsonl import count_lines, read_items
    from labelq.scoring import Item, ItemError, Scorer
    from labelq.spec import load_spec

    spec = load_spec(args.spec)
    model = args.model or spec.model or settings.model
    if not model:
        raise LabelqError("no model: set `model` in the spec, pass --model or set LABELQ_MODEL")
    batch_size = args.batch_size or settings.batch_size
    backend = VllmBackend(model, settings)
    scorer = Scorer(backend)
    written = failed = 0
    try:
        with open(args.input, "rb") as raw, open(args.output, "w", encoding="utf-8") as out:
            total = count_lines(raw)
            lines = (line.decode("utf-8", errors="replace") for line in raw)
            with tqdm(total=total, unit="item", desc="classify", disable=args.quiet) as bar:
                for batch in _batches(read_items(lines), batch_size):
                    items = [x for x in batch if isinstance(x, Item)]
                    scored = iter(scorer.score_batch(spec, items)) if items else iter(())
                    for entry in batch:
                        if isinstance(entry, Item):
                            row = next(scored)
                        else:
                            row = ItemError(line=entry.line, error=entry.message, field=entry.field)
                        if isinstance(row, ItemError):
                            failed += 1
                            payload = {"custom_id": row.custom_id, **row.model_dump(exclude={"custom_id"}, exclude_none=True)}
                        else:
                            payload = row.model_dump()
                        out.write(json.dumps(payload, ensure_ascii=False) + "\n")
                        written += 1
                    bar.update(len(batch))
    finally:
        backend.close()
    print(f"wrote {written} results to {args.output} ({failed} failed)", file=sys.stderr)
    return 0


def _batches(it: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while batch := list(islice(it, size)):
        yield batch


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[Any]]:
    parser = argparse.ArgumentParser(
        prog="labelq", description="An LLM as a calibrated text classifier for batch work."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="score a JSONL file with a classifier spec")
    p.add_argument("--spec", required=True, type=Path, help="classifier spec (YAML or JSON)")
    p.add_argument("--input", required=True, type=Path, help="JSONL, one item per line")
    p.add_argument("--output", required=True, type=Path, help="JSONL results, in input order")
    p.add_argument("--model", help="model path or hub id (overrides the spec's)")
    p.add_argument("--batch-size", type=int, help="items per engine call")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_classify)
    return parser, sub


def main(argv: Sequence[str] | None = None) -> int:
    parser, sub = build_parser()
    for ep in entry_points(group="labelq.commands"):
        ep.load()(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        handler: Handler = args.handler
        return handler(args, Settings())
    except LabelqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
