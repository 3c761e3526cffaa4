"""A small HTTP client for the labelq API (what `labelq submit/jobs/results` use)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from labelq.errors import LabelqError

_transient = retry(
    retry=retry_if_exception_type((httpx.TransportError,)),
    wait=wait_exponential(multiplier=0.5, max=10),
    stop=stop_after_attempt(6),
    reraise=True,
)


class ApiError(LabelqError):
    """The API answered with an error; `status` is its HTTP status."""

    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(
            str(body.get("error", body)), field=body.get("field"), line=body.get("line")
        )
        self.status = status
        self.body = body


def _upload(
    classifier: str, version: int | None, idempotency_key: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Query parameters and headers of a streamed JSONL job upload."""
    params: dict[str, Any] = {"classifier": classifier}
    if version is not None:
        params["version"] = version
    headers = {"Content-Type": "application/x-ndjson"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return params, headers


# A job's states once it has ended (`partial`: some items failed, the others have results).
ENDED = ("succeeded", "partial", "failed", "cancelled", "expired")


class LabelqClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> LabelqClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @_transient
    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self.http.request(method, url, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text}
            raise ApiError(response.status_code, body)
        return response.json()

    def create_classifier(self, spec_text: str, yaml: bool = True) -> dict[str, Any]:
        content_type = "application/yaml" if yaml else "application/json"
        return dict(
            self._request(
                "POST",
                "/v1/classifiers",
                content=spec_text.encode(),
                headers={"Content-Type": content_type},
            )
        )

    def submit_jsonl(
        self,
        path: Path,
        classifier: str,
        version: int | None = None,
        idempotency_key: str | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Stream a JSONL file as a job (the file is never read whole into memory); with
        `progress`, a progress bar for files over 1 MiB."""
        params, headers = _upload(classifier, version, idempotency_key)

        def body() -> Iterator[bytes]:
            from tqdm import tqdm

            size = path.stat().st_size
            with (
                open(path, "rb") as f,
                tqdm(
                    total=size,
                    unit="B",
                    unit_scale=True,
                    desc=f"upload {path.name}",
                    disable=not progress or size < 1 << 20,
                ) as bar,
            ):
                while chunk := f.read(1 << 16):
                    bar.update(len(chunk))
                    yield chunk

        return dict(
            self._request("POST", "/v1/jobs", params=params, content=body(), headers=headers)
        )

    def submit_records(
        self,
        path: Path,
        fmt: str,
        fields: dict[str, str],
        classifier: str,
        version: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Stream any supported file (CSV, Parquet, JSONL with renamed columns, stdin) as JSONL.
        A record that cannot be read is sent as a line the API reports with its number."""
        import json

        from labelq import formats
        from labelq.errors import InputError

        params, headers = _upload(classifier, version, idempotency_key)

        def body() -> Iterator[bytes]:
            lines: list[str] = []
            for record in formats.read(path, formats.detect(path, fmt), fields):
                if isinstance(record, InputError):
                    lines.append(json.dumps(f"unreadable record: {record}"))
                else:
                    lines.append(json.dumps(record[1], ensure_ascii=False, default=str))
                if len(lines) >= 1000:
                    yield ("\n".join(lines) + "\n").encode()
                    lines = []
            if lines:
                yield ("\n".join(lines) + "\n").encode()

        return dict(
            self._request("POST", "/v1/jobs", params=params, content=body(), headers=headers)
        )

    def classifier(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/classifiers/{name}"))

    def classifier_spec(self, name: str, version: int) -> dict[str, Any]:
        detail = self.classifier(name)
        if detail["latest_version"] == version:
            return dict(detail["latest"])
        return dict(self._request("GET", f"/v1/classifiers/{name}/versions/{version}")["spec"])

    def submit(self, classifier: str, items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return dict(
            self._request(
                "POST", "/v1/jobs", json={"classifier": classifier, "items": items, **extra}
            )
        )

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/jobs", params={"limit": limit})["data"])

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/jobs/{job_id}/cancel"))

    def wait(
        self, job_id: str, poll: float = 0.5, timeout: float | None = None, progress: bool = False
    ) -> dict[str, Any]:
        """Poll until the job finishes; with `progress`, show a progress bar."""
        from tqdm import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.job(job_id)
        with tqdm(
            total=job["total"], unit="item", desc=f"job {job_id[:8]}", disable=not progress
        ) as bar:
            while True:
                bar.total = job["total"]
                bar.n = job["succeeded"] + job["failed"]
                bar.refresh()
                if job["state"] in ENDED:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise LabelqError(f"job {job_id} still {job['state']} after {timeout}s")
                time.sleep(poll)
                job = self.job(job_id)

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's server-sent events, (event, data), until its `end`."""
        import json

        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, response.json())
            event = "message"
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    yield event, json.loads(line.partition(":")[2])
                    if event == "end":
                        return

    def follow(self, job_id: str, progress: bool = True) -> dict[str, Any]:
        """Wait for a job by its event stream (no polling); with `progress`, a progress bar."""
        from tqdm import tqdm

        job = self.job(job_id)
        with tqdm(
            total=job["total"], unit="item", desc=f"job {job_id[:8]}", disable=not progress
        ) as bar:
            for _, data in self.events(job_id):
                bar.total = data["total"]
                bar.n = data["succeeded"] + data["failed"]
                bar.refresh()
                job = data
        return job

    # -- pipelines -------------------------------------------------------------------------
    def create_pipeline(self, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("POST", "/v1/pipelines", json=spec))

    def pipelines(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/pipelines"))

    def pipeline(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/pipelines/{name}"))

    def update_pipeline(
        self, name: str, changes: dict[str, Any], watermark: str | None = None
    ) -> dict[str, Any]:
        """`watermark`: "keep" or "reset", needed when `changes` move the source or sink."""
        params = {"watermark": watermark} if watermark else {}
        return dict(self._request("PATCH", f"/v1/pipelines/{name}", json=changes, params=params))

    def set_watermark(
        self, name: str, order: Any, key: Any = None, type: str | None = None
    ) -> dict[str, Any]:
        """Set the position the next run reads after (`order` None clears it)."""
        body = {"order": order, "key": key, "type": type}
        return dict(self._request("PUT", f"/v1/pipelines/{name}/watermark", json=body))

    def run_pipeline(self, name: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/pipelines/{name}/run"))

    def pipeline_runs(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/v1/pipelines/{name}/runs", params={"limit": limit}))

    def set_labels(self, job_id: str, labels: dict[str, str]) -> dict[str, Any]:
        """Gold labels by custom_id; the answer reports what was rejected and why."""
        return dict(self._request("POST", f"/v1/jobs/{job_id}/labels", json=labels))

    def metrics(self, job_id: str, calibration: str | None = None) -> dict[str, Any]:
        params = {"calibration": calibration} if calibration else {}
        return dict(self._request("GET", f"/v1/jobs/{job_id}/metrics", params=params))

    def fit_calibration(self, classifier: str, **body: Any) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/classifiers/{classifier}/calibrations", json=body))

    def calibration(self, classifier: str, calibration_id: int) -> dict[str, Any]:
        return dict(
            self._request("GET", f"/v1/classifiers/{classifier}/calibrations/{calibration_id}")
        )

    def calibrations(self, classifier: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/v1/classifiers/{classifier}/calibrations"))

    def activate_calibration(self, classifier: str, calibration_id: int) -> dict[str, Any]:
        return dict(
            self._request(
                "POST", f"/v1/classifiers/{classifier}/calibrations/{calibration_id}/activate"
            )
        )

    def wait_calibration(
        self, classifier: str, calibration_id: int, poll: float = 0.5, timeout: float = 600
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (row := self.calibration(classifier, calibration_id))["status"] == "fitting":
            if time.monotonic() > deadline:
                raise LabelqError(f"calibration {calibration_id} still fitting after {timeout}s")
            time.sleep(poll)
        return row

    def results_jsonl(
        self,
        job_id: str,
        output: Path,
        calibration: str | None = None,
        progress: bool = False,
    ) -> int:
        """Stream all results to a JSONL file; returns the number of lines. With `progress`, a
        progress bar in results."""
        from tqdm import tqdm

        params: dict[str, str] = {"format": "jsonl"}
        if calibration:
            params["calibration"] = calibration
        lines = 0
        with self.http.stream("GET", f"/v1/jobs/{job_id}/results", params=params) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, response.json())
            with (
                open(output, "wb") as out,
                tqdm(unit="result", desc=f"results {job_id[:8]}", disable=not progress) as bar,
            ):
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    count = chunk.count(b"\n")
                    lines += count
                    bar.update(count)
        return lines

    def results(self, job_id: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every result row, following the pagination cursor."""
        cursor = None
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            page = self._request("GET", f"/v1/jobs/{job_id}/results", params=query)
            yield from page["data"]
            cursor = page["next_cursor"]
            if not cursor:
                return
