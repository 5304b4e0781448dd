"""`make demo`: runs the agent on the demo model and shows a chat through its OpenAI endpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent


def main() -> int:
    grpc_port = int(os.environ.get("OUTPOST_DEMO_GRPC_PORT", "50051"))
    http_port = int(os.environ.get("OUTPOST_DEMO_HTTP_PORT", "8080"))
    model = subprocess.run(
        [BIN / "outpost-agent", "demo-model"], check=True, capture_output=True, text=True
    ).stdout.strip()
    print(f"demo model: {model}")
    agent = subprocess.Popen(
        [
            BIN / "outpost-agent",
            "serve",
            "--model",
            model,
            "--alias",
            "smol",
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
        ]
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            for status in watch:
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    break
        base = f"http://127.0.0.1:{http_port}"
        question = "In one sentence, why run a language model on your own machines?"
        reply = httpx.post(
            f"{base}/v1/chat/completions",
            json={
                "model": "smol",
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 80,
                "temperature": 0,
            },
            timeout=120,
        ).json()
        print(f"\nuser> {question}\nsmol> {reply['choices'][0]['message']['content'].strip()}\n")
        print(f"OpenAI API:  {base}/v1  (model 'smol')")
        print(f"gRPC:        127.0.0.1:{grpc_port}  (outpost.v1.InferenceService)")
        print(
            f"Try: curl {base}/v1/chat/completions -H 'content-type: application/json' "
            '-d \'{"model":"smol","messages":[{"role":"user","content":"Hi"}]}\''
        )
        print("Press Ctrl-C to stop.")
        return agent.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)


if __name__ == "__main__":
    sys.exit(main())
