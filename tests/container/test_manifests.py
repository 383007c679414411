"""The deployment files against the Kubernetes schemas and against the image they run.

config/kubernetes.yaml is validated offline (kubernetes-validate carries the schemas) and must
agree with the Dockerfile: port, probes, user, read-only root with a writable /tmp, and a
termination grace above the proxy's own drain. These run in every `python -m pytest`; the last
one also runs the manifest's config in the image, as the pod would.
"""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import requests
import yaml

from tests.container.engine import ROOT, container, mounted

MANIFEST = ROOT / "config" / "kubernetes.yaml"


def documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def kind(name: str) -> dict[str, Any]:
    return next(doc for doc in documents() if doc["kind"] == name)


def dockerfile() -> dict[str, Any]:
    """USER, EXPOSE, ENV, CMD and the HEALTHCHECK command of the Dockerfile's final stage."""
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    found: dict[str, Any] = {"ENV": {}, "EXPOSE": []}
    for line in lines:
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "FROM":
            found = {"ENV": {}, "EXPOSE": []}
        elif instruction == "USER":
            found["USER"] = rest.strip()
        elif instruction == "EXPOSE":
            found["EXPOSE"] += [int(port.split("/")[0]) for port in rest.split()]
        elif instruction == "ENV":
            found["ENV"].update(pair.split("=", 1) for pair in shlex.split(rest))
        elif instruction == "CMD":
            found["CMD"] = json.loads(rest)
        elif instruction == "HEALTHCHECK":
            found["HEALTHCHECK"] = json.loads(rest[rest.index(" CMD ") + 5 :])
    return found


def proxy_container() -> dict[str, Any]:
    containers = kind("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    proxy: dict[str, Any] = containers[0]
    return proxy


def test_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    version = kubernetes_validate.latest_version()  # bundled with the package: no network
    for doc in documents():
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    "breakage",
    ["containerPort as a string", "misspelled field", "probe without a handler"],
)
def test_the_validator_catches_a_broken_manifest(breakage: str) -> None:
    deployment = copy.deepcopy(kind("Deployment"))
    proxy = deployment["spec"]["template"]["spec"]["containers"][0]
    if breakage == "containerPort as a string":
        proxy["ports"][0]["containerPort"] = "8000"
    elif breakage == "misspelled field":
        proxy["readinesProbe"] = proxy.pop("readinessProbe")
    else:
        proxy["livenessProbe"]["httpGet"] = {"path": "/healthz"}  # no port
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_manifest_agrees_with_the_image() -> None:
    image = dockerfile()
    spec = kind("Deployment")["spec"]["template"]["spec"]
    proxy = proxy_container()
    # The port: the one the image listens on and exposes.
    cmd = image["CMD"]
    port = int(cmd[cmd.index("--port") + 1])
    assert image["EXPOSE"] == [port]
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"http": port}
    service = kind("Service")["spec"]["ports"]
    assert [p["targetPort"] for p in service] == ["http"]
    # The probes: readiness on /readyz (503 once draining), liveness on /healthz, like the
    # image's HEALTHCHECK.
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(image["HEALTHCHECK"])
    # The user: the image's, never root.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert str(spec["securityContext"]["runAsUser"]) == image["USER"] != "0"
    # A read-only root, /tmp writable (prometheus' multiprocess files with several workers).
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    assert proxy["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in proxy["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # The config: the ConfigMap's proxy.yaml lands where PROXY_CONFIG points.
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    config_path = Path(env.get("PROXY_CONFIG") or image["ENV"]["PROXY_CONFIG"])
    assert config_path == Path(image["ENV"]["PROXY_CONFIG"])
    assert "configMap" in volumes[mounts[str(config_path.parent)]]
    assert config_path.name in kind("ConfigMap")["data"]


def test_termination_grace_covers_the_drain() -> None:
    spec = kind("Deployment")["spec"]["template"]["spec"]
    config = yaml.safe_load(kind("ConfigMap")["data"]["proxy.yaml"])
    drain = float(config["shutdown_grace_seconds"])
    pre_stop = proxy_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pause = float(pre_stop[1])
    # The kubelet's countdown covers the preStop hook and then the proxy's drain.
    assert spec["terminationGracePeriodSeconds"] >= pause + drain + 5


def test_compose_file_agrees_with_the_image() -> None:
    spec = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name in ("proxy-1", "proxy-2"):
        proxy = spec["services"][name]
        assert proxy["read_only"] is True and "/tmp" in proxy["tmpfs"]
        default_grace = proxy["environment"]["PROXY_SHUTDOWN_GRACE_SECONDS"]
        drain = float(default_grace.removeprefix("${PROXY_SHUTDOWN_GRACE_SECONDS:-").rstrip("}"))
        assert float(proxy["stop_grace_period"].removesuffix("s")) > drain
        config = dockerfile()["ENV"]["PROXY_CONFIG"]
        assert any(volume.endswith(f":{config}:ro") for volume in proxy["volumes"])
    assert spec["services"]["nginx"]["ports"][0].endswith(":8080")


@pytest.mark.usefixtures("image")
def test_the_manifests_config_runs_in_the_image_as_the_pod_would(tmp_path: Path) -> None:
    proxy = proxy_container()
    user = kind("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    config = kind("ConfigMap")["data"]["proxy.yaml"]
    options = [*mounted(tmp_path, config), "--env", "OPENAI_API_KEY=sk-not-used"]
    options += ["--user", str(user), "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp"]
    with container(*options) as pod:
        for probe in ("readinessProbe", "livenessProbe"):
            path = proxy[probe]["httpGet"]["path"]
            assert requests.get(f"{pod.url}{path}", timeout=5).status_code == 200, probe
        models = requests.get(f"{pod.url}/v1/models", timeout=5).json()
        names = sorted(model["id"] for model in models["data"])
    assert names == sorted(yaml.safe_load(config)["models"])
