"""The ClientApp: runs at each site's SuperNode."""

from agent.federated.client_app import app

__all__ = ["app"]
