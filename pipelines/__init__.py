"""The TUNA pipeline's wiring (``tuna.py``), installed as the package ``tuna_pipelines`` (pyproject.toml maps this
folder); compiled IR lives in ``compiled/``. Compile with ``tuna pipeline compile`` (``tuna.kfp.compile``)."""
