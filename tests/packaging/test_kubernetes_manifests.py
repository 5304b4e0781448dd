"""packaging/kubernetes: schema-valid, consistent with the servers' flags, probes and hardening."""

from __future__ import annotations

import copy
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from agent.model_pool import BackendFactory
from agent.settings import (
    AgentSettings,
    ModelSettings,
    apply_environment,
    load_toml,
)
from agent.settings import (
    validate as validate_agent_settings,
)
from controlplane.cli import build_parser, build_settings
from controlplane.settings import ControlPlaneSettings
from tests.agent_harness import RunningAgent, agent_settings
from tests.conftest import CONTEXT_LENGTH, MODEL_ALIAS, empty_all_tables, llama_factory
from tests.controlplane_harness import RunningControlPlane, controlplane_settings
from tests.packaging.unit_files import project_version

ROOT = Path(__file__).resolve().parents[2]
MANIFEST_DIR = ROOT / "packaging" / "kubernetes"
MANIFESTS = sorted(p for p in MANIFEST_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
OPTIONAL = {"controlplane-agents-lb.yaml"}  # applied by hand, not by kustomization.yaml
# The oldest Kubernetes the docs name, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "1.37.0")
NAMESPACE = "outpost"
CONTROLPLANE_SERVICE_HOST = "outpost-controlplane.outpost.svc"
# A syntactically valid CA fingerprint: stands in for the one the admin's ConfigMap gives.
FINGERPRINT = "ab" * 32
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        docs = [d for d in yaml.safe_load_all(handle) if d is not None]
    assert docs, f"{path.name} holds no documents"
    assert all(isinstance(d, dict) for d in docs), path.name
    return docs


def all_documents() -> list[dict[str, Any]]:
    return [d for path in MANIFESTS for d in documents(path)]


def find(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in all_documents() if d["kind"] == kind and d["metadata"].get("name") == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
    return found[0]


def pod_spec(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(kind, name)["spec"]["template"]["spec"]
    return spec


def container(kind: str, name: str) -> dict[str, Any]:
    (only,) = pod_spec(kind, name)["containers"]
    assert isinstance(only, dict)
    return only


def container_ports(item: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: int(p["containerPort"]) for p in item["ports"]}


def probes(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        kind: item[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        if kind in item
    }


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion; a reference to an undefined variable fails the test."""

    def value(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"$({match.group(1)}) is not in the container's env"
        return env[match.group(1)]

    return _VAR.sub(value, text)


def mount_path(item: dict[str, Any], volume: str) -> str:
    (path,) = [m["mountPath"] for m in item["volumeMounts"] if m["name"] == volume]
    assert isinstance(path, str)
    return path


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [v for v in spec["volumes"] if v["name"] == name]
    assert isinstance(found, dict)
    return found


# --- schema -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_every_document_validates_strictly(path: Path, version: str) -> None:
    for doc in documents(path):
        validated = kubernetes_validate.validate(doc, version, strict=True)
        assert validated == version.rsplit(".", 1)[0]


def broken_wrong_type(deployment: dict[str, Any]) -> None:
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"


def broken_unknown_field(deployment: dict[str, Any]) -> None:
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}


def broken_missing_field(deployment: dict[str, Any]) -> None:
    del deployment["spec"]["template"]["spec"]["containers"][0]["name"]


@pytest.mark.parametrize(
    "breakage",
    [broken_wrong_type, broken_unknown_field, broken_missing_field],
    ids=["wrong-type", "unknown-field", "missing-field"],
)
def test_a_broken_manifest_is_rejected(breakage: Any) -> None:
    deployment = copy.deepcopy(find("Deployment", "outpost-controlplane"))
    kubernetes_validate.validate(copy.deepcopy(deployment), K8S_VERSIONS[-1], strict=True)
    breakage(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_the_manifests_namespace_first() -> None:
    (kustomization,) = documents(MANIFEST_DIR / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert resources[0] == "namespace.yaml"
    assert sorted(resources) == sorted(p.name for p in MANIFESTS if p.name not in OPTIONAL)


def test_everything_is_in_the_outpost_namespace() -> None:
    for doc in all_documents():
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


# --- images, secrets, hardening -------------------------------------------------------------


def workloads() -> list[dict[str, Any]]:
    kinds = {"Deployment", "StatefulSet", "DaemonSet"}
    found = [d for d in all_documents() if d["kind"] in kinds]
    assert len(found) == 3
    return found


def test_outpost_images_carry_the_project_version() -> None:
    version = project_version()
    images = {
        ("Deployment", "outpost-controlplane"): f"outpost/controlplane:{version}",
        ("DaemonSet", "outpost-agent"): f"outpost/agent:{version}",
    }
    for (kind, name), image in images.items():
        assert container(kind, name)["image"] == image
        assert find(kind, name)["metadata"]["labels"]["app.kubernetes.io/version"] == version
    dockerfile = (ROOT / "packaging" / "container" / "Dockerfile").read_text()
    assert f"ARG OUTPOST_VERSION={version}\n" in dockerfile
    assert dockerfile.count("--no-index --find-links /wheelhouse") == 2


_SECRET_NAME = re.compile(r"(?i)(password|passwd|token|secret|api.?key|fingerprint)")
_SECRET_VALUE = re.compile(r"opj_[A-Za-z0-9_-]{8,}|://[^/\s@]+:[^/\s@]+@|\b[0-9a-f]{64}\b")


def env_entries() -> Iterator[tuple[str, dict[str, Any]]]:
    for workload in workloads():
        for item in workload["spec"]["template"]["spec"]["containers"]:
            for entry in item.get("env", []):
                yield f"{workload['metadata']['name']}/{item['name']}", entry


def test_no_literal_secrets() -> None:
    sensitive = 0
    for where, entry in env_entries():
        if _SECRET_NAME.search(entry["name"]) or entry["name"] == "OUTPOST_DB_URL":
            sensitive += 1
            assert "value" not in entry, f"{where}: {entry['name']} has a literal value"
            ref = entry["valueFrom"].get("secretKeyRef") or entry["valueFrom"]["configMapKeyRef"]
            assert ref["name"], where
    assert sensitive >= 4  # the db url, two passwords, the CA fingerprint
    assert not [d for d in all_documents() if d["kind"] == "Secret"], "Secrets are the admin's"
    for path in MANIFESTS:
        assert _SECRET_VALUE.search(path.read_text()) is None, path.name


def test_the_secret_checks_can_fail() -> None:
    assert _SECRET_VALUE.search("postgresql+psycopg://outpost:hunter2@db/outpost")
    assert _SECRET_VALUE.search("token: opj_abcdefghijklmnop")
    assert _SECRET_NAME.search("POSTGRES_PASSWORD")


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("Deployment", "outpost-controlplane"),
        ("DaemonSet", "outpost-agent"),
        ("StatefulSet", "outpost-postgres"),
    ],
    ids=["controlplane", "agent", "postgres"],
)
def test_hardening_on_every_container(kind: str, name: str) -> None:
    spec = pod_spec(kind, name)
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] > 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    items = spec["containers"] + spec.get("initContainers", [])
    assert items
    for item in items:
        context = item["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, item["name"]
        assert context["readOnlyRootFilesystem"] is True, item["name"]
        assert context["runAsNonRoot"] is True, item["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, item["name"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, item["name"]
        assert context.get("privileged", False) is False, item["name"]
        assert item["resources"]["requests"]["memory"], item["name"]
        assert item["resources"]["limits"]["memory"], item["name"]
        # A read-only root needs a writable /tmp.
        assert mount_path(item, "tmp") == "/tmp"


# --- the control plane ----------------------------------------------------------------------


def controlplane_env() -> dict[str, str]:
    """The container's env with stand-ins for the values Secrets hold."""
    stand_ins = {
        "OUTPOST_DB_URL": "postgresql+psycopg://outpost@outpost-postgres:5432/outpost",
        "PGPASSWORD": "stand-in",
    }
    env: dict[str, str] = {}
    for entry in container("Deployment", "outpost-controlplane")["env"]:
        env[entry["name"]] = entry.get("value", stand_ins.get(entry["name"], ""))
        assert env[entry["name"]], entry["name"]
    return env


def manifest_controlplane_settings() -> ControlPlaneSettings:
    """What `outpost serve` makes of the Deployment's command and args."""
    item = container("Deployment", "outpost-controlplane")
    assert item["command"] == ["outpost"]
    env = controlplane_env()
    args = [expand(str(a), env) for a in item["args"]]
    assert args[0] == "serve"
    return build_settings(build_parser().parse_args(args))


def test_controlplane_ports_match_its_flags() -> None:
    settings = manifest_controlplane_settings()
    ports = container_ports(container("Deployment", "outpost-controlplane"))
    assert ports == {
        "http": settings.http_port,
        "enroll": settings.grpc_port,
        "mtls": settings.mtls_port,
        "fleet": settings.fleet_port,
    }
    assert 0 not in ports.values()
    assert settings.host == "0.0.0.0"
    service = find("Service", "outpost-controlplane")
    assert service["spec"]["selector"].items() <= (
        find("Deployment", "outpost-controlplane")["spec"]["template"]["metadata"]["labels"].items()
    )
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    external = find("Service", "outpost-controlplane-agents")
    for entry in external["spec"]["ports"]:
        assert entry["targetPort"] in ports
        assert entry["port"] == ports[entry["targetPort"]]
    assert "http" not in {p["targetPort"] for p in external["spec"]["ports"]}


def test_controlplane_runs_one_writer_on_postgresql_with_persistent_data() -> None:
    deployment = find("Deployment", "outpost-controlplane")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    settings = manifest_controlplane_settings()
    assert settings.effective_database_url.startswith("postgresql+psycopg://")
    item = container("Deployment", "outpost-controlplane")
    assert Path(mount_path(item, "data")) == settings.data_dir
    claim = volume(pod_spec("Deployment", "outpost-controlplane"), "data")
    claim_name = claim["persistentVolumeClaim"]["claimName"]
    assert find("PersistentVolumeClaim", claim_name)["spec"]["accessModes"] == ["ReadWriteOnce"]
    # The database URL and password come from the Secret PostgreSQL's password comes from.
    env = {e["name"]: e for e in item["env"]}
    assert env["OUTPOST_DB_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "outpost-db",
        "key": "url",
    }
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "outpost-db",
        "key": "password",
    }
    postgres = {e["name"]: e for e in container("StatefulSet", "outpost-postgres")["env"]}
    assert postgres["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "outpost-db",
        "key": "password",
    }
    assert CONTROLPLANE_SERVICE_HOST in settings.advertise_hosts


def test_postgres_service_matches_the_url_the_docs_give() -> None:
    service = find("Service", "outpost-postgres")
    (port,) = service["spec"]["ports"]
    assert port["port"] == 5432
    assert container_ports(container("StatefulSet", "outpost-postgres")) == {"postgres": 5432}
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    assert "postgresql+psycopg://outpost@outpost-postgres:5432/outpost" in docs


# --- the agent ------------------------------------------------------------------------------


def agent_config_text() -> str:
    text = find("ConfigMap", "outpost-agent-config")["data"]["agent.toml"]
    assert isinstance(text, str)
    return text


def agent_env() -> dict[str, str]:
    """The container's env with stand-ins for what the downward API and ConfigMaps give."""
    stand_ins = {"NODE_NAME": "gpu-node-1", "POD_IP": "10.1.2.3"}
    env: dict[str, str] = {}
    for entry in container("DaemonSet", "outpost-agent")["env"]:
        name = entry["name"]
        if "value" in entry:
            env[name] = expand(entry["value"], env)
        elif name == "OUTPOST_AGENT_CA_FINGERPRINT":
            env[name] = FINGERPRINT
        else:
            env[name] = stand_ins[name]
    return env


def manifest_agent_settings(tmp_path: Path) -> AgentSettings:
    """What `outpost-agent run --config` makes of the ConfigMap and the env."""
    config = tmp_path / "agent.toml"
    config.write_text(agent_config_text())
    settings = apply_environment(load_toml(config), agent_env())
    return validate_agent_settings(settings, managed=True)


def test_agent_ports_and_state_match_its_config(tmp_path: Path) -> None:
    settings = manifest_agent_settings(tmp_path)
    item = container("DaemonSet", "outpost-agent")
    assert container_ports(item) == {"http": settings.http_port, "grpc": settings.grpc_port}
    assert settings.host == "0.0.0.0"
    assert settings.inference_address == f"10.1.2.3:{settings.http_port}"
    assert settings.peer_address == f"10.1.2.3:{settings.grpc_port}"
    assert settings.ca_fingerprint == FINGERPRINT
    assert settings.join_token == ""  # from the per-node Secret file, never from the config
    assert settings.state_dir is not None
    assert mount_path(item, "state") == str(settings.state_dir)
    state = volume(pod_spec("DaemonSet", "outpost-agent"), "state")
    assert state["hostPath"] == {"path": str(settings.state_dir), "type": "Directory"}
    # The control plane it enrolls with: the Service, on the enrollment port, by a name that
    # is in the control plane's certificate.
    host, _, port = settings.control_plane.rpartition(":")
    cp = manifest_controlplane_settings()
    assert host in cp.advertise_hosts
    assert int(port) == cp.grpc_port
    service_ports = {
        p["name"]: p["port"] for p in find("Service", "outpost-controlplane")["spec"]["ports"]
    }
    assert service_ports["enroll"] == cp.grpc_port
    assert host == f"{find('Service', 'outpost-controlplane')['metadata']['name']}.{NAMESPACE}.svc"


def test_agent_runs_on_gpu_nodes() -> None:
    spec = pod_spec("DaemonSet", "outpost-agent")
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert container("DaemonSet", "outpost-agent")["resources"]["limits"]["nvidia.com/gpu"] == 1


def run_agent_command(tmp_path: Path, node: str, tokens: dict[str, str]) -> list[str]:
    """Runs the container's command with the token directory in tmp_path and a stand-in
    `outpost-agent` that prints its join token and arguments."""
    item = container("DaemonSet", "outpost-agent")
    shell, flag, script = item["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    token_dir = mount_path(item, "join-tokens")
    assert f'"{token_dir}/$NODE_NAME"' in script
    (tmp_path / "tokens").mkdir()
    for name, token in tokens.items():
        (tmp_path / "tokens" / name).write_text(token)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "outpost-agent"
    fake.write_text(
        "#!/bin/sh\nprintf 'token=%s\\n' \"${OUTPOST_AGENT_JOIN_TOKEN-unset}\"\n"
        'for arg in "$@"; do printf \'%s\\n\' "$arg"; done\n'
    )
    fake.chmod(0o755)
    done = subprocess.run(
        [shell, flag, script.replace(token_dir, str(tmp_path / "tokens"))],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "NODE_NAME": node},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.splitlines()


def test_agent_takes_its_own_nodes_join_token(tmp_path: Path) -> None:
    tokens = {"gpu-node-1": "opj_first\n", "gpu-node-2": "opj_second"}
    lines = run_agent_command(tmp_path, "gpu-node-2", tokens)
    assert lines[0] == "token=opj_second"
    args = lines[1:]
    assert args[:2] == ["run", "--config"]
    item = container("DaemonSet", "outpost-agent")
    assert args[2] == mount_path(item, "config")
    assert args == ["run", "--config", args[2]]


def test_an_enrolled_node_needs_no_token(tmp_path: Path) -> None:
    lines = run_agent_command(tmp_path, "gpu-node-3", {"gpu-node-1": "opj_first"})
    assert lines[0] == "token=unset"
    tokens = volume(pod_spec("DaemonSet", "outpost-agent"), "join-tokens")["secret"]
    assert tokens["optional"] is True


# --- probes against the real servers --------------------------------------------------------


def probe_target(item: dict[str, Any], probe: dict[str, Any]) -> tuple[str, str]:
    """The probe's path and the name of the container port it checks."""
    assert probe.get("scheme", "HTTP") == "HTTP"
    assert probe["port"] in container_ports(item), probe
    return probe["path"], probe["port"]


def test_controlplane_probes_answer_on_a_real_control_plane(
    tmp_path: Path, migrated_postgres_url: str
) -> None:
    item = container("Deployment", "outpost-controlplane")
    named = probes(item)
    assert set(named) == {"startupProbe", "livenessProbe", "readinessProbe"}
    empty_all_tables(migrated_postgres_url)  # a first start, as on a new install
    settings = controlplane_settings(tmp_path / "data", migrated_postgres_url)
    with RunningControlPlane(settings) as cp:
        listening = {
            "http": cp.ports.http,
            "enroll": cp.ports.grpc,
            "mtls": cp.ports.mtls,
            "fleet": cp.ports.fleet,
        }
        with httpx.Client(timeout=30) as client:
            for kind, probe in named.items():
                path, port_name = probe_target(item, probe)
                url = f"http://127.0.0.1:{listening[port_name]}{path}"
                response = client.get(url)
                assert response.status_code == 200, f"{kind} {url}: {response.status_code}"
            # The check can fail: a path the server does not serve is not 200.
            assert client.get(f"http://127.0.0.1:{cp.ports.http}/healthz-typo").status_code == 404


def gated(factory: BackendFactory, gate: threading.Event) -> BackendFactory:
    """Holds model loading until `gate` is set (the factory runs on a worker thread)."""

    def load(model: ModelSettings) -> Any:
        assert gate.wait(120), "the test never opened the gate"
        return factory(model)

    return load


def test_agent_probes_answer_on_a_real_agent(demo_model: Path) -> None:
    item = container("DaemonSet", "outpost-agent")
    named = probes(item)
    assert set(named) == {"startupProbe", "livenessProbe", "readinessProbe"}
    model = ModelSettings(path=demo_model, alias=MODEL_ALIAS, context_length=CONTEXT_LENGTH)
    gate = threading.Event()
    try:
        with RunningAgent(agent_settings([model]), gated(llama_factory(), gate)) as agent:
            listening = {"http": agent.ports.http, "grpc": agent.ports.grpc}
            with httpx.Client(timeout=30) as client:

                def status(kind: str) -> int:
                    path, port_name = probe_target(item, named[kind])
                    return client.get(f"http://127.0.0.1:{listening[port_name]}{path}").status_code

                # Loading: alive (not restarted), not ready (no traffic).
                assert status("startupProbe") == 200
                assert status("livenessProbe") == 200
                assert status("readinessProbe") == 503
                gate.set()
                agent.wait_until_serving()
                for kind in named:
                    assert status(kind) == 200, kind
    finally:
        gate.set()
