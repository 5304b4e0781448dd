"""Inference backends behind one Protocol, and the text streaming they share."""
