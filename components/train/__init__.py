"""KFP component `train` (component.py; see README.md)."""
