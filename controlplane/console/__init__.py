"""The fleet console: server-rendered pages over the control plane's services."""
