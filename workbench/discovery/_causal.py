"""Causal effects: does the model use a feature? Edit it inside the model and compare the outputs.

Part of :mod:`workbench.discovery`, which re-exports these names: association says where a feature fires,
this says whether the model's predictions depend on it there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.associate import FeatureMatrix, _check_sae_matches
from workbench.errors import InputError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.adapter import Adapter
    from workbench.store import ActivationStore

__all__ = ["causal_effects", "feature_edit"]


def _token_sequence(obs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Index of every token's sequence (in order of first appearance) and the sequence ids."""
    import pandas as pd

    codes, uniques = pd.factorize(obs["sequence_id"].astype(str), sort=False)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def _sequences_for(column_rows: np.ndarray, column_vals: np.ndarray, seq: np.ndarray, n_seq: int, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """The ``n`` sequences with the most activation mass of a feature (a seeded random ``n`` if it never fires)."""
    mass = np.bincount(seq[column_rows], weights=column_vals.astype(np.float64), minlength=n_seq)
    firing = np.flatnonzero(mass > 0)
    if len(firing) == 0:
        return np.sort(rng.choice(n_seq, min(n, n_seq), replace=False))
    return firing[np.lexsort((firing, -mass[firing]))][:n]


def feature_edit(sae: Any, feature: int | Sequence[int], *, mode: str, amount: float, state: dict[str, Any],
                 directions: Any = None) -> Any:
    """The edit function of :func:`causal_effects` for one feature, or several at once (``mode`` ``"ablate"``: remove
    their contributions; ``"steer"``: add ``amount`` (normalised units) along each decoder direction); the first call
    stores ``state["fires"]``, the rows where any of the features fires.

    ``directions`` (``(n_features, d)``, normalised units) replaces the decoder rows moved along while the amounts
    stay the features' own: a control that perturbs as much, elsewhere (for example random directions of the same
    norms)."""
    import torch

    device = next(sae.parameters()).device
    scale = float(sae.input_scale) if sae.cfg.normalize else 1.0
    index = [int(feature)] if isinstance(feature, (int, np.integer)) else [int(f) for f in feature]
    rows = sae.W_dec[index].detach() if directions is None else torch.as_tensor(directions)
    if tuple(rows.shape) != (len(index), sae.W_dec.shape[1]):
        raise InputError(f"directions must have shape ({len(index)}, {sae.W_dec.shape[1]}), got {tuple(rows.shape)}")
    directions = rows.to(device=device, dtype=torch.float32) * scale  # (n, d)

    def edit(h: torch.Tensor) -> torch.Tensor:
        x = h.to(device=device, dtype=torch.float32)
        codes = sae.encode(x)[:, index]
        state.setdefault("fires", (codes > 0).any(1).cpu())
        delta = -(codes @ directions) if mode == "ablate" else amount * directions.sum(0).expand_as(x)
        return (x + delta).to(device=h.device, dtype=h.dtype)

    return edit


def causal_effects(
    adapter: Adapter,
    store: ActivationStore,
    sae: Any,
    *,
    layer: int,
    features: Sequence[int | str],
    feature_matrix: FeatureMatrix,
    n_sequences: int = 8,
    mode: str = "ablate",
    steer: float = 1.0,
    tokens_per_batch: int = 4096,
    seed: int = 0,
    mask_rate: float = 0.15,
) -> pd.DataFrame:
    """Does the model use a feature? Edit it inside the model and compare outputs where it fires and elsewhere.

    For each feature (an index or a name of ``feature_matrix``), the ``n_sequences`` sequences with the largest
    activation mass of the feature are rebuilt with ``adapter.records_from_store`` (a feature that never fires gets
    ``n_sequences`` seeded random sequences, where its effect should be nil). The model is run clean and with an
    edit at ``layer`` on every kept token, through ``adapter.run_with_edit``; ``h`` is the layer's representation
    in model units, ``c = sae.encode(h)`` its codes (normalised units) and ``d_f`` the feature's unit decoder row:

    * ``"ablate"``: ``h - c_f * d_f * s``, with ``s = sae.input_scale`` (1 without normalisation). The SAE decodes
      ``denormalize(c W_dec + b_dec) = (c W_dec + b_dec) s + mean``, so the difference between decoding ``c`` and
      decoding ``c`` with ``c_f = 0`` is exactly ``c_f d_f s``: the feature's contribution is removed and the
      rest of ``h``, SAE reconstruction error included, is left untouched;
    * ``"steer"``: ``h + steer * m_f * d_f * s`` with ``m_f`` the feature's maximum activation in the store
      (``feature_matrix.max_activation``, normalised units), at every kept token.

    A token "fires" when ``c_f > 0`` on the clean input of the same run. Reported per feature:

    * ``rank``: the order of ``features`` as given;
    * ``feature``, ``mode``;
    * ``n_sequences``, ``n_tokens``: sequences used and their kept tokens;
    * ``n_firing_tokens``: kept tokens where the feature fires;
    * ``kl_firing``, ``kl_other``: mean KL(clean || edited) of the output distribution at firing tokens and at the
      other tokens of the same sequences (NaN when there are none); for a classifier (one output per input, such as
      an image model) per input, an input firing when any of its rows does;
    * ``kl_ratio``: ``kl_firing / kl_other`` (inf when only firing tokens change; NaN when nothing changes);
    * ``dlogp_firing``, ``dlogp_other``: mean change (edited - clean) of the log-probability of the true token, at
      firing and other tokens, measured as masked-LM evaluation does: one extra clean and one edited run per batch
      in which a seeded random ``mask_rate`` of the kept tokens is replaced by the adapter's mask token
      (``adapter.mask_token_id()``), compared at those masked positions (firing = the feature fires there on the
      unmasked input). An adapter with ``tokens_of`` but no mask token is evaluated on its unmasked predictions at
      every kept token; an adapter without ``tokens_of`` gets NaN;
    * ``n_dlogp_firing``, ``n_dlogp_other``: how many positions each of these means averages over.

    The SAE must match the store (model, layer, width) and the adapter's weights the store's
    ``manifest["weights_sha256"]``; otherwise a :class:`WorkbenchError` names both.
    """
    import pandas as pd
    import torch

    if mode not in ("ablate", "steer"):
        raise InputError(f"mode must be 'ablate' or 'steer', not {mode!r}")
    if layer not in store.layers:
        raise WorkbenchError(f"{store.path} holds layers {store.layers}, not {layer}")
    _check_sae_matches(store, sae, layer)
    expected = store.manifest.get("weights_sha256")
    actual = adapter.weights_hash()
    if actual != expected:
        raise WorkbenchError(
            f"adapter {adapter.name!r} has weights {actual[:12]}, but {store.path} was extracted from {store.model!r}"
            f" with weights {str(expected)[:12]}: load the model the store was made with"
        )
    if feature_matrix.values.shape[0] != store.n_tokens or feature_matrix.values.shape[1] != sae.cfg.width:
        raise WorkbenchError(
            f"feature matrix is {feature_matrix.values.shape[0]} tokens x {feature_matrix.values.shape[1]} features; the store"
            f" has {store.n_tokens} tokens and the SAE {sae.cfg.width} features"
        )
    name_index = {n: i for i, n in enumerate(feature_matrix.names)}
    feats = []
    for f in features:
        if isinstance(f, str):
            if f not in name_index:
                raise InputError(f"no feature {f!r} in the feature matrix")
            feats.append(name_index[f])
        elif 0 <= int(f) < sae.cfg.width:
            feats.append(int(f))
        else:
            raise InputError(f"feature {f} is outside the SAE's {sae.cfg.width} features")

    adapter.prepare([layer])  # models whose rows depend on the layer (a conv layer's grid) batch for this one
    obs = store.obs(["sequence_id"])
    seq, seq_ids = _token_sequence(obs)
    csc = feature_matrix.values.tocsc()
    rng = np.random.default_rng(seed)
    max_act = np.asarray(feature_matrix.max_activation, dtype=np.float64)
    has_tokens = callable(getattr(adapter, "tokens_of", None))
    mask_id = adapter.mask_token_id() if callable(getattr(adapter, "mask_token_id", None)) else None

    rows_out = []
    for rank, f in enumerate(feats, start=1):
        chosen = _sequences_for(csc.indices[csc.indptr[f] : csc.indptr[f + 1]], csc.data[csc.indptr[f] : csc.indptr[f + 1]],
                                seq, len(seq_ids), n_sequences, rng)
        records = adapter.records_from_store(store, [str(s) for s in seq_ids[chosen]])
        acc = {"kl_f": 0.0, "kl_o": 0.0, "n_f": 0, "n_o": 0, "lp_f": 0.0, "lp_o": 0.0, "m_f": 0, "m_o": 0}
        for b, batch in enumerate(adapter.batches(records, tokens_per_batch=tokens_per_batch)):
            state: dict[str, Any] = {}
            edit = feature_edit(sae, f, mode=mode, amount=steer * float(max_act[f]), state=state)
            keep = batch.keep
            clean = adapter.run_with_edit(batch, layer, None)
            edited = adapter.run_with_edit(batch, layer, edit)
            fires = state["fires"]
            if clean.ndim == 2:  # a classifier: one output per input; an input "fires" where any of its rows does
                rows = keep.nonzero()[:, 0].cpu()
                fires = torch.zeros(keep.shape[0], dtype=torch.bool).index_put_((rows[fires],), torch.tensor(True))
                lp_clean = torch.log_softmax(clean.float(), -1)
                lp_edit = torch.log_softmax(edited.float(), -1)
            else:
                lp_clean = torch.log_softmax(clean[keep.to(clean.device)].float(), -1)
                lp_edit = torch.log_softmax(edited[keep.to(edited.device)].float(), -1)
            kl = (lp_clean.exp() * (lp_clean - lp_edit)).sum(-1).clamp_min(0).cpu()
            acc["kl_f"] += float(kl[fires].sum())
            acc["kl_o"] += float(kl[~fires].sum())
            acc["n_f"] += int(fires.sum())
            acc["n_o"] += int((~fires).sum())
            if not has_tokens or clean.ndim == 2:
                continue
            tokens = adapter.tokens_of(batch)
            key = next((name for name, v in batch.inputs.items() if v is tokens), None)
            if mask_id is not None and key is not None:
                gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + b)
                masked = (torch.rand(tokens.shape, generator=gen) < mask_rate) & keep
                inputs = dict(batch.inputs)
                inputs[key] = tokens.masked_fill(masked, mask_id)
                mbatch = type(batch)(batch.index, inputs, keep, batch.obs)
                lp_c = torch.log_softmax(adapter.run_with_edit(mbatch, layer, None).float(), -1).cpu()
                lp_e = torch.log_softmax(adapter.run_with_edit(mbatch, layer, edit).float(), -1).cpu()
                where = masked
            else:
                lp_c, lp_e, where = lp_clean.cpu(), lp_edit.cpu(), None
            if where is None:
                true = tokens[keep].cpu()
                d = lp_e.gather(1, true[:, None])[:, 0] - lp_c.gather(1, true[:, None])[:, 0]
                sel = fires
            else:
                true = tokens[where].cpu()
                d = lp_e[where].gather(1, true[:, None])[:, 0] - lp_c[where].gather(1, true[:, None])[:, 0]
                # kept-token index of every masked position (kept tokens are numbered row-major, as in ``fires``)
                kept_index = torch.cumsum(keep.flatten().long(), 0).view(keep.shape) - 1
                sel = fires[kept_index[where]]
            acc["lp_f"] += float(d[sel].sum())
            acc["lp_o"] += float(d[~sel].sum())
            acc["m_f"] += int(sel.sum())
            acc["m_o"] += int((~sel).sum())

        def mean(total: float, count: int) -> float:
            return total / count if count else float("nan")

        kl_f, kl_o = mean(acc["kl_f"], acc["n_f"]), mean(acc["kl_o"], acc["n_o"])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = float(np.divide(kl_f, kl_o)) if not (np.isnan(kl_f) or np.isnan(kl_o)) else float("nan")
        rows_out.append({
            "rank": rank, "feature": feature_matrix.names[f], "mode": mode, "n_sequences": len(chosen),
            "n_tokens": acc["n_f"] + acc["n_o"], "n_firing_tokens": acc["n_f"], "kl_firing": kl_f, "kl_other": kl_o,
            "kl_ratio": ratio, "dlogp_firing": mean(acc["lp_f"], acc["m_f"]) if has_tokens else float("nan"),
            "dlogp_other": mean(acc["lp_o"], acc["m_o"]) if has_tokens else float("nan"),
            "n_dlogp_firing": acc["m_f"], "n_dlogp_other": acc["m_o"],
        })
    columns = ["rank", "feature", "mode", "n_sequences", "n_tokens", "n_firing_tokens", "kl_firing", "kl_other", "kl_ratio",
               "dlogp_firing", "dlogp_other", "n_dlogp_firing", "n_dlogp_other"]
    return pd.DataFrame(rows_out, columns=columns)
