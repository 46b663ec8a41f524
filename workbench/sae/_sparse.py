"""Sparse kernels for dictionaries whose codes are mostly zero (TopK, BatchTopK, Matryoshka).

Dense SAE training spends five ``(batch x d x width)`` matrix products per step: encoder forward, decoder forward,
and three in the backward pass. With ``k`` active latents per token only the encoder forward needs to be dense:
the decoder forward, its backward, and the encoder's weight gradient touch just the ``batch x k`` active entries.
These two autograd functions compute exactly the same values and gradients as the dense formulation on the flat,
row-sorted list of active entries ``(rows, cols, values)``:

* sums of weighted rows (decoder forward, the weight gradients, the encoder input gradient) run as fused
  ``embedding_bag`` reductions, with no ``nnz x d`` temporary;
* the one dot product per active entry (gradient of the code values) runs as a sampled dense-dense product.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["sparse_decode", "selected_preacts", "weighted_row_sum", "entry_dots"]

def _offsets(group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Start offset of each group in a list sorted by ``group`` (``embedding_bag`` bag boundaries)."""
    counts = torch.bincount(group, minlength=n_groups)
    return torch.cumsum(counts, 0) - counts


def weighted_row_sum(group: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, table: torch.Tensor, n_groups: int, *, sorted_by_group: bool) -> torch.Tensor:
    """``out[g] = sum over entries e with group[e] == g of weights[e] * table[index[e]]``, shape ``(n_groups, d)``."""
    if not sorted_by_group:
        order = torch.argsort(group, stable=True)
        group, index, weights = group[order], index[order], weights[order]
    if index.numel() == 0:
        return table.new_zeros(n_groups, table.shape[1])
    return F.embedding_bag(index, table, _offsets(group, n_groups), mode="sum", per_sample_weights=weights.to(table.dtype))


def entry_dots(rows: torch.Tensor, cols: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``out[e] = left[rows[e]] . right[cols[e]]`` for row-sorted entries (a sampled dense-dense product).

    Runs as ``torch.sparse.sampled_addmm`` on a CSR pattern built from the entries, which computes only the sampled
    dot products.
    """
    if rows.numel() == 0:
        return left.new_empty(0)
    counts = torch.bincount(rows, minlength=left.shape[0])
    crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, cols, torch.zeros(cols.numel(), dtype=left.dtype, device=left.device),
                                          (left.shape[0], right.shape[0]), check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, left, right.t(), beta=0.0).values()


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, vals: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, w_dec: torch.Tensor, n_rows: int) -> torch.Tensor:
        ctx.save_for_backward(vals, rows, cols, w_dec)
        return weighted_row_sum(rows, cols, vals, w_dec, n_rows, sorted_by_group=True)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Any:
        vals, rows, cols, w_dec = ctx.saved_tensors
        grad_vals = entry_dots(rows, cols, grad_out, w_dec) if ctx.needs_input_grad[0] else None
        grad_w = weighted_row_sum(cols, rows, vals, grad_out, w_dec.shape[0], sorted_by_group=False) if ctx.needs_input_grad[3] else None
        return grad_vals, None, None, grad_w, None


def sparse_decode(vals: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, w_dec: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``codes @ w_dec`` for codes given as row-sorted active entries; ``w_dec`` is ``(width, d)``."""
    return _SparseDecode.apply(vals, rows, cols, w_dec, n_rows)  # type: ignore[no-any-return]


class _SelectedPreacts(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(x, w_enc, rows, cols)
        ctx.width = b_enc.shape[0]
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        x, w_enc, rows, cols = ctx.saved_tensors
        grad_x = weighted_row_sum(rows, cols, grad, w_enc, x.shape[0], sorted_by_group=True) if ctx.needs_input_grad[0] else None
        grad_w = weighted_row_sum(cols, rows, grad, x, w_enc.shape[0], sorted_by_group=False) if ctx.needs_input_grad[1] else None
        if ctx.needs_input_grad[2]:  # bincount takes float32 / float64 weights only (bf16 codes under autocast)
            wide = grad if grad.dtype in (torch.float32, torch.float64) else grad.float()
            grad_b = torch.bincount(cols, weights=wide, minlength=ctx.width).to(wide.dtype)
        else:
            grad_b = None
        return grad_x, grad_w, grad_b, None, None, None


def selected_preacts(
    x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """The pre-activations ``x @ w_enc.T + b_enc`` at the active entries, with their exact gradients.

    ``values`` are those entries already computed by the dense encoder forward (no recomputation); the backward
    pass only touches the active entries, so the encoder's weight gradient costs ``nnz x d`` instead of a dense
    ``batch x d x width`` product. ``w_enc`` is ``(width, d)``; entries must be sorted by row.
    """
    return _SelectedPreacts.apply(x, w_enc, b_enc, rows, cols, values)  # type: ignore[no-any-return]
