"""gRPC side of the control plane: enrollment, the agents' control streams, the push hub."""
