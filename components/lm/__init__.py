"""KFP component `lm` (component.py; see README.md)."""
