"""Tag mining: captions -> objects, attributes, entities and flat tags (spaCy), written per domain as parquet.

``tuna.tags.miner`` runs the spaCy pipeline, ``tuna.tags.rules`` holds the rules, ``tuna.tags.io`` the
corpus job (:func:`~tuna.tags.io.mine_corpus`, :func:`~tuna.tags.io.load_tags`), ``tuna.tags.quality``
the scoring against the world's ground truth, ``tuna.tags.gold`` the scoring against hand-tagged
real-style captions.
Importing this package loads nothing (spaCy is imported when a miner is built).
"""
