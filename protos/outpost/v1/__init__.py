"""Outpost API version 1: generated stubs, committed beside their .proto sources."""
