"""Generalization from weak supervision: weak-to-strong (:mod:`.weak_to_strong`), with PGR and
its bootstrap intervals in :mod:`.pgr` and the classifiers and losses in :mod:`.classifiers`."""
