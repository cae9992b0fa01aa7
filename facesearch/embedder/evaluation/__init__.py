"""Measuring embeddings, in numpy only: pair verification, identification, LFW protocol files."""
