"""Germline (placeholder while being written)."""
def germline_labels(*a, **k): raise NotImplementedError
def humanness_labels(*a, **k): raise NotImplementedError
