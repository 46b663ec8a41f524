"""Model cards and the adapter registry.

Domains plug in through two entry-point groups declared in their package metadata, so the core never imports a
domain until a model of that domain is asked for:

* ``workbench.adapters``: ``family = "package.module:AdapterClass"``;
* ``workbench.model_cards``: ``name = "package"``, a package whose folder holds ``*.yaml`` model cards.

A card may list ``variants`` (a family of checkpoints named by a pattern, as fair-esm names ESM-2); each
variant becomes a card of its own, inheriting every field it does not set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from importlib import metadata, resources
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from workbench.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from workbench.adapter import Adapter

__all__ = [
    "ModelCard", "list_models", "get_card", "adapter_class", "load_adapter", "register_adapter", "annotation_sources", "labels_for",
    "store_domain", "domain_annotator",
]

ADAPTER_GROUP = "workbench.adapters"
CARD_GROUP = "workbench.model_cards"
ANNOTATION_GROUP = "workbench.annotations"
ANNOTATOR_GROUP = "workbench.annotators"


@dataclass(frozen=True)
class ModelCard:
    """What the workbench knows about a model before loading it."""

    name: str
    """Name users pass to ``--model``."""
    adapter: str
    """Adapter family that loads it (an entry point in ``workbench.adapters``)."""
    n_layers: int
    """Number of transformer blocks; layers are numbered 0 (embeddings) to ``n_layers``."""
    d_model: int
    """Width of the residual stream."""
    max_length: int | None = None
    """Longest input the model takes, in residues (special tokens excluded)."""
    weights: str = ""
    """Where the weights come from (a package file, a hub name, a local path)."""
    description: str = ""
    license: str = ""
    citation: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    """Adapter-specific settings (checkpoint file name, tokenizer details...)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelError(f"model card {data.get('name')!r} has unknown fields {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_EXTRA_ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(family: str, cls: type[Adapter]) -> None:
    """Register an adapter class at run time (tests, notebooks); installed domains use entry points instead."""
    _EXTRA_ADAPTERS[family] = cls


def _parse_cards(path: Path) -> list[ModelCard]:
    import yaml

    data = yaml.safe_load(path.read_text())
    variants = data.pop("variants", None) or {}
    if not variants:
        return [ModelCard.from_dict(data)]
    cards = []
    for name, extra in variants.items():
        merged = {**data, **(extra or {}), "name": name}
        merged["options"] = {**data.get("options", {}), **(extra or {}).get("options", {})}
        cards.append(ModelCard.from_dict(merged))
    return cards


@functools.cache
def _cards() -> dict[str, ModelCard]:
    cards: dict[str, ModelCard] = {}
    for ep in metadata.entry_points(group=CARD_GROUP):
        folder = resources.files(ep.value)
        for item in sorted(folder.iterdir(), key=lambda p: p.name):
            if item.name.endswith((".yaml", ".yml")):
                with resources.as_file(item) as path:
                    for card in _parse_cards(Path(path)):
                        cards[card.name] = card
    return cards


def list_models() -> list[ModelCard]:
    """Every model card the installed domains provide."""
    return sorted(_cards().values(), key=lambda c: c.name)


def get_card(name: str) -> ModelCard:
    """The card called ``name``, or :class:`ModelError` listing the known names."""
    try:
        return _cards()[name]
    except KeyError:
        known = ", ".join(sorted(_cards())) or "none installed"
        raise ModelError(f"unknown model {name!r}; known models: {known} (or pass a checkpoint path)") from None


def adapter_class(family: str) -> type[Adapter]:
    """The adapter class registered for ``family`` (imported on first use)."""
    if family in _EXTRA_ADAPTERS:
        return _EXTRA_ADAPTERS[family]
    for ep in metadata.entry_points(group=ADAPTER_GROUP):
        if ep.name == family:
            return ep.load()  # type: ignore[no-any-return]
    raise ModelError(f"no adapter registered for model family {family!r}")


def _all_adapter_classes() -> list[type[Adapter]]:
    classes = [ep.load() for ep in metadata.entry_points(group=ADAPTER_GROUP)]
    return classes + list(_EXTRA_ADAPTERS.values())


def load_adapter(model: str, *, device: str = "cpu") -> Adapter:
    """Load a model by card name or by a local checkpoint path.

    A path is offered to every registered adapter family's ``card_for_path``; the first that recognises it wins.
    The string is kept as ``adapter.source`` (stores record it, so later stages can load the same model).
    """
    adapter = _load(model, device)
    adapter.source = model
    return adapter


def _load(model: str, device: str) -> Adapter:
    if model in _cards():
        card = _cards()[model]
        return adapter_class(card.adapter).load(card, device=device)
    path = Path(model)
    if path.exists():
        for cls in _all_adapter_classes():
            card_for_path = getattr(cls, "card_for_path", None)
            card = card_for_path(path) if card_for_path else None
            if card is not None:
                return cls.load(card, source=str(path.resolve()), device=device)
        raise ModelError(f"{model}: no adapter recognises this checkpoint")
    # Not a card and not a file: let a family claim a name pattern (ESM-2 hub names download where reachable).
    for cls in _all_adapter_classes():
        card_for_name = getattr(cls, "card_for_name", None)
        card = card_for_name(model) if card_for_name else None
        if card is not None:
            return cls.load(card, device=device)
    get_card(model)  # raises with the list of known models
    raise AssertionError("unreachable")  # pragma: no cover


def annotation_sources() -> dict[str, Any]:
    """Annotation entry points by domain name: ``fn(store, specs) -> ConceptLabels`` (group ``workbench.annotations``).

    A spec is a source name with an optional argument (``anarci``, ``table:COL1,COL2``, ``uniprot:FILE``); each
    domain documents its own.
    """
    return {ep.name: ep for ep in metadata.entry_points(group=ANNOTATION_GROUP)}


def labels_for(store: Any, specs: Sequence[str], *, domain: str | None = None) -> Any:
    """Concept labels for ``store`` from the annotation sources named in ``specs`` through a domain's entry point.

    Without ``domain``, the domain is the one whose package also holds the adapter that extracted the store.
    """
    sources = annotation_sources()
    if domain is None and len(sources) > 1:
        domain = store_domain(store, sources)
    if domain is None:
        if len(sources) != 1:
            raise ModelError(f"say which domain annotates this store (installed: {', '.join(sorted(sources)) or 'none'})")
        domain = next(iter(sources))
    if domain not in sources:
        raise ModelError(f"no annotation sources for domain {domain!r} (installed: {', '.join(sorted(sources)) or 'none'})")
    return sources[domain].load()(store, list(specs))


def store_domain(store: Any, sources: dict[str, Any] | None = None) -> str | None:
    """The annotation domain living in the same package as the adapter family that extracted ``store``, if one does."""
    sources = annotation_sources() if sources is None else sources
    family = (getattr(store, "manifest", None) or {}).get("adapter")
    for ep in metadata.entry_points(group=ADAPTER_GROUP):
        if ep.name == family:
            package = ep.value.split(":", 1)[0].rsplit(".", 1)[0]
            hits = [name for name, src in sources.items() if src.value.split(":", 1)[0].rsplit(".", 1)[0] == package]
            return hits[0] if len(hits) == 1 else None
    return None


def domain_annotator(domain: str | None) -> Any:
    """A domain's own annotation stage for ``workbench annotate`` (group ``workbench.annotators``), or None.

    The function is called as ``fn(store, sae, out=, specs=, control_store=, control_sae=, n_permutations=, n_causal=,
    overwrite=, progress=)`` and returns the catalog; domains without one use :func:`workbench.annotate`.
    """
    for ep in metadata.entry_points(group=ANNOTATOR_GROUP):
        if ep.name == domain:
            return ep.load()
    return None
