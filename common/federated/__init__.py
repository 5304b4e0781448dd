"""Federated fine-tuning: what sites and the server exchange."""
