"""REST API of the control plane (Litestar routes, authentication by API key)."""
