"""KFP component `evaluate` (component.py; see README.md)."""
