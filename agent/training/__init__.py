"""Site-side federated LoRA fine-tuning: datasets, the GGUF model in torch, the trainer."""
