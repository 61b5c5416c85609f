"""Readers of the upstream formats, one module per format family.

Each reads the layout its upstream project publishes (img2dataset shards, LLaVA JSON, POPE's question files, MME's
release folders, FINER's jsonl, COCO annotations) as well as the bundled world's copy of it, so the same loader serves
both. :mod:`tuna.formats` re-exports them next to the writers. Schema errors raise
:class:`~tuna.errors.DataFormatError` with ``file:line`` and the fix; per-sample damage is skipped and counted.
"""
