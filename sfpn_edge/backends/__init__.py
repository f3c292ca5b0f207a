"""Inference backends behind one small protocol."""
