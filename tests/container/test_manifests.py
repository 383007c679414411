"""The deployment files against the Kubernetes schemas and against the image they run.

config/kubernetes.yaml is validated offline (kubernetes-validate carries the schemas) and must
agree with the Dockerfile: port, probes, user, read-only root with a writable /tmp, and a
termination grace above the proxy's own drain; and the proxy's config must reach its Redis
through the manifest's Service. These run in every `python -m pytest`; the last one also runs
the manifest's config in the image next to Redis, as the pods would.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import requests
import yaml

from tests.container.engine import CONTAINER_LABEL, ROOT, container, mounted, podman

MANIFEST = ROOT / "config" / "kubernetes.yaml"
PROXY = "chat-stream-proxy"  # the name of the proxy's ConfigMap, Deployment and Service
# The manifest's example key: its digest is in the ConfigMap.
EXAMPLE_KEY = "sk-team-a-change-me"
# scripts/container-test.sh: the official redis:7, or a stand-in from Debian's redis-server.
REDIS_IMAGE = os.environ.get("PROXY_CONTAINER_REDIS_IMAGE", "")


def documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def kind(name: str, named: str = PROXY) -> dict[str, Any]:
    return next(
        doc for doc in documents() if doc["kind"] == name and doc["metadata"]["name"] == named
    )


def proxy_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(kind("ConfigMap")["data"]["proxy.yaml"])
    return config


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
    config = proxy_config()
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
        [mounted] = [v for v in proxy["volumes"] if v.endswith(f":{config}:ro")]
        # The replicas' config: limits in the compose file's Redis, which they depend on.
        limits = yaml.safe_load((ROOT / mounted.split(":")[0]).read_text())["limits"]
        url = urlsplit(limits["redis_url"])
        assert limits["backend"] == "redis" and url.port == 6379
        assert url.hostname in spec["services"] and url.hostname in proxy["depends_on"]
    assert spec["services"]["nginx"]["ports"][0].endswith(":8080")
    redis = spec["services"]["redis"]
    assert redis["read_only"] is True and redis["tmpfs"] == ["/data"]  # its working directory
    assert "ports" not in redis  # the replicas alone reach it, on the compose network
    command = redis["command"]
    assert command[command.index("--save") + 1] == "" and "--appendonly" in command


def test_redis_is_where_the_proxys_config_looks_for_it() -> None:
    """The proxy's redis_url names the Redis Service and its port; the Service selects the Redis
    pods, the NetworkPolicy lets the proxy's pods in; Redis keeps nothing, read-only."""
    limits = proxy_config()["limits"]
    assert limits["backend"] == "redis"
    url = urlsplit(limits["redis_url"])
    service = kind("Service", url.hostname or "")["spec"]
    deployment = kind("Deployment", url.hostname or "")["spec"]
    pod = deployment["template"]
    assert deployment["replicas"] == 1  # one store for every proxy replica
    assert service["selector"] == pod["metadata"]["labels"] == deployment["selector"]["matchLabels"]
    redis = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in redis["ports"]}
    [port] = service["ports"]
    assert port["port"] == url.port == ports[port["targetPort"]] == 6379
    args = redis["args"]
    assert args[0] == "redis-server"
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in redis["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/data"]]
    assert pod["spec"]["securityContext"]["runAsUser"] == 999  # the official image's redis
    policy = kind("NetworkPolicy", url.hostname or "")["spec"]
    assert policy["podSelector"]["matchLabels"] == pod["metadata"]["labels"]
    [allowed] = policy["ingress"]
    proxy_labels = kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert allowed["from"] == [{"podSelector": {"matchLabels": proxy_labels}}]
    # The example key's digest, as the comment says.
    digest = hashlib.sha256(EXAMPLE_KEY.encode()).hexdigest()
    assert [key["key_sha256"] for key in proxy_config()["keys"]] == [digest]


@contextmanager
def redis_as_the_pod_runs_it(network: str) -> Iterator[str]:
    """The manifest's Redis container (its user, args, read-only root and /data), reachable as
    its Service's name on ``network``; yields the container's name."""
    if not REDIS_IMAGE:
        pytest.fail("PROXY_CONTAINER_REDIS_IMAGE is not set: scripts/container-test.sh sets it")
    host = urlsplit(proxy_config()["limits"]["redis_url"]).hostname or ""
    pod = kind("Deployment", host)["spec"]["template"]["spec"]
    redis = pod["containers"][0]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    name = f"csp-test-redis-{uuid.uuid4().hex[:10]}"
    podman(
        "run", "--detach", "--name", name, "--label", CONTAINER_LABEL, "--network", network,
        "--network-alias", host, "--user", user, "--read-only", "--tmpfs", "/data",
        REDIS_IMAGE, *redis["args"],
    )  # fmt: skip
    try:
        probe = redis["readinessProbe"]["exec"]["command"]
        deadline = time.monotonic() + 10
        while podman("exec", name, *probe, check=False).strip() != "PONG":
            assert time.monotonic() < deadline, podman("logs", name, check=False)
            time.sleep(0.1)
        yield name
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


@pytest.mark.usefixtures("image")
def test_the_manifests_config_runs_in_the_image_as_the_pod_would(tmp_path: Path) -> None:
    """The proxy as its pod runs it, next to Redis as its pod runs it: probes, the models the
    example key may use; then Redis stopped: not ready (out of the Service) but alive (not
    restarted); started again: ready again."""
    proxy = proxy_container()
    user = kind("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    config = kind("ConfigMap")["data"]["proxy.yaml"]
    network = f"csp-test-{uuid.uuid4().hex[:10]}"
    podman("network", "create", "--label", CONTAINER_LABEL, network)
    try:
        options = [*mounted(tmp_path, config), "--env", "OPENAI_API_KEY=sk-not-used"]
        options += ["--user", str(user), "--read-only", "--read-only-tmpfs=false"]
        options += ["--tmpfs", "/tmp", "--network", network]
        with redis_as_the_pod_runs_it(network) as redis, container(*options) as pod:
            probes = {
                name: proxy[name]["httpGet"]["path"] for name in ("readinessProbe", "livenessProbe")
            }

            def probed() -> dict[str, int]:
                return {
                    name: requests.get(f"{pod.url}{path}", timeout=5).status_code
                    for name, path in probes.items()
                }

            up = probed()
            auth = {"Authorization": f"Bearer {EXAMPLE_KEY}"}
            models = requests.get(f"{pod.url}/v1/models", headers=auth, timeout=5).json()
            anonymous = requests.get(f"{pod.url}/v1/models", timeout=5).status_code
            podman("stop", "--time", "5", redis)
            down = probed()
            podman("start", redis)
            started = time.monotonic()
            while probed()["readinessProbe"] != 200:
                assert time.monotonic() - started < 10, "not ready 10 s after Redis started"
                time.sleep(0.2)
            print(f"\npod: ready again {time.monotonic() - started:.1f} s after Redis started")
    finally:
        podman("network", "rm", "--force", network, check=False)
    assert up == {"readinessProbe": 200, "livenessProbe": 200}
    assert down == {"readinessProbe": 503, "livenessProbe": 200}
    assert anonymous == 401
    names = sorted(model["id"] for model in models["data"])
    assert names == sorted(yaml.safe_load(config)["models"])
