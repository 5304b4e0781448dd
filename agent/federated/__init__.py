"""Federated fine-tuning at a site: the Flower SuperNodes and the ClientApp."""
