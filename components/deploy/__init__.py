"""KFP component `deploy` (component.py; see README.md)."""
