"""What every sequence-model adapter shares: residue tokenisation, token-budget batching and token metadata."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from workbench.adapter import Adapter, Batch
from workbench.errors import ModelError
from workbench.records import as_records

from .records import SequenceRecord, validate_records

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["SequenceAdapter", "Vocab", "safe_torch_load", "STANDARD_AA"]

STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"


class Vocab:
    """Residue-to-token mapping of one model, with its special tokens."""

    def __init__(
        self, residues: Mapping[str, int], *, bos: int | None, eos: int | None, pad: int, mask: int
    ) -> None:
        self.residues = dict(residues)
        self.bos, self.eos, self.pad, self.mask = bos, eos, pad, mask

    @property
    def alphabet(self) -> str:
        return "".join(sorted(self.residues))

    @property
    def n_special(self) -> int:
        return int(self.bos is not None) + int(self.eos is not None)

    def encode(self, sequence: str) -> list[int]:
        ids = [self.residues[c] for c in sequence]
        return ([self.bos] if self.bos is not None else []) + ids + ([self.eos] if self.eos is not None else [])


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` with ``weights_only=True``, allowing the ``argparse.Namespace`` that fairseq-era files carry.

    Set ``WORKBENCH_TRUST_CHECKPOINTS=1`` to load a trusted file that needs other Python objects.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file")
    if os.environ.get("WORKBENCH_TRUST_CHECKPOINTS") == "1":
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise ModelError(
            f"{path}: refusing to unpickle ({first}); set WORKBENCH_TRUST_CHECKPOINTS=1 if you trust this file"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ModelError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0]})") from exc


class SequenceAdapter(Adapter):
    """Base for protein and antibody language models: one token per residue plus optional BOS/EOS."""

    vocab: Vocab
    obs_columns: ClassVar[tuple[str, ...]] = ("sequence_id", "position", "residue")

    def __init__(self, model: Any, card: Any, vocab: Vocab, *, device: str = "cpu") -> None:
        super().__init__(model, card, device=device)
        self.vocab = vocab

    # -- inputs ---------------------------------------------------------------------------------------------
    def validate(self, records: Sequence[SequenceRecord], *, truncate: bool = False, source: str = "input") -> list[SequenceRecord]:
        """Check records against this model's alphabet and maximum length (see :func:`validate_records`)."""
        return validate_records(records, alphabet=self.vocab.alphabet, max_length=self.card.max_length, truncate=truncate, source=source)

    def _as_records(self, items: Sequence[Any]) -> Sequence[SequenceRecord]:
        """``items`` as records (:func:`workbench.records.as_records`); converted strings and pairs are validated."""
        if not isinstance(items, (str, list, tuple)):
            items = list(items)  # a generator is read once
        if not isinstance(items, str) and all(isinstance(r, SequenceRecord) for r in items):
            return items
        records, converted = as_records(items)
        return self.validate(records) if converted else records

    def read(self, path: str, *, truncate: bool = False, **options: Any) -> list[SequenceRecord]:
        from .readers import read_sequences

        return self.validate(read_sequences(path, **options), truncate=truncate, source=str(path))

    def n_kept(self, record: SequenceRecord) -> int:
        return len(record.sequence)

    # -- batching -------------------------------------------------------------------------------------------
    def batches(self, records: Sequence[SequenceRecord | str | tuple[str, str]], *,
                tokens_per_batch: int) -> Iterator[Batch]:
        """Longest first, so each batch pads to its first record; at most ``tokens_per_batch`` padded tokens.

        ``records`` are what :meth:`make_batch` takes (records, plain strings or ``(id, sequence)`` pairs)."""
        records = self._as_records(records)
        order = sorted(range(len(records)), key=lambda i: -len(records[i].sequence))
        group: list[int] = []
        width = 0
        for i in order:
            w = len(records[i].sequence) + self.vocab.n_special
            if group and (len(group) + 1) * max(width, w) > tokens_per_batch:
                yield self.make_batch([records[j] for j in group], index=group)
                group, width = [], 0
            group.append(i)
            width = max(width, w)
        if group:
            yield self.make_batch([records[j] for j in group], index=group)

    def make_batch(self, records: Sequence[SequenceRecord | str | tuple[str, str]], *,
                   index: Sequence[int] | None = None) -> Batch:
        """Tokenise and pad records into one :class:`Batch` (the model's own token ids).

        Each record is a :class:`workbench.SequenceRecord` (``SequenceRecord(id, sequence, meta)``, what
        :meth:`read` returns), a plain sequence string (its id becomes ``seq0``, ``seq1``, ... by position) or an
        ``(id, sequence)`` pair; strings and pairs are checked against the model's alphabet and length limit
        (:meth:`validate`). ``batch.obs`` has one row per residue: ``sequence_id``, ``position`` (1-based),
        ``residue`` and the records' ``meta`` keys.
        """
        import pandas as pd
        import torch

        records = self._as_records(records)
        encoded = [self.vocab.encode(r.sequence) for r in records]
        width = max(len(e) for e in encoded)
        tokens = torch.full((len(encoded), width), self.vocab.pad, dtype=torch.long)
        keep = torch.zeros((len(encoded), width), dtype=torch.bool)
        start = int(self.vocab.bos is not None)
        for b, (rec, ids) in enumerate(zip(records, encoded)):
            tokens[b, : len(ids)] = torch.tensor(ids)
            keep[b, start : start + len(rec.sequence)] = True
        cols: dict[str, Any] = {
            "sequence_id": [r.id for r in records for _ in r.sequence],
            "position": [p for r in records for p in range(1, len(r.sequence) + 1)],
            "residue": [c for r in records for c in r.sequence],
        }
        meta_keys = sorted({k for r in records for k in r.meta})
        for key in meta_keys:
            cols[key] = [r.meta.get(key) for r in records for _ in r.sequence]
        obs = pd.DataFrame(cols)
        return Batch(list(index) if index is not None else list(range(len(records))), self.model_inputs(tokens), keep, obs)

    def model_inputs(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keyword arguments of :meth:`forward` for a padded token matrix."""
        return {"tokens": tokens}

    def lm_loss(self, batch: Batch, *, layer: int, edit: Any = None, seed: int = 0, rate: float = 0.15) -> tuple[float, int]:
        """Masked-LM cross-entropy (summed, and the number of masked residues) with ``edit`` applied at ``layer``.

        A fraction ``rate`` of residues, drawn from ``seed``, is replaced by the mask token.
        """
        import torch
        import torch.nn.functional as F

        tokens = self.tokens_of(batch)
        gen = torch.Generator().manual_seed(seed)
        masked = (torch.rand(tokens.shape, generator=gen) < rate) & batch.keep
        inputs = dict(batch.inputs)
        inputs[next(iter(inputs))] = tokens.masked_fill(masked, self.vocab.mask)
        logits = self.run_with_edit(Batch(batch.index, inputs, batch.keep, batch.obs), layer, edit)
        targets = tokens.to(logits.device)[masked.to(logits.device)]
        ce = F.cross_entropy(logits[masked.to(logits.device)].float(), targets, reduction="sum")
        return float(ce), int(masked.sum())

    def records_from_store(self, store: Any, ids: Sequence[str]) -> list[SequenceRecord]:
        """Sequences of ``ids`` rebuilt from the store's ``residue`` column, in the order given."""
        from workbench.errors import StoreError

        from .annotations import store_sequences

        found = store_sequences(store)
        missing = [i for i in ids if i not in found]
        if missing:
            raise StoreError(f"{store.path}: no sequences {missing[:3]}")
        return [SequenceRecord(i, found[i]) for i in ids]

    def mask_token_id(self) -> int:
        return self.vocab.mask

    def tokens_of(self, batch: Batch) -> torch.Tensor:
        """The padded token-id matrix of a batch (what masking edits for masked-LM evaluation)."""
        return next(iter(batch.inputs.values()))
