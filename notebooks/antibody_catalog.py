# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The antibody feature catalog
#
# A catalog is what the workbench writes at the end of a run: for one sparse autoencoder (SAE) on one layer of one
# model, every feature with its statistics, its best concepts (IMGT regions and positions, germlines, liabilities,
# CDR lengths...), its top and quantile-sampled example sequences with per-residue activations, and the association
# tables with their controls (the model's own neurons and the same SAE recipe on a random-weight copy of the model).
#
# This notebook opens the antibody demo's catalog (AntiBERTy layer 4 on 2,237 Thera-SAbDab chains, a 4,096-latent
# TopK SAE; `make demo` writes it to `demo_out/catalog`), searches it, looks at one feature, compares two, runs new
# sequences through the model and SAE, plots where the features fire along the IMGT numbering, and exports the
# catalog to Parquet.
#
# **Parameters** (environment variables, read in the next cell):
#
# | variable | default | what |
# |---|---|---|
# | `WORKBENCH_NB_CATALOG` | `demo_out/catalog` | the catalog folder to open |
# | `WORKBENCH_NB_QUERY` | `H:CDR3` | what to search for |
# | `WORKBENCH_NB_EXPORT` | `demo_out/notebooks/antibody_catalog_export` | where the Parquet export goes |

# %%
import os
from pathlib import Path


def find_root() -> Path:
    """The repository root (the folder holding pyproject.toml) at or above the working folder, else the latter."""
    here = Path.cwd().resolve()
    return next((p for p in (here, *here.parents) if (p / "pyproject.toml").is_file()), here)


ROOT = find_root()
CATALOG = Path(os.environ.get("WORKBENCH_NB_CATALOG", ROOT / "demo_out" / "catalog"))
QUERY = os.environ.get("WORKBENCH_NB_QUERY", "H:CDR3")
EXPORT = Path(os.environ.get("WORKBENCH_NB_EXPORT", ROOT / "demo_out" / "notebooks" / "antibody_catalog_export"))

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from workbench.catalog import Catalog

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook bars would need ipywidgets
plt.rcParams.update({"figure.dpi": 72, "figure.figsize": (9, 3)})
pd.set_option("display.max_columns", 12, "display.width", 120, "display.max_colwidth", 50)

catalog = Catalog.open(CATALOG)
catalog

# %% [markdown]
# Headline numbers: how faithful the SAE is (fraction of variance explained, active latents per residue, dead
# latents) and how many concepts its features capture beside the two controls.

# %%
headline = ["n_sequences", "n_tokens", "n_features", "fve", "l0", "dead_fraction", "concepts_testable",
            "concepts_captured_sae", "concepts_captured_neurons", "concepts_captured_random"]
pd.Series({key: catalog.summary.get(key) for key in headline}, name="summary").to_frame()

# %% [markdown]
# ## Search
#
# `Catalog.search` matches a feature id, a concept name (ranked by the feature's held-out F1 for that concept) or words
# of the features' one-line descriptions.

# %%
hits = catalog.search(QUERY, limit=10)
hits

# %% [markdown]
# We take the two best hits for the rest of the notebook (or, when the query finds fewer than two features, the two
# best-annotated features of the catalog).

# %%
picked = list(dict.fromkeys(hits["feature"].astype(str)))
if len(picked) < 2:
    best = catalog.features.sort_values("top_f1", ascending=False).index.astype(str)
    picked += [f for f in best if f not in picked]
A, B = picked[:2]
A, B

# %% [markdown]
# ## One feature
#
# `catalog.feature(...)` gathers everything about a feature: its row of the feature table, its best concepts and its
# examples. `catalog.examples_frame(...)` gives the examples as a table, with the strongest residue, its IMGT number
# and the residues around it.

# %%
info = catalog.feature(A)
info

# %%
info["concepts"][["concept", "threshold", "test_f1", "test_precision", "test_recall", "q_value"]].head(8)

# %%
catalog.examples_frame(A).head(12)

# %% [markdown]
# ## Two features side by side
#
# Their statistics from the feature table:

# %%
columns = ["density", "max_activation", "n_sequences", "top_concept", "top_f1", "family", "description"]
catalog.features.loc[[A, B], [c for c in columns if c in catalog.features.columns]].T

# %% [markdown]
# Do they fire on the same sequences? The overlap of their top examples:

# %%
top_a = set(catalog.examples_frame(A).query("kind == 'top'")["sequence_id"])
top_b = set(catalog.examples_frame(B).query("kind == 'top'")["sequence_id"])
shared = top_a & top_b
print(f"{A}: {len(top_a)} top sequences, {B}: {len(top_b)}, shared {len(shared)} "
      f"(Jaccard {len(shared) / max(1, len(top_a | top_b)):.2f})")

# %% [markdown]
# And the concepts each is associated with, from the catalog's association table (held-out F1 at each pair's
# chosen threshold; blank: the pair was not significant):

# %%
pairs = catalog.table("association")
pairs = pairs[pairs["feature"].astype(str).isin([A, B])].astype({"feature": str, "concept": str})
f1 = pairs.pivot_table(index="concept", columns="feature", values="test_f1")
f1.reindex(columns=[A, B]).sort_values(A, ascending=False).head(12).round(3)

