"""Outpost agent: serves GGUF models with llama.cpp to a site's applications."""

__version__ = "0.1.0"
