"""Evaluation metrics: POPE, FINER exact match, MME-style scores and CHAIR, as pure functions.

``tuna.eval.pope`` (yes/no parsing shared with MME, per-split and averaged metrics), ``tuna.eval.finer``
(normalised exact match at three levels, token F1, the ATTRSEEK and direct prompts), ``tuna.eval.mme``
(accuracy, accuracy+ and score per subtask) and ``tuna.eval.chair`` (CHAIR_i, CHAIR_s, object recall).
They take strings, lists and dicts; nothing here loads a model, a tensor library or an engine.
"""