# %% [markdown]
# ## Both features on the same sequences
#
# `Catalog.encode` runs sequences through the catalog's own model and SAE (loaded once, from the catalog's
# provenance) and returns one row per residue with each feature's activation, divided by the feature's maximum over
# the catalog (1 = its strongest firing in the catalog). Sequences the catalog holds keep their IMGT numbering. Here:
# the top examples of both features.

# %%
ids = sorted(top_a | top_b)
records = [(sid, catalog.sequences.at[sid, "sequence"]) for sid in ids]
encoded = catalog.encode(records, features=[A, B])
encoded.head()

# %%
per_sequence = encoded.groupby("sequence_id")[[A, B]].max()
print(f"per residue: Pearson r {encoded[A].corr(encoded[B]):.2f} over {len(encoded)} residues; "
      f"both above 0.1 on {int(((encoded[A] > 0.1) & (encoded[B] > 0.1)).sum())} residues")
per_sequence.describe().loc[["mean", "50%", "max"]].round(3)

# %% [markdown]
# ### Where they fire along the IMGT numbering
#
# The activation track of both features over one sequence (the top example of the first feature), residue by
# residue, with IMGT numbers on the axis and the CDRs (IMGT 27-38, 56-65, 105-117) shaded.

# %%
CDRS = {"CDR1": (27, 38), "CDR2": (56, 65), "CDR3": (105, 117)}
first = catalog.examples_frame(A).query("kind == 'top'")["sequence_id"].iloc[0]
track = encoded[encoded["sequence_id"] == first].reset_index(drop=True)
imgt = pd.to_numeric(track["imgt"] if "imgt" in track.columns else pd.Series(np.nan, index=track.index))

fig, ax = plt.subplots()
for name, (lo, hi) in CDRS.items():
    inside = np.flatnonzero(imgt.between(lo, hi).to_numpy(dtype=bool, na_value=False))
    if len(inside):
        ax.axvspan(inside[0] + 0.5, inside[-1] + 1.5, color="0.9")
        ax.text((inside[0] + inside[-1]) / 2 + 1, 1.02, name, ha="center", fontsize=8)
ax.plot(track["position"], track[A], label=A, color="C0")
ax.plot(track["position"], track[B], label=B, color="C3")
ticks = track.index[::10]
ax.set_xticks(track["position"].iloc[ticks])
ax.set_xticklabels(["" if pd.isna(v) else str(int(v)) for v in imgt.iloc[ticks]])
ax.set_xlabel("IMGT position (every 10th residue)")
ax.set_ylabel("activation / catalog max")
ax.set_ylim(0, 1.12)
ax.set_title(f"{first}: {track['residue'].str.cat()[:40]}...", fontsize=9)
ax.legend(loc="upper left", fontsize=8)
plt.show()

# %% [markdown]
# Over the whole catalog: the share of each feature's firing at every IMGT position (the catalog's `profile` table;
# its `baseline` column holds the share of all residues at each position, about 1% each).

# %%
if "profile" in catalog.tables:
    profile = catalog.table("profile").astype({"feature": str, "group": str, "value": str})
    profile = profile[(profile["group"] == "imgt") & profile["feature"].isin([A, B])]
    profile = profile[profile["value"].str.fullmatch(r"\d+")].assign(imgt=lambda t: t["value"].astype(int))
    share = profile.pivot_table(index="imgt", columns="feature", values="share").reindex(columns=[A, B])
    fig, ax = plt.subplots()
    for name, (lo, hi) in CDRS.items():
        ax.axvspan(lo - 0.5, hi + 0.5, color="0.9")
    ax.bar(share.index - 0.2, share[A].fillna(0), width=0.4, label=A, color="C0")
    ax.bar(share.index + 0.2, share[B].fillna(0), width=0.4, label=B, color="C3")
    ax.set_xlabel("IMGT position")
    ax.set_ylabel("share of firing")
    ax.legend(fontsize=8)
    plt.show()

# %% [markdown]
# ## New sequences
#
# The same call takes sequences the catalog has never seen: here the top example of the first feature with its
# strongest residue mutated to alanine (or glycine), beside the original.

# %%
ex = catalog.examples_frame(A).iloc[0]
original = catalog.sequences.at[ex["sequence_id"], "sequence"]
p = int(ex["peak"]) - 1
mutant = original[:p] + ("A" if original[p] != "A" else "G") + original[p + 1:]
both = catalog.encode([("original", original), ("mutant", mutant)], features=[A, B])
both[both["position"].between(p - 2, p + 4)].pivot(index="position", columns="sequence_id", values=A).round(3)

# %% [markdown]
# ## Export
#
# `catalog.export` writes the feature table, the sequences, the examples (with per-residue activations) and every
# table as Parquet (or CSV / JSON), plus the summary, provenance, metrics and schema as JSON.

# %%
written = catalog.export(EXPORT, formats="parquet", overwrite=True)
print(f"{len(written)} files in {EXPORT}")
sorted(p.relative_to(EXPORT).as_posix() for p in written)[:12]

# %%
pd.read_parquet(EXPORT / "features.parquet").head(3)
