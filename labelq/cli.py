"""The `labelq` command line.

The core's own commands live here (`classify`, `calibrate eval`). Commands that need the service
(`serve`, `worker`, `db`, `submit`, ...) are registered by the service packages through the
`labelq.commands` entry point group, so the core imports none of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from labelq.errors import LabelqError
from labelq.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _cmd_classify(args: argparse.Namespace, settings: Settings) -> int:
    from labelq.backends.vllm_backend import VllmBackend
    from labelq.classify import classify_file
    from labelq.scoring import Scorer
    from labelq.spec import load_spec

    spec = load_spec(args.spec)
    model = args.model or spec.model or settings.model
    if not model:
        raise LabelqError("no model: set `model` in the spec, pass --model or set LABELQ_MODEL")
    backend = VllmBackend(model, settings)
    try:
        report = classify_file(
            Scorer(backend),
            spec,
            args.input,
            args.output,
            batch_size=args.batch_size or settings.batch_size,
            progress=not args.quiet,
        )
    finally:
        backend.close()
    print(
        f"wrote {report.written} results to {args.output} ({report.failed} failed)",
        file=sys.stderr,
    )
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Classify the bundled sample reviews end to end (the README's first command)."""
    from importlib.resources import files

    from labelq.demo_model import default_model

    samples = files("labelq") / "samples"
    settings.home.mkdir(parents=True, exist_ok=True)
    output = settings.home / "demo-results.jsonl"
    model = default_model(settings.model, settings.home)
    args = argparse.Namespace(
        spec=Path(str(samples / "sentiment.yaml")),
        input=Path(str(samples / "reviews.jsonl")),
        output=output,
        model=model,
        batch_size=None,
        quiet=False,
    )
    _cmd_classify(args, settings)
    _print_results(output)
    return 0


def _print_results(path: Path) -> None:
    import json

    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "error" in row:
            print(f"{row['custom_id']!s:<8} error (line {row.get('line')}): {row['error']}")
        else:
            probs = "  ".join(f"{k}={v:.3f}" for k, v in row["probs"].items())
            print(
                f"{row['custom_id']!s:<8} {row['label']:<10} conf={row['confidence']:.3f}  {probs}"
            )


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

    p = sub.add_parser("demo", help="classify bundled sample reviews (demo model if none is set)")
    p.set_defaults(handler=_cmd_demo)
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
