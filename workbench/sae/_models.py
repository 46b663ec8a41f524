"""Sparse autoencoder architectures behind one interface.

Every dictionary reads activations in the model's units, normalises them (centre on the store mean, scale to unit
mean squared norm per dimension) when configured, encodes them to non-negative codes, and decodes back to the
model's units. ``forward`` returns a typed :class:`SAEOutput` with the reconstruction, the active codes and the
loss terms. Decoder rows are kept at unit norm by projection (:meth:`SparseAutoencoder.project_decoder`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Union

import numpy as np
import torch
from torch import nn

from ._config import SAEConfig
from ._sparse import selected_preacts, sparse_decode

if TYPE_CHECKING:  # pragma: no cover
    import numpy.typing as npt

__all__ = ["SparseAutoencoder", "SAEOutput", "SparseCodes"]

ArrayLike = Union[torch.Tensor, "npt.ArrayLike"]
"""What :meth:`SparseAutoencoder.encode` and friends take: a tensor, a numpy array or a (nested) list."""


class SparseCodes(NamedTuple):
    """Active latents of a batch as a flat list of entries (row-major)."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    n_rows: int

    def dense(self, width: int) -> torch.Tensor:
        out = torch.zeros(self.n_rows, width, dtype=self.values.dtype, device=self.values.device)
        out[self.rows, self.cols] = self.values
        return out


class SAEOutput(NamedTuple):
    """What :meth:`SparseAutoencoder.forward` returns."""

    x_hat: torch.Tensor
    """Reconstruction in the model's units, ``(batch, d_in)``."""
    codes: SparseCodes | None
    """Active latents (values in normalised units); ``None`` when :meth:`SparseAutoencoder.forward` was called with
    ``codes=False`` (listing them needs a host-device synchronisation, which the GPU training loop avoids)."""
    loss: torch.Tensor
    """Total training loss."""
    mse: torch.Tensor
    """Reconstruction error: squared error summed over dimensions, averaged over tokens (normalised units)."""
    sparsity: torch.Tensor
    """Sparsity penalty (L1 for ``relu``, L0 for ``jumprelu``; zero otherwise)."""
    aux: torch.Tensor
    """AuxK loss on dead latents (zero when none are dead or it is disabled)."""
    fired: torch.Tensor
    """Boolean ``(width,)``: the latents active on at least one token of the batch."""
    l0: torch.Tensor
    """Mean number of active latents per token (a 0-dim tensor, left on the device)."""


def _log_threshold_grad(z: torch.Tensor, theta: torch.Tensor, eps: float, grad: torch.Tensor, height: torch.Tensor | float) -> torch.Tensor:
    """Straight-through gradient for ``log_theta`` of a jump of ``height`` at ``theta``: the Dirac delta of the step is
    replaced by a rectangle kernel of width ``eps``, d/dtheta ~ -(height / eps) K((z - theta) / eps), then the chain
    rule through ``theta = exp(log_theta)``."""
    near = ((z - theta).abs() < eps / 2).to(z.dtype)
    return (-(height / eps) * near * grad).sum(0) * theta


class _JumpReLUStep(torch.autograd.Function):
    """Heaviside step ``H(z - theta)`` (the L0 count); only ``theta`` gets a (straight-through) gradient."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, log_theta: torch.Tensor, bandwidth: float) -> torch.Tensor:  # type: ignore[no-untyped-def]
        theta = log_theta.exp()
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[no-untyped-def]
        z, theta = ctx.saved_tensors
        return None, _log_threshold_grad(z, theta, ctx.bandwidth, grad, 1.0), None


class _JumpReLU(torch.autograd.Function):
    """``z * H(z - theta)``: gradient to ``z`` where active, straight-through kernel gradient to ``theta``."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, log_theta: torch.Tensor, bandwidth: float) -> torch.Tensor:  # type: ignore[no-untyped-def]
        theta = log_theta.exp()
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[no-untyped-def]
        z, theta = ctx.saved_tensors
        active = (z > theta).to(z.dtype)
        return grad * active, _log_threshold_grad(z, theta, ctx.bandwidth, grad, theta), None


