"""KFP component `build_index` (component.py; see README.md)."""
