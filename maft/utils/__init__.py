"""Plumbing every layer may use: where things live (:mod:`.paths`) and the one progress-bar policy
(:mod:`.progress`)."""
