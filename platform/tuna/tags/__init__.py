"""Tag mining: captions -> objects, attributes, entities and flat tags (spaCy), written per domain as parquet.

``tuna.tags.miner`` holds the rules, ``tuna.tags.io`` the corpus job (:func:`~tuna.tags.io.mine_corpus`,
:func:`~tuna.tags.io.load_tags`), ``tuna.tags.quality`` the scoring against the world's ground truth.
Importing this package loads nothing (spaCy is imported when a miner is built).
"""
