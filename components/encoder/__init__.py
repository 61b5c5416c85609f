"""KFP component `encoder` (component.py; see README.md)."""
