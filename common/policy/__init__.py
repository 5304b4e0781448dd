"""The routing policy shared by agent and control plane: document, detectors, decisions."""
