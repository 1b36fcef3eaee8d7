"""Engines behind one interface (``base.py``); the server and sessions use nothing else."""