class SparseAutoencoder(nn.Module):
    """One module for the five architectures; ``cfg.arch`` picks the activation and the loss.

    Parameters: ``W_enc`` and ``W_dec`` are both ``(width, d_in)`` (one row per latent), ``b_enc`` ``(width,)``,
    ``b_dec`` ``(d_in,)`` (the pre-encoder bias, in normalised units). Buffers: ``input_mean`` and ``input_scale``
    (normalisation), ``threshold`` (BatchTopK / Matryoshka inference threshold, see :meth:`calibrate_threshold`), and for JumpReLU the parameter
    ``log_threshold`` ``(width,)``.
    """

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, w = cfg.d_in, cfg.width
        dec = torch.randn(w, d)
        dec = dec / dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.clone())  # encoder initialised from the decoder transpose
        self.b_enc = nn.Parameter(torch.zeros(w))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("input_mean", torch.zeros(d))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("threshold", torch.zeros(()))
        if cfg.arch == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((w,), math.log(cfg.jumprelu_init_threshold)))
        self.free_decoder_norm = False
        """Training-time parametrisation (:meth:`start_free_norm`): the decoder's rows are directions ``W_dec /
        ||W_dec||`` and every code is scaled by its row's norm; :meth:`fold_decoder_norm` returns to unit rows."""

    # -- decoder-norm parametrisation --------------------------------------------------------------------------------
    @torch.no_grad()
    def start_free_norm(self, init_norm: float) -> None:
        """Train with free decoder row norms (as SAELens's ``rescale_acts_by_decoder_norm``): the rows are scaled to
        ``init_norm`` and the encoder set to their transpose, so the effective encoder starts at ``init_norm ** 2``
        and both move ``1 / init_norm`` times faster in direction under Adam than unit rows would."""
        self.W_dec.mul_(init_norm / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.W_enc.copy_(self.W_dec)
        self.free_decoder_norm = True

    @torch.no_grad()
    def fold_decoder_norm(self) -> None:
        """Fold the row norms into the encoder: the same codes and reconstructions with unit decoder rows, the form
        every other part of the workbench reads (JumpReLU thresholds apply to the scaled codes, so they stay)."""
        if not self.free_decoder_norm:
            return
        norms = self.W_dec.norm(dim=1).clamp_min(1e-12)
        self.W_enc.mul_(norms[:, None])
        self.b_enc.mul_(norms)
        self.W_dec.div_(norms[:, None])
        self.free_decoder_norm = False

    def _decoder(self) -> torch.Tensor:
        """Decoder rows as used: the parameter, or its directions under the free-norm parametrisation."""
        return self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12) if self.free_decoder_norm else self.W_dec

    def _code_scale(self, cols: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-latent code scale under the free-norm parametrisation (the decoder row norms), else None."""
        if not self.free_decoder_norm:
            return None
        norms = self.W_dec.norm(dim=1)
        return norms if cols is None else norms[cols]

    # -- units ------------------------------------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_scale if self.cfg.normalize else x

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.input_scale + self.input_mean if self.cfg.normalize else x

    def pre_acts(self, xn: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations of normalised inputs, ``(batch, width)``."""
        pre = torch.addmm(self.b_enc, xn - self.b_dec, self.W_enc.t())
        scale = self._code_scale()
        return pre if scale is None else pre * scale

    # -- inference ----------------------------------------------------------------------------------------------
    def as_input(self, x: ArrayLike) -> torch.Tensor:
        """``x`` as a tensor this SAE reads: a tensor is returned as it is; a numpy array (what the activation store
        returns, float16 included) or a nested list becomes a float32 tensor on the SAE's device."""
        if isinstance(x, torch.Tensor):
            return x
        return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.W_enc.device)

    @torch.no_grad()
    def encode(self, x: ArrayLike) -> torch.Tensor:
        """Dense non-negative codes ``(batch, width)`` of activations ``(batch, d_in)`` in model units (inference
        rule). ``x`` is a tensor, a numpy array or a list (:meth:`as_input`); the codes are a torch tensor on the
        SAE's device (``.cpu().numpy()`` for numpy)."""
        return self._select(self.pre_acts(self.normalize(self.as_input(x))), training=False).dense(self.cfg.width)

    @torch.no_grad()
    def encode_sparse(self, x: ArrayLike) -> SparseCodes:
        """The active latents of activations in model units as (row, column, value) entries, never densified
        (``x`` as in :meth:`encode`; the entries are torch tensors)."""
        return self._select(self.pre_acts(self.normalize(self.as_input(x))), training=False)

    @torch.no_grad()
    def decode(self, codes: ArrayLike) -> torch.Tensor:
        """Model-unit reconstruction ``(batch, d_in)`` of dense codes ``(batch, width)`` (a tensor, a numpy array or a
        list); returns a torch tensor."""
        return self.denormalize(self.as_input(codes) @ self._decoder() + self.b_dec)

    def _select(self, pre: torch.Tensor, *, training: bool) -> SparseCodes:
        """Active entries by the architecture's rule (values not yet differentiable)."""
        cfg, n = self.cfg, pre.shape[0]
        if cfg.arch == "topk":
            vals, idx = pre.topk(cfg.k, dim=1, sorted=False)
            keep = vals > 0
            rows = torch.arange(n, device=pre.device).repeat_interleave(cfg.k).view(n, cfg.k)
            return SparseCodes(rows[keep], idx[keep], vals[keep], n)
        if cfg.arch in ("batchtopk", "matryoshka") and training:
            flat_vals, flat_idx = pre.flatten().topk(min(cfg.k * n, pre.numel()), sorted=False)
            keep = flat_vals > 0
            flat_idx, flat_vals = flat_idx[keep], flat_vals[keep]
            flat_idx, order = flat_idx.sort()
            return SparseCodes(flat_idx // pre.shape[1], flat_idx % pre.shape[1], flat_vals[order], n)
        if cfg.arch in ("batchtopk", "matryoshka"):
            mask = pre > self.threshold
        elif cfg.arch == "jumprelu":
            mask = pre > self.log_threshold.exp()
        else:  # relu
            mask = pre > 0
        rows, cols = mask.nonzero(as_tuple=True)
        return SparseCodes(rows, cols, pre[rows, cols], n)

    @torch.no_grad()
    def calibrate_threshold(self, x: torch.Tensor, *, batch_size: int = 4096) -> float:
        """BatchTopK / Matryoshka: set the inference threshold so that ``x`` (model units) gets ``k`` active
        latents per token on average, i.e. the ``len(x) * k``-th largest pre-activation over ``x``.

        Calibrating once with the final weights avoids the lag of running averages taken while the weights moved.
        """
        target = len(x) * self.cfg.k
        candidates = []
        for start in range(0, len(x), batch_size):
            pre = self.pre_acts(self.normalize(x[start : start + batch_size])).flatten()
            candidates.append(pre.topk(min(target, pre.numel()), sorted=False).values)
        values = torch.cat(candidates).topk(target, sorted=False).values
        self.threshold.fill_(max(float(values.min()), 0.0))
        return float(self.threshold)

    # -- training ------------------------------------------------------------------------------------------------
    def forward(self, x: ArrayLike, *, sparsity_scale: float | torch.Tensor = 1.0, dead: torch.Tensor | None = None,
                aux_k: int = 0, aux_coeff: float = 0.0, kernels: str = "sparse", codes: bool = True) -> SAEOutput:
        """Reconstruct ``x`` (model units; a tensor, or a numpy array or list as in :meth:`encode`) and compute the
        loss terms (torch tensors).

        ``sparsity_scale`` ramps the L1 / L0 penalty during warm-up; ``dead`` (bool, ``(width,)``) marks the
        latents the AuxK loss may use, up to ``aux_k`` per token. ``kernels`` (TopK family): ``sparse`` decodes and
        back-propagates through the active entries only; ``dense`` scatters the codes into a ``batch x width`` matrix
        and uses dense matrix products (the same values and gradients; what GPUs run fastest). ``codes=False`` skips
        listing the active entries (:attr:`SAEOutput.codes` is then None), so nothing waits for the device.
        """
        cfg = self.cfg
        x = self.as_input(x)
        xn = self.normalize(x)
        if cfg.arch in ("relu", "jumprelu"):
            return self._forward_dense_activation(x, xn, sparsity_scale, codes)
        if kernels == "dense":
            return self._forward_dense_topk(xn, dead, aux_k, aux_coeff, codes)
        if kernels != "sparse":
            raise ValueError(f"kernels must be 'sparse' or 'dense', not {kernels!r}")
        n = xn.shape[0]
        zero = xn.new_zeros(())
        with torch.no_grad():
            pre = self.pre_acts(xn)
            sel = self._select(pre, training=self.training)
        xc = xn - self.b_dec
        decoder = self._decoder()
        vals = self._selected(xc, sel.rows, sel.cols, sel.values)
        active = SparseCodes(sel.rows, sel.cols, vals.detach(), n)
        if cfg.arch == "matryoshka":
            loss, mse, err = self._matryoshka_loss(xn, vals, sel, decoder)
        else:
            xn_hat = sparse_decode(vals, sel.rows, sel.cols, decoder, n) + self.b_dec
            err = xn_hat - xn
            mse = err.pow(2).sum(1).mean()
            loss = mse
        aux = self._aux_loss(pre, err.detach(), xc, dead, aux_k, decoder) if dead is not None and aux_k > 0 and aux_coeff > 0 else zero
        loss = loss + aux_coeff * aux
        fired = torch.zeros(cfg.width, dtype=torch.bool, device=xn.device)
        fired[sel.cols] = True
        l0 = torch.tensor(len(sel.cols) / max(n, 1), device=xn.device)
        return SAEOutput(self.denormalize(xn + err), active if codes else None, loss, mse, zero, aux, fired, l0)

    def _forward_dense_activation(self, x: torch.Tensor, xn: torch.Tensor, sparsity_scale: float | torch.Tensor,
                                  codes: bool) -> SAEOutput:
        """ReLU and JumpReLU: every latent is computed, so the codes are a dense matrix either way."""
        cfg = self.cfg
        pre = self.pre_acts(xn)
        if cfg.arch == "relu":
            codes_dense = torch.relu(pre)
            # L1 weighted by decoder norms (they are kept at one, but the weighting keeps the loss honest).
            sparsity = (codes_dense * self._decoder().norm(dim=1)).sum(1).mean() * cfg.l1_coeff * sparsity_scale
        else:
            codes_dense = _JumpReLU.apply(pre, self.log_threshold, cfg.jumprelu_bandwidth)
            l0_soft = _JumpReLUStep.apply(pre, self.log_threshold, cfg.jumprelu_bandwidth).sum(1).mean()
            sparsity = l0_soft * cfg.l1_coeff * sparsity_scale
        xn_hat = codes_dense @ self._decoder() + self.b_dec
        active = codes_dense.detach() > 0
        listed = None
        if codes:
            rows, cols = active.nonzero(as_tuple=True)
            listed = SparseCodes(rows, cols, codes_dense.detach()[rows, cols], xn.shape[0])
        err = xn_hat - xn
        mse = err.pow(2).sum(1).mean()
        return SAEOutput(self.denormalize(xn + err), listed, mse + sparsity, mse, sparsity, xn.new_zeros(()),
                         active.any(0), active.sum(1).float().mean())

    def _forward_dense_topk(self, xn: torch.Tensor, dead: torch.Tensor | None, aux_k: int, aux_coeff: float,
                            codes: bool) -> SAEOutput:
        """The TopK family with dense products: the same selection, values and gradients as the sparse kernels,
        but codes scattered into a ``batch x width`` matrix (under autocast, the products run in its dtype)."""
        cfg = self.cfg
        n, w = xn.shape[0], cfg.width
        pre = self.pre_acts(xn)
        chosen: tuple[torch.Tensor, torch.Tensor] | None = None  # (latent of each chosen slot, whether it is active)
        if cfg.arch == "topk":
            vals, idx = pre.topk(cfg.k, dim=1, sorted=False)
            z = torch.zeros_like(pre).scatter(1, idx, torch.relu(vals))
            chosen = (idx.flatten(), vals.detach().flatten() > 0)
        elif self.training:  # batchtopk, matryoshka: the k * n largest pre-activations of the batch
            flat_vals, flat_idx = pre.flatten().topk(min(cfg.k * n, pre.numel()), sorted=False)
            z = torch.zeros_like(pre).flatten().scatter(0, flat_idx, torch.relu(flat_vals)).view(n, w)
            chosen = (flat_idx % w, flat_vals.detach() > 0)
        else:
            z = pre * (pre > self.threshold)
        decoder = self._decoder()
        if cfg.arch == "matryoshka":
            recon = self.b_dec.expand(n, -1)
            losses, start = [], 0
            for end in cfg.matryoshka_groups:
                recon = recon + z[:, start:end] @ decoder[start:end]
                losses.append((recon - xn).pow(2).sum(1).mean())
                start = end
            err = recon - xn
            loss, mse = torch.stack(losses).mean(), losses[-1]
        else:
            err = z @ decoder + self.b_dec - xn
            mse = err.pow(2).sum(1).mean()
            loss = mse
        zero = xn.new_zeros(())
        aux = zero
        if dead is not None and aux_k > 0 and aux_coeff > 0:
            aux = self._aux_loss_dense(pre, err.detach(), dead, min(aux_k, w), decoder)
            loss = loss + aux_coeff * aux
        listed = None
        if codes:
            rows, cols = (z.detach() > 0).nonzero(as_tuple=True)
            listed = SparseCodes(rows, cols, z.detach()[rows, cols].float(), n)
        if chosen is not None:  # from the chosen slots (batch x k), not another pass over the batch x width codes
            latent, on = chosen
            fired = torch.zeros(w, dtype=torch.float32, device=z.device).scatter_reduce_(0, latent, on.float(), "amax") > 0
            l0 = on.sum().float() / max(n, 1)
        else:
            active = z.detach() > 0
            fired, l0 = active.any(0), active.sum(1).float().mean()
        return SAEOutput(self.denormalize(xn + err), listed, loss, mse, zero, aux, fired, l0)

    @staticmethod
    def _aux_loss_dense(pre: torch.Tensor, err: torch.Tensor, dead: torch.Tensor, k: int, decoder: torch.Tensor) -> torch.Tensor:
        """AuxK as :meth:`_aux_loss`, without a host synchronisation: the top ``k`` of the dead latents' positive
        pre-activations (live latents masked to -inf, so they never count), decoded densely; zero when none fire."""
        with torch.no_grad():
            vals, idx = pre.detach().masked_fill(~dead, float("-inf")).topk(k, dim=1, sorted=False)
            keep = vals > 0
        aux_vals = pre.gather(1, idx) * keep
        err_hat = torch.zeros_like(pre).scatter(1, idx, aux_vals) @ decoder
        denom = (err - err.mean(0)).pow(2).sum(1).mean().clamp_min(1e-8)
        return (err_hat + err).pow(2).sum(1).mean() / denom * keep.any()

    def _selected(self, xc: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Differentiable pre-activations at the selected entries (``values``: their numbers, already computed)."""
        scale = self._code_scale(cols)
        if scale is None:
            return selected_preacts(xc, self.W_enc, self.b_enc, rows, cols, values)
        raw = selected_preacts(xc, self.W_enc, self.b_enc, rows, cols, values / scale.detach())
        return raw * scale

    def _matryoshka_loss(self, xn: torch.Tensor, vals: torch.Tensor, sel: SparseCodes,
                         decoder: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sum of the reconstruction losses of every nested prefix of the dictionary (mean over prefixes)."""
        n = xn.shape[0]
        recon = self.b_dec.expand(n, -1)
        losses = []
        start = 0
        for end in self.cfg.matryoshka_groups:
            m = (sel.cols >= start) & (sel.cols < end)
            recon = recon + sparse_decode(vals[m], sel.rows[m], sel.cols[m], decoder, n)
            losses.append((recon - xn).pow(2).sum(1).mean())
            start = end
        err = recon - xn
        return torch.stack(losses).mean(), losses[-1], err

    def _aux_loss(self, pre: torch.Tensor, err: torch.Tensor, xc: torch.Tensor, dead: torch.Tensor, aux_k: int,
                  decoder: torch.Tensor) -> torch.Tensor:
        """AuxK (Gao et al. 2024): reconstruct the residual with the top dead latents, normalised by its variance."""
        n_dead = int(dead.sum())
        if n_dead == 0:
            return err.new_zeros(())
        k = min(aux_k, n_dead)
        with torch.no_grad():
            dead_cols = dead.nonzero(as_tuple=True)[0]
            # Top-k among the dead latents only: gather their columns instead of masking the whole batch x width.
            sub = pre.index_select(1, dead_cols) if n_dead < pre.shape[1] else pre
            vals, idx = sub.topk(k, dim=1, sorted=False)
            keep = vals > 0
            rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k).view(-1, k)
            cols = dead_cols[idx] if n_dead < pre.shape[1] else idx
            rows, cols, values = rows[keep], cols[keep], vals[keep]
        if values.numel() == 0:
            return err.new_zeros(())
        aux_vals = self._selected(xc, rows, cols, values)
        err_hat = sparse_decode(aux_vals, rows, cols, decoder, pre.shape[0])
        denom = (err - err.mean(0)).pow(2).sum(1).mean().clamp_min(1e-8)
        return (err_hat + err).pow(2).sum(1).mean() / denom  # err = x_hat - x, so the target residual is -err

    # -- constraints ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the gradient component that would change decoder row norms (they stay on the unit sphere)."""
        if self.W_dec.grad is not None and not self.free_decoder_norm:
            w = self.W_dec
            self.W_dec.grad -= (self.W_dec.grad * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def project_decoder(self) -> None:
        """Rescale decoder rows to unit norm (not under the free-norm parametrisation, where the norms are free)."""
        if self.free_decoder_norm:
            return
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
