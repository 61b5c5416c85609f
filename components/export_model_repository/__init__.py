"""KFP component `export_model_repository` (component.py; see README.md)."""
