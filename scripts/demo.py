"""`make demo`: a control plane and a local agent enrolled to it over mutual TLS, serving the
demo model; shows a chat through the agent's OpenAI endpoint and where everything is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent
DEMO_DIR = Path(os.environ.get("OUTPOST_DEMO_DIR", ".demo")).resolve()
CP_HTTP, CP_GRPC, CP_MTLS = 8700, 8701, 8702
AGENT_HTTP = int(os.environ.get("OUTPOST_DEMO_HTTP_PORT", "8080"))
AGENT_GRPC = int(os.environ.get("OUTPOST_DEMO_GRPC_PORT", "50051"))


def wait_for_http(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    """Waits for a freshly started process to answer (with a deadline)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with status {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not start within 60 s")


def wait_serving(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        for status in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()):
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                return


def main() -> int:
    model = subprocess.run(
        [BIN / "outpost-agent", "demo-model"], check=True, capture_output=True, text=True
    ).stdout.strip()
    cp_dir, agent_dir = DEMO_DIR / "control-plane", DEMO_DIR / "agent"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        control_plane = subprocess.Popen(
            [
                BIN / "outpost",
                "serve",
                "--data-dir",
                str(cp_dir),
                "--http-port",
                str(CP_HTTP),
                "--grpc-port",
                str(CP_GRPC),
                "--mtls-port",
                str(CP_MTLS),
            ]
        )
        processes.append(control_plane)
        api = f"http://127.0.0.1:{CP_HTTP}/api/v1"
        wait_for_http(f"http://127.0.0.1:{CP_HTTP}/healthz", control_plane, "the control plane")
        key = (cp_dir / "admin-api-key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        agent_args = [
            BIN / "outpost-agent",
            "run",
            "--state-dir",
            str(agent_dir),
            "--grpc-port",
            str(AGENT_GRPC),
            "--http-port",
            str(AGENT_HTTP),
            "--inference-address",  # where the control plane's gateway forwards requests
            f"127.0.0.1:{AGENT_HTTP}",
        ]
        if not (agent_dir / "identity.json").exists():
            token = httpx.post(f"{api}/tokens", json={"site": "demo"}, headers=headers).json()
            fingerprint = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from common.certificates import fingerprint_of; "
                    "print(fingerprint_of(open(sys.argv[1], 'rb').read()))",
                    str(cp_dir / "ca" / "ca.pem"),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            agent_args += [
                "--control-plane",
                f"127.0.0.1:{CP_GRPC}",
                "--join-token",
                token["token"],
                "--ca-fingerprint",
                fingerprint,
            ]
        agent = subprocess.Popen(agent_args)
        processes.append(agent)
        deadline = time.monotonic() + 60
        agents: list[dict[str, object]] = []
        while not agents and time.monotonic() < deadline:
            agents = httpx.get(f"{api}/agents", headers=headers).json()["agents"]
            time.sleep(0.2)
        if not agents:
            raise SystemExit("the agent did not enroll within 60 s")
        agent_id = str(agents[0]["id"])
        # The demo model goes through the registry like any model: uploaded once (content
        # addressed: a re-run finds it), assigned to the site, fetched and verified by the agent.
        with Path(model).open("rb") as handle:
            imported = httpx.post(
                f"{api}/models",
                params={"name": "smollm2"},
                content=handle,
                headers={**headers, "Content-Type": "application/octet-stream"},
                timeout=300,
            )
        imported.raise_for_status()
        sha256 = imported.json()["sha256"]
        # Earlier demos set the model file directly; the registry version takes over its alias.
        httpx.put(
            f"{api}/agents/{agent_id}/desired-state/models", json={"models": []}, headers=headers
        ).raise_for_status()
        httpx.post(
            f"{api}/assignments",
            json={"model": f"sha256:{sha256}", "site": "demo", "alias": "smol",
                  "context_length": 2048},
            headers=headers,
        ).raise_for_status()  # fmt: skip
        row = None
        while time.monotonic() < deadline + 120:
            rows = httpx.get(f"{api}/rollouts", headers=headers).json()["rollouts"]
            row = next((r for r in rows if r["agent_id"] == agent_id), None)
            if row is not None and row["state"] in ("ready", "failed"):
                break
            time.sleep(0.2)
        if row is None or row["state"] != "ready":
            raise SystemExit(f"the demo model did not roll out: {row}")
        wait_serving(AGENT_GRPC)
        question = "In one sentence, why run a language model on your own machines?"
        reply = httpx.post(
            f"http://127.0.0.1:{AGENT_HTTP}/v1/chat/completions",
            json={
                "model": "smol",
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 80,
                "temperature": 0,
            },
            timeout=120,
        ).json()
        # A console login: created on the first run, given a new password on later ones.
        console_user = httpx.post(
            f"{api}/users", json={"name": "demo-admin", "role": "admin"}, headers=headers
        )
        if console_user.status_code == 409:
            console_user = httpx.put(f"{api}/users/demo-admin/password", json={}, headers=headers)
        console_user.raise_for_status()
        console_password = console_user.json()["password"]
        print(f"\nuser> {question}\nsmol> {reply['choices'][0]['message']['content'].strip()}\n")
        print(
            f"Console:            http://127.0.0.1:{CP_HTTP}/  (user demo-admin, password "
            f"{console_password}; more users: {BIN / 'outpost'} users create NAME --role viewer)"
        )
        print(f"Control plane API:  {api}  (OpenAPI: {api}/schema/openapi.json)")
        print(f"Admin API key:      {cp_dir / 'admin-api-key'}")
        print(
            f"Fleet:              OUTPOST_API_KEY=$(cat {cp_dir / 'admin-api-key'}) "
            f"{BIN / 'outpost'} --url http://127.0.0.1:{CP_HTTP} agents list"
        )
        print(
            f"Models:             ... {BIN / 'outpost'} models list; "
            f"{BIN / 'outpost'} rollout status"
        )
        print(
            f"Agent {agent_id[:8]}:     OpenAI API http://127.0.0.1:{AGENT_HTTP}/v1 "
            f"(model 'smol'), gRPC 127.0.0.1:{AGENT_GRPC}"
        )
        print(
            f"Gateway:            OpenAI API http://127.0.0.1:{CP_HTTP}/v1 once a routing policy "
            f"is applied ({BIN / 'outpost'} policy apply examples/routing-policy.yaml; callers "
            f"then need a key from {BIN / 'outpost'} inference-keys create)"
        )
        print(
            f"The agent reaches the control plane over mutual TLS on 127.0.0.1:{CP_MTLS}. "
            "Ctrl-C stops both."
        )
        return agent.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)


if __name__ == "__main__":
    sys.exit(main())
