"""KFP component `validate` (component.py; see README.md)."""
