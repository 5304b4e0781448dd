"""Generated protobuf and gRPC stubs of Outpost's APIs (regenerate with protos/generate.py)."""
