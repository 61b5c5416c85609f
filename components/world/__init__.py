"""KFP component `world` (component.py; see README.md)."""
