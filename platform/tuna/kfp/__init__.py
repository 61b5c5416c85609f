"""Kubeflow Pipelines, the third front door of DESIGN.md: the same library calls as ``tuna <verb>`` and ``dvc repro``,
one lightweight component per step (``components/``, package ``tuna_components``), wired by ``pipelines/tuna.py``
(package ``tuna_pipelines``). The only modules under ``platform/tuna`` that import ``kfp`` (inside functions).

* ``options.py``  - compile-time options (the recipe's ``cluster:`` section) and the names all parts share
* ``compile.py``  - ``tuna pipeline compile``: the versioned IR (golden copy in ``pipelines/compiled/``)
* ``submit.py``   - ``tuna pipeline submit --host URL``: a pipeline version and a run on a KFP host
* ``local.py``    - ``tuna pipeline run --local``: the same pipeline through ``kfp.local.SubprocessRunner``
* ``tasks.py``    - the task functions the components call (``run_<step>``, ``validate_inputs``, ``start_run``)
* ``validate.py`` - the first task: parameters and recipe checked, overrides resolved
* ``task_io.py``  - one-line task errors, results published into KFP artifacts, helpers the tasks share

Nothing is imported here: a pipeline pod imports ``tuna.kfp.tasks`` only.
"""
