"""KFP component `mine_tags` (component.py; see README.md)."""
