"""People: faces without an identity grouped into provisional people (see clustering.py)."""
