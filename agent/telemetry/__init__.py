"""Health telemetry on the agent: collectors of machine, GPU and inference metrics."""
