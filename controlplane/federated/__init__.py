"""Federated LoRA fine-tuning jobs: specs, records, participant planning (run on Flower)."""
