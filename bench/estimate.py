"""Accuracy without labels, measured on SST-2 through the real service.

The embedded service on the demo model (trained on SST-2's training split, real vLLM, float32
unless LABELQ_DTYPE says otherwise): a temperature fitted on the dev split (20% held out, as a
user would, so the estimate knows how far the calibration is off), then test-split jobs (whole,
and shifted slices made from it: its shortest and longest thirds of reviews, and a 9-to-1
positive mix), each asked `GET .../estimated-performance` under that calibration and with none.
The estimate reads no label; the measured accuracy beside it comes from the gold labels
stored afterwards.

    .venv/bin/python bench/estimate.py [--home ~/.labelq]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SST2 = ROOT.parent / "shared" / "data" / "sst2"


def _rows(split: str) -> list[tuple[int, str]]:
    from labelq.demo_model import read_sst2

    return read_sst2(SST2 / f"stsa.binary.{split}")


def _job(client: Any, classifier: str, name: str, rows: list[tuple[int, str]], folder: Path) -> str:
    path = folder / f"{name}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, (_, text) in enumerate(rows):
            f.write(json.dumps({"custom_id": f"{name}-{i}", "text": text}) + "\n")
    job = client.wait(client.submit_jsonl(path, classifier)["id"], timeout=3600)
    assert job["state"] == "succeeded", job
    gold = {f"{name}-{i}": ("positive" if y == 1 else "negative") for i, (y, _) in enumerate(rows)}
    client.set_labels(job["id"], gold)
    return str(job["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path.home() / ".labelq")
    args = parser.parse_args()

    import httpx

    from api.server import BackgroundServer
    from embedded.app import embedded_app
    from labelq import logs
    from labelq.client import LabelqClient
    from labelq.settings import Settings

    logs.configure()  # as every labelq command: the engine's lines at WARNING

    settings = Settings(home=args.home, data_dir=SST2.parent, no_auth=True)
    test = _rows("test")
    by_length = sorted(test, key=lambda r: len(r[1]))
    third = len(test) // 3
    positives = [r for r in test if r[0] == 1]
    negatives = [r for r in test if r[0] == 0]
    slices = {
        "test": test,
        "test-short": by_length[:third],
        "test-long": by_length[-third:],
        "test-90%-positive": positives[:810] + negatives[:90],
    }
    samples = ROOT / "labelq" / "samples" / "sentiment.yaml"
    with (
        embedded_app(settings, preload=True) as app,
        tempfile.TemporaryDirectory() as folder,
        BackgroundServer(app) as server,
        LabelqClient(server.url) as client,
    ):
        name = client.create_classifier(samples.read_text())["name"]
        dev = _job(client, name, "dev", _rows("dev"), Path(folder))
        fit = client.fit_calibration(name, method="temperature", job_id=dev, holdout=0.2)
        fit = client.wait_calibration(name, fit["id"])
        assert fit["status"] == "ready", fit
        print(
            f"demo model {settings.model}; temperature {fit['params']['temperature']:.3f} "
            f"fitted on {fit['fitted_on']['n_fit']} dev items, "
            f"{fit['fitted_on']['n_holdout']} held out"
        )
        header = (
            f"{'slice':18s} {'calibration':11s} {'n':>5s} {'estimate':>8s} {'interval':>15s} "
            f"{'measured':>8s} {'error':>7s} {'covered':>7s} {'shift':>9s} {'conf PSI':>8s} "
            f"{'label PSI':>9s}"
        )
        print(header)
        for slice_name, rows in slices.items():
            job = _job(client, name, slice_name, rows, Path(folder))
            for choice in (str(fit["id"]), "none"):
                r = httpx.get(
                    f"{server.url}/v1/classifiers/{name}/estimated-performance",
                    params={"job": job, "calibration": choice},
                    timeout=600,
                ).json()
                e, m, v = r["estimate"], r["measured"], r["validity"]
                error = e["accuracy"] - m["accuracy"]
                covered = e["low"] <= m["accuracy"] <= e["high"]
                psi = (
                    f"{v['confidence_psi']:8.3f} {v['label_psi']:9.3f}"
                    if v["confidence_psi"] is not None
                    else f"{'-':>8s} {'-':>9s}"
                )
                print(
                    f"{slice_name:18s} {'temperature' if choice != 'none' else 'none':11s} "
                    f"{e['n']:5d} {e['accuracy']:8.3f} [{e['low']:.3f}, {e['high']:.3f}] "
                    f"{m['accuracy']:8.3f} {error:+7.3f} {'yes' if covered else 'NO':>7s} "
                    f"{v['shift']:>9s} {psi}"
                )


if __name__ == "__main__":
    main()
