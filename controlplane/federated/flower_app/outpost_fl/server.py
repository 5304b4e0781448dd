"""The ServerApp: runs on the control plane's SuperLink."""

from controlplane.federated.server_app import app

__all__ = ["app"]
