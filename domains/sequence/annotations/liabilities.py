"""Liabilities (placeholder while being written)."""
LIABILITY_MOTIFS = {}
def liability_labels(*a, **k): raise NotImplementedError
