"""The agent's content-addressed artifact store and its verified, resumable downloads."""
