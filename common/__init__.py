"""Code that the agent and the control plane both run: domain types, errors, wire conversion."""
