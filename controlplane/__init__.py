"""Outpost control plane: fleet registry, enrollment and policy (grows with later issues)."""
