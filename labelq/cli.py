"""The `labelq` command line.

Here: the core's own commands, which need no service (`classify`, `calibrate eval`,
`settings`), and the commands that talk to a running service over HTTP through
`labelq.client` (`submit`, `jobs`, `results`, `pipelines`, `calibrate fit|list|export|activate`).
The packages above the core register the rest through the `labelq.commands` entry point group,
so the core imports none of them: `serve` and `demo` (embedded), `keys` (api), `worker` and
`beat` (worker), `db upgrade` (db).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from labelq import logs
from labelq.errors import LabelqError
from labelq.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _cmd_classify(args: argparse.Namespace, settings: Settings) -> int:
    from labelq.backends.vllm_backend import VllmBackend
    from labelq.classify import classify_file
    from labelq.formats import parse_mapping
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
            input_format=args.input_format,
            output_format=args.output_format,
            fields=parse_mapping(args.field),
            calibration_file=args.calibration,
            batch_size=args.batch_size or settings.batch_size,
            progress=not args.quiet and args.output != "-",
        )
    finally:
        backend.close()
    where = "stdout" if args.output == "-" else args.output
    print(f"wrote {report.written} results to {where} ({report.failed} failed)", file=sys.stderr)
    return 0


def _client(args: argparse.Namespace, settings: Settings) -> Any:
    from labelq.client import LabelqClient

    url = args.url or f"http://{settings.api_host}:{settings.api_port}"
    return LabelqClient(url, api_key=args.api_key or settings.api_key)


def _cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from labelq.formats import detect, parse_mapping

    fmt = detect(args.file, args.format)
    mapping = parse_mapping(args.field)
    with _client(args, settings) as client:
        if fmt == "jsonl" and not mapping and str(args.file) != "-":
            job = client.submit_jsonl(
                args.file, args.classifier, args.version, args.idempotency_key, progress=True
            )
        else:
            job = client.submit_records(
                args.file, fmt, mapping, args.classifier, args.version, args.idempotency_key
            )
        print(f"job {job['id']} {job['state']}: {job['total']} items", file=sys.stderr)
        if not args.wait:
            print(job["id"])
            return 0
        job = client.follow(job["id"], progress=True)
        output = args.output or Path(f"{job['id']}.results.jsonl")
        client.results_jsonl(job["id"], output, progress=True)
        print(
            f"job {job['state']}: {job['succeeded']} succeeded, {job['failed']} failed; "
            f"results in {output}",
            file=sys.stderr,
        )
        return 0 if job["state"] == "succeeded" else 1


def _cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        print(f"{'id':<38}{'state':<12}{'classifier':<24}{'done':>12}  created")
        for job in client.jobs(args.limit):
            done = f"{job['succeeded'] + job['failed']}/{job['total']}"
            print(
                f"{job['id']:<38}{job['state']:<12}{job['classifier']:<24}{done:>12}  "
                f"{job['created_at']}"
            )
    return 0


def _cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        output = args.output or Path(f"{args.job_id}.results.jsonl")
        lines = client.results_jsonl(
            args.job_id, output, calibration=args.calibration, progress=True
        )
        print(f"{lines} results written to {output}", file=sys.stderr)
    return 0


def _cmd_calibrate_eval(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from labelq.evaluate import evaluate_files, format_table

    values, notes = evaluate_files(args.input, args.labels, args.bins)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(values) if args.json else format_table(values))
    return 0


def _cmd_calibrate_fit(args: argparse.Namespace, settings: Settings) -> int:
    import json

    options = json.loads(args.options) if args.options else {}
    with _client(args, settings) as client:
        row = client.fit_calibration(
            args.classifier,
            method=args.method,
            job_id=args.job,
            holdout=args.holdout,
            seed=args.seed,
            options=options,
            activate=args.activate,
        )
        if args.wait:
            row = client.wait_calibration(args.classifier, row["id"])
        print(json.dumps(row, indent=2))
        return 0 if row["status"] != "failed" else 1


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _cmd_calibrate_list(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        print(
            f"{'id':>5}  {'v':>3}  {'method':<12}{'status':<9}{'active':<8}"
            f"{'ece before':>11}{'ece after':>11}"
        )
        for row in client.calibrations(args.classifier):
            before = (row["metrics"].get("before") or {}).get("ece")
            after = (row["metrics"].get("after") or {}).get("ece")
            print(
                f"{row['id']:>5}  {row['version']:>3}  {row['method']:<12}{row['status']:<9}"
                f"{'yes' if row['active'] else '':<8}{_fmt(before):>11}{_fmt(after):>11}"
            )
    return 0


def _cmd_calibrate_activate(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        row = client.activate_calibration(args.classifier, args.id)
        print(
            f"calibration {row['id']} ({row['method']}) is active for {row['classifier']} "
            f"version {row['version']}"
        )
    return 0


def _cmd_calibrate_export(args: argparse.Namespace, settings: Settings) -> int:
    import json

    with _client(args, settings) as client:
        row = client.calibration(args.classifier, args.id)
        detail = client.classifier(args.classifier)
        version = next(v for v in detail["versions"] if v["version"] == row["version"])
        labels = list(client.classifier_spec(args.classifier, version["version"])["labels"])
    exported = {
        "id": row["id"],
        "classifier": row["classifier"],
        "version": row["version"],
        "method": row["method"],
        "params": row["params"],
        "labels": labels,
    }
    text = json.dumps(exported, indent=2)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
        print(f"calibration {row['id']} written to {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0


def _cmd_pipelines(args: argparse.Namespace, settings: Settings) -> int:
    import json

    import yaml

    with _client(args, settings) as client:
        action = args.pipelines_command
        if action == "create":
            try:
                data = yaml.safe_load(args.file.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                raise LabelqError(f"cannot read {args.file}: {exc}") from None
            out: Any = client.create_pipeline(data)
        elif action == "list":
            for row in client.pipelines():
                last = row["last_run"] or {}
                print(
                    f"{row['name']:<24}{'enabled' if row['enabled'] else 'disabled':<10}"
                    f"{last.get('state', '-'):<11}{last.get('started_at', '')}"
                )
            return 0
        elif action == "show":
            out = client.pipeline(args.name)
        elif action == "run":
            out = client.run_pipeline(args.name)
        elif action == "runs":
            out = client.pipeline_runs(args.name, args.limit)
        else:
            out = client.update_pipeline(args.name, {"enabled": action == "enable"})
        print(json.dumps(out, indent=2))
    return 0


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="API base URL (default: http://LABELQ_API_HOST:LABELQ_API_PORT)")
    p.add_argument("--api-key", help="API key (default: LABELQ_API_KEY)")


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[Any]]:
    parser = argparse.ArgumentParser(
        prog="labelq", description="An LLM as a calibrated text classifier for batch work."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="engine messages and full tracebacks"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="score a file of items with a classifier spec")
    p.add_argument("--spec", required=True, type=Path, help="classifier spec (YAML or JSON)")
    p.add_argument("--input", required=True, help="JSONL, CSV or Parquet; - for stdin (JSONL)")
    p.add_argument("--output", required=True, help="results, in input order; - for stdout")
    p.add_argument("--input-format", choices=["jsonl", "csv", "parquet"], help="default: by name")
    p.add_argument("--output-format", choices=["jsonl", "csv", "parquet"], help="default: by name")
    p.add_argument(
        "--field",
        action="append",
        metavar="FIELD=COLUMN",
        help="take template field FIELD from column COLUMN (repeatable), e.g. text=review",
    )
    p.add_argument(
        "--calibration", type=Path, help="apply a calibration file (`labelq calibrate export`)"
    )
    p.add_argument("--model", help="model path or hub id (overrides the spec's)")
    p.add_argument("--batch-size", type=int, help="items per engine call")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_classify)

    p = sub.add_parser("submit", help="submit a file of items (JSONL, CSV, Parquet) as a job")
    p.add_argument("file", type=Path, help="- for stdin (JSONL)")
    p.add_argument("--format", choices=["jsonl", "csv", "parquet"], help="default: by name")
    p.add_argument("--field", action="append", metavar="FIELD=COLUMN", help="as for classify")
    p.add_argument("--classifier", required=True)
    p.add_argument("--version", type=int)
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="show progress, then write the results")
    p.add_argument("--output", type=Path, help="results file (with --wait)")
    _add_client_options(p)
    p.set_defaults(handler=_cmd_submit)

    p = sub.add_parser("jobs", help="list recent jobs")
    p.add_argument("--limit", type=int, default=20)
    _add_client_options(p)
    p.set_defaults(handler=_cmd_jobs)

    p = sub.add_parser("results", help="download a job's results as JSONL")
    p.add_argument("job_id")
    p.add_argument("--output", type=Path)
    p.add_argument("--calibration", help="none | active | <calibration id>")
    _add_client_options(p)
    p.set_defaults(handler=_cmd_results)

    pipes = sub.add_parser("pipelines", help="scheduled classification pipelines")
    pipe_sub = pipes.add_subparsers(dest="pipelines_command", required=True)
    p = pipe_sub.add_parser("create", help="store a pipeline from a YAML file")
    p.add_argument("file", type=Path)
    _add_client_options(p)
    p.set_defaults(handler=_cmd_pipelines)
    p = pipe_sub.add_parser("list", help="pipelines and their last run")
    _add_client_options(p)
    p.set_defaults(handler=_cmd_pipelines)
    for action, text in [
        ("show", "one pipeline (credentials masked)"),
        ("run", "run now"),
        ("runs", "its runs, newest first"),
        ("enable", "enable it"),
        ("disable", "disable it"),
    ]:
        p = pipe_sub.add_parser(action, help=text)
        p.add_argument("name")
        if action == "runs":
            p.add_argument("--limit", type=int, default=20)
        _add_client_options(p)
        p.set_defaults(handler=_cmd_pipelines)

    cal = sub.add_parser("calibrate", help="fit, list, activate and evaluate calibrations")
    cal_sub = cal.add_subparsers(dest="calibrate_command", required=True)
    p = cal_sub.add_parser("eval", help="metrics of a results file against gold labels")
    p.add_argument("--input", required=True, type=Path, help="results JSONL (classify output)")
    p.add_argument("--labels", required=True, type=Path, help='gold JSONL: {"custom_id", "label"}')
    p.add_argument("--bins", type=int, default=15)
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(handler=_cmd_calibrate_eval)
    p = cal_sub.add_parser("fit", help="fit a calibration on a job's gold-labelled results")
    p.add_argument("--classifier", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--job", help="job id (its items need gold labels for supervised methods)")
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--options", help="method options as JSON, e.g. '{\"alpha\": 0.1}'")
    p.add_argument("--activate", action="store_true")
    p.add_argument("--wait", action="store_true")
    _add_client_options(p)
    p.set_defaults(handler=_cmd_calibrate_fit)
    p = cal_sub.add_parser("list", help="a classifier's calibrations with their metrics")
    p.add_argument("--classifier", required=True)
    _add_client_options(p)
    p.set_defaults(handler=_cmd_calibrate_list)
    p = cal_sub.add_parser("export", help="a calibration as JSON, for classify --calibration")
    p.add_argument("--classifier", required=True)
    p.add_argument("id", type=int)
    p.add_argument("--output", "-o", type=Path, help="file (default: stdout)")
    _add_client_options(p)
    p.set_defaults(handler=_cmd_calibrate_export)
    p = cal_sub.add_parser("activate", help="make a calibration the active one")
    p.add_argument("--classifier", required=True)
    p.add_argument("id", type=int)
    _add_client_options(p)
    p.set_defaults(handler=_cmd_calibrate_activate)

    models = sub.add_parser("model", help="the model cache workers read")
    model_sub = models.add_subparsers(dest="action", required=True)
    p = model_sub.add_parser(
        "fetch",
        help="put a model (a hub id, or a folder) into a folder of the cache, recording its "
        "revision (a worker's init container, the compose file's `models` service)",
    )
    p.add_argument(
        "source", nargs="?", help="a hub id (org/name) or a folder (default: LABELQ_MODEL_SOURCE)"
    )
    p.add_argument(
        "--into", type=Path, help="the folder, e.g. /models/NAME (default: LABELQ_MODEL)"
    )
    p.add_argument(
        "--revision",
        help="a hub branch, tag or commit (default: LABELQ_MODEL_REVISION, else main); a "
        "folder's sha256:",
    )
    p.set_defaults(handler=_cmd_model_fetch)

    p = sub.add_parser("settings", help="every LABELQ_ setting with its default")
    p.add_argument("--format", choices=["env", "markdown"], default="env")
    p.set_defaults(handler=_cmd_settings)
    return parser, sub


def _cmd_model_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from labelq.models import fetch

    started = time.monotonic()
    source = args.source or settings.model_source
    if not source:
        raise LabelqError("no model source: pass SOURCE or set LABELQ_MODEL_SOURCE", field="source")
    into = args.into or (Path(settings.model) if settings.model else None)
    if into is None:
        raise LabelqError("no folder to fill: pass --into or set LABELQ_MODEL", field="into")
    manifest, fetched = fetch(source, into, args.revision or settings.model_revision or None)
    size = sum(manifest.files.values()) / 1e6
    print(
        f"{into}: {manifest.source} at {manifest.revision}, {len(manifest.files)} files, "
        f"{size:.1f} MB"
        + (f", fetched in {time.monotonic() - started:.1f} s" if fetched else ", already here"),
        flush=True,
    )
    return 0


def _cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    from labelq import settings_doc

    print(
        settings_doc.env_example() if args.format == "env" else settings_doc.markdown_table(),
        end="",
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser, sub = build_parser()
    for ep in entry_points(group="labelq.commands"):
        ep.load()(sub)
    args = parser.parse_args(argv)
    try:
        settings = Settings()
        logs.configure(args.verbose, json_lines=settings.log_format == "json")
        handler: Handler = args.handler
        return handler(args, settings)
    except LabelqError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; stopped cleanly", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with -v for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
