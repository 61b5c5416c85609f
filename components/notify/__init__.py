"""KFP component `notify` (component.py; see README.md)."""
