"""KFP component `start_run` (component.py; see README.md)."""
