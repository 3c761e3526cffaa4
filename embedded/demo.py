"""`labelq demo`: the README's first command. The embedded service on the demo model, the sample
reviews through a job, then (with SST-2 at hand) a calibration walkthrough: a temperature fitted
on the dev split through the API, and accuracy and ECE on the test split before and after."""

from __future__ import annotations

import json
import sys
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

from labelq.client import LabelqClient
from labelq.demo_model import find_sst2, read_sst2
from labelq.settings import Settings

STAGES = 5


def stage(number: int, text: str) -> None:
    print(f"\n[{number}/{STAGES}] {text}", flush=True)


def _sst2_job(
    client: LabelqClient, classifier: str, split: Path, folder: Path, timeout: float
) -> dict[str, Any]:
    """A job of one SST-2 split, with its gold labels stored."""
    rows = read_sst2(split)
    path = folder / f"{split.name}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, (_, text) in enumerate(rows):
            f.write(json.dumps({"custom_id": f"{split.suffix[1:]}-{i}", "text": text}) + "\n")
    job = client.submit_jsonl(path, classifier)
    job = client.wait(job["id"], progress=True, timeout=timeout)
    gold = {
        f"{split.suffix[1:]}-{i}": ("positive" if label == 1 else "negative")
        for i, (label, _) in enumerate(rows)
    }
    client.set_labels(job["id"], gold)
    return job


def run(settings: Settings, timeout: float) -> int:
    from api.server import BackgroundServer
    from embedded.app import embedded_app, stop_on_sigterm

    samples = files("labelq") / "samples"
    output = settings.home / "demo-results.jsonl"
    settings.no_auth = True  # its own server, on loopback, for this process alone
    stage(1, "the model")
    with stop_on_sigterm(), embedded_app(settings, preload=True) as app:
        stage(2, "the embedded service (API and an in-process worker on SQLite)")
        with BackgroundServer(app) as server, LabelqClient(server.url) as client:
            print(f"labelq at {server.url}, database {settings.resolved_database_url()}")
            created = client.create_classifier((samples / "sentiment.yaml").read_text())
            name = created["name"]
            print(f"classifier {name} version {created['version']}")

            stage(3, "the sample reviews, as a job")
            job = client.submit_jsonl(Path(str(samples / "reviews.jsonl")), name)
            job = client.wait(job["id"], progress=True, timeout=timeout)
            client.results_jsonl(job["id"], output)
            texts = _texts(samples)
            for row in client.results(job["id"]):
                if row["status"] == "succeeded":
                    text = texts.get(row["custom_id"], "")
                    print(f"  {row['label']:<9} {row['confidence']:.2f}  {text}")
                else:
                    print(f"  {row['status']} (line {row.get('line')}): {row.get('error')}")
            # One sample line names the wrong field on purpose: the job is `partial`, that line
            # an `input` failure; anything else is not what the demo expects.
            if job["state"] not in ("succeeded", "partial") or job["failures"].get("engine"):
                print(f"job {job['state']}: {job.get('error')}", file=sys.stderr)
                return 1
            print(f"job {job['state']}: {job['succeeded']} scored, failed {job['failures']}")

            sst2 = find_sst2(settings.data_dir)
            if sst2 is None:
                print("\nno SST-2 data found: skipping the calibration walkthrough")
                return 0
            with tempfile.TemporaryDirectory() as folder:
                stage(4, "calibration: SST-2 dev split as a job, a temperature fitted on it")
                dev = _sst2_job(client, name, sst2 / "stsa.binary.dev", Path(folder), timeout)
                fitted = client.fit_calibration(
                    name, method="temperature", job_id=dev["id"], holdout=0.0
                )
                fitted = client.wait_calibration(name, fitted["id"])
                if fitted["status"] != "ready":
                    print(f"calibration failed: {fitted['error']}", file=sys.stderr)
                    return 1
                print(f"temperature {fitted['params']['temperature']:.3f}; the samples under it:")
                for row in client.results(job["id"], calibration=str(fitted["id"])):
                    if row["status"] == "succeeded":
                        text = texts.get(row["custom_id"], "")
                        print(f"  {row['label']:<9} {row['confidence']:.2f}  {text}")

                stage(5, "measured on the SST-2 test split, as a job")
                test = _sst2_job(client, name, sst2 / "stsa.binary.test", Path(folder), timeout)
                before = client.metrics(test["id"], calibration="none")["metrics"]
                after = client.metrics(test["id"], calibration=str(fitted["id"]))["metrics"]
            print(f"  items      {before['n']}")
            print(f"  accuracy   {before['accuracy']:.3f}")
            print(f"  ECE        {before['ece']:.3f} uncalibrated -> {after['ece']:.3f} calibrated")
            print(f"  NLL        {before['nll']:.3f} -> {after['nll']:.3f}")
    print(
        f"\nnext: the sample results are in {output}; `labelq serve --embedded --no-auth` keeps "
        f"the service up, its API docs at http://{settings.api_host}:{settings.api_port}/docs"
    )
    return 0


def _texts(samples: Any) -> dict[str, str]:
    out = {}
    for line in (samples / "reviews.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        out[str(record.get("custom_id"))] = str(record.get("text", ""))
    return out
