"""Agent side of the control plane link: identity, enrollment, the control stream."""
