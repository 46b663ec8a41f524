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
# # The imaging feature catalog, with heatmaps
#
# The imaging demo (`make demo-imaging`, or `workbench demo --domain imaging --out demo_out`) runs the project's
# small CNN trained on PneumoniaMNIST (chest X-rays, 28x28, normal vs pneumonia) over every image, takes `layer3`
# (a 7x7 grid of 128 channels, one store row per grid position), trains a 1,024-latent TopK SAE on it, and
# annotates the features: per position (frame regions, measured intensity, contrast and edges) and per image (the
# pathology label, before and after controlling for the measured confounds). The catalog keeps the pixels, so a
# feature's activations can be drawn over the images it fires on.
#
# This notebook opens that catalog, finds the features most associated with pneumonia (and with normal images),
# and shows their top images beside the same images with the feature's activation map laid over them.
#
# **Parameters** (environment variables, read in the next cell):
#
# | variable | default | what |
# |---|---|---|
# | `WORKBENCH_NB_IMAGING_CATALOG` | `demo_out/imaging/pneumoniamnist/catalog` | the catalog folder to open |
# | `WORKBENCH_NB_N_IMAGES` | `6` | top images shown per feature |
# | `WORKBENCH_NB_ALPHA` | `0.6` | opacity of the heatmap where the feature is at its maximum |

# %%
import os
from pathlib import Path


def find_root() -> Path:
    """The repository root (the folder holding pyproject.toml) at or above the working folder, else the latter."""
    here = Path.cwd().resolve()
    return next((p for p in (here, *here.parents) if (p / "pyproject.toml").is_file()), here)


ROOT = find_root()
CATALOG = Path(os.environ.get("WORKBENCH_NB_IMAGING_CATALOG",
                              ROOT / "demo_out" / "imaging" / "pneumoniamnist" / "catalog"))
N_IMAGES = int(os.environ.get("WORKBENCH_NB_N_IMAGES", "6"))
ALPHA = float(os.environ.get("WORKBENCH_NB_ALPHA", "0.6"))

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from workbench.catalog import Catalog

plt.rcParams.update({"figure.dpi": 72})
pd.set_option("display.max_columns", 12, "display.width", 120, "display.max_colwidth", 50)

catalog = Catalog.open(CATALOG)
info = catalog.image_info
print(catalog)
info

# %% [markdown]
# Headline numbers: the model's own held-out AUROC for the pathology, how many SAE features stay significant for it
# after confound control (beside the layer's channels and the random-weight control), and the best single feature.

# %%
s = catalog.summary
keys = ["model_test_auroc", "pathology_significant_adjusted", "pathology_strong_adjusted", "best_feature",
        "best_feature_direction", "best_feature_test_auroc", "best_unit_test_auroc"]
pd.Series({k: s.get(k) for k in keys}, name=s.get("pathology", "pathology")).to_frame()

# %% [markdown]
# ## Features and the pathology, image by image
#
# The `pooled_association` table tests every feature's mean activation over an image against the pathology label:
# AUROC, then the partial correlation with the label and its q-value after regressing out the measured confounds
# (mean intensity, contrast, edge density, centre of mass). Among the features still significant after that
# adjustment, we take the one most strongly *higher* in pneumonia and the one most strongly *higher in normal* images.

# %%
pooled = catalog.table("pooled_association").astype({"feature": str})
significant = pooled[pooled["q_adjusted"] < 0.05]
ranked = (significant if len(significant) >= 2 else pooled).sort_values("partial_r", ascending=False)
columns = ["feature", "auroc", "partial_r", "q_adjusted", "auroc_adjusted", "mean_with", "mean_without"]
UP, DOWN = ranked["feature"].iloc[0], ranked["feature"].iloc[-1]
print(f"{len(significant)} of {len(pooled)} features significant after adjustment (q < 0.05)")
pd.concat([ranked.head(5), ranked.tail(5)])[columns].round(4)

# %%
catalog.feature(UP)

# %%
catalog.examples_frame(UP).head(10)

# %% [markdown]
# ## Heatmaps over the top images
#
# An example holds the feature's activation at each of the layer's grid positions (normalised to the feature's
# maximum). Each grid cell covers a block of pixels; `catalog.heatmap(activations)` brings the grid to the image size
# by *nearest* neighbour (its default, cell-aligned), so every cell shows as the square of the image it summarises.
# We lay it over the image with an opacity that grows with the activation (`ALPHA` at the maximum, transparent where
# the feature is silent). The plain image is above each overlay.

# %%
images = catalog.table("images").set_index("image_id") if "images" in catalog.tables else pd.DataFrame()


