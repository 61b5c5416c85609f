"""KFP component `register_model` (component.py; see README.md)."""
