"""One KFP component per step (``<step>/component.py``), installed as the package ``tuna_components``
(pyproject.toml maps this folder): ``from tuna_components.train.component import train``."""