def show(ax: plt.Axes, image_id: str, heat: np.ndarray | None = None, title: str = "") -> None:
    pixels = catalog.image(image_id)
    ax.imshow(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
    if heat is not None:
        level = np.clip(heat, 0, 1)
        ax.imshow(level, cmap="inferno", vmin=0, vmax=1, alpha=ALPHA * np.sqrt(level), interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def caption(image_id: str) -> str:
    short = ":".join(str(image_id).split(":")[-2:])
    if image_id in images.index:
        row = images.loc[image_id]
        return f"{short}\n{row['label']}, model p {row['p_model']:.2f}"
    return short


def show_feature(fid: str, n: int = N_IMAGES) -> None:
    """The feature's top ``n`` images: plain (top row) and with its activation map (bottom row)."""
    top = [ex for ex in catalog.examples(fid) if ex.kind == "top"][:n]
    fig, axes = plt.subplots(2, len(top), figsize=(1.6 * len(top), 3.6), squeeze=False)
    for i, ex in enumerate(top):
        show(axes[0, i], ex.sequence_id, title=caption(ex.sequence_id))
        show(axes[1, i], ex.sequence_id, catalog.heatmap(ex.activations), title=f"max {ex.activations.max():.2f}")
    fig.suptitle(f"{fid}: {catalog.features.at[fid, 'description'][:90]}", fontsize=9)
    fig.tight_layout()
    plt.show()


show_feature(UP)

# %% [markdown]
# The feature most strongly higher in *normal* images:

# %%
show_feature(DOWN)

# %% [markdown]
# `catalog.heatmap(activations, mode="bilinear")` interpolates between the cell centres instead (smoother, good for
# display at a glance, but it spreads each cell over its neighbours; the nearest map shows what the layer actually
# resolves):

# %%
ex = catalog.examples(UP)[0]
fig, axes = plt.subplots(1, 3, figsize=(5.4, 2.2))
show(axes[0], ex.sequence_id, title="image")
show(axes[1], ex.sequence_id, catalog.heatmap(ex.activations), title="nearest (default)")
show(axes[2], ex.sequence_id, catalog.heatmap(ex.activations, mode="bilinear"), title='mode="bilinear"')
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Where in the frame, and in which images
#
# Left: the feature's average map over its top images (where in the frame it fires). Right: its mean activation per
# image (the catalog's `layers["mean"]`, normalised to the feature's maximum) in normal and pneumonia images.

# %%
adata = catalog.adata
labels = adata.obs["label_name"].astype(str) if "label_name" in adata.obs else pd.Series("all", index=adata.obs_names)
fig, axes = plt.subplots(1, 3, figsize=(10, 2.8), gridspec_kw={"width_ratios": [1, 1, 2.2]})
for ax, fid in zip(axes[:2], (UP, DOWN)):
    tops = [ex.activations for ex in catalog.examples(fid) if ex.kind == "top"]
    mean_map = np.mean(tops, axis=0).reshape(info["grid"])
    ax.imshow(mean_map, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"{fid}: mean over top images", fontsize=8)
    ax.set_axis_off()
j = list(catalog.features.index).index(UP)
mean_layer = adata.layers["mean"]
column = np.asarray(mean_layer[:, j].toarray() if hasattr(mean_layer, "toarray") else mean_layer[:, j]).ravel()
for name in sorted(labels.unique()):
    axes[2].hist(column[(labels == name).to_numpy()], bins=30, alpha=0.6, label=name)
axes[2].set_xlabel(f"{UP}: mean activation over the image / feature max")
axes[2].set_ylabel("images")
axes[2].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Where the model, its pathology features and the labels disagree
#
# The model's errors on the held-out test images, and what its pathology features say about each: the features' own
# call is a logistic regression on the pooled pathology features, fitted on the training and validation images (the
# `disagreements` table). *model wrong, features right*: the error arises after or beside these features; *both
# wrong*: the features read the image as the model does (a shared confound, a hard image, or a label to check).

# %%
print(catalog.summary.get("model_test_errors"))
if "disagreements" in catalog.tables:
    disagreements = catalog.table("disagreements")
    display(disagreements["kind"].value_counts().rename("images").to_frame() if len(disagreements) else disagreements)
    display(disagreements.head(8))

# %% [markdown]
# ## Does the model use these features? The causal check against its control
#
# Each feature is ablated on its top images, and as a control the same amount is removed along a random direction of
# the same norm on the same images (`pathology_causal`). A feature whose change is not beyond its control is not
# evidence that the model uses it.

# %%
if "pathology_causal" in catalog.tables:
    causal = catalog.table("pathology_causal")
    cols = [c for c in ("feature", "kind", "dlogit_firing", "dlogit_random", "p_vs_random", "beyond_control")
            if c in causal.columns]
    display(causal[cols])
