"""Discovery: what the features know that the annotations do not, and whether the model uses it.

Association (:mod:`workbench.associate`) measures how well features match *known* concepts. This module turns the
same numbers around:

* :func:`missing_annotations` lists places where a feature that reliably marks a concept fires but the concept is
  not annotated: candidate missing (or mis-placed) annotations, merged into residue spans and ranked;
* :func:`unexplained_features` lists features that are active and consistent across sequences but match no known
  concept, with the evidence a person needs to name them (residues, numbering profile, motifs, top sequences);
* :func:`rediscovery` makes the first measurable: it withholds a random part of a concept's annotated instances,
  re-runs the association on what is left, and asks whether the withheld instances come back at the top of
  :func:`missing_annotations` (precision@k against a chance rate);
* :func:`causal_effects` asks whether the model *uses* a feature: it removes (or amplifies) the feature inside the
  model through the adapter's edit hook and compares the output distribution where the feature fires with where it
  does not.

Every table has a ``rank`` column (1 = most interesting) and is sorted by it. The core stays domain-free: labels,
observations and adapters come in through their generic interfaces.
"""

from workbench.discovery._causal import causal_effects, feature_edit
from workbench.discovery._rediscovery import rediscovery
from workbench.discovery._spans import missing_annotations
from workbench.discovery._unexplained import unexplained_features

__all__ = ["missing_annotations", "unexplained_features", "rediscovery", "causal_effects", "feature_edit"]
