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
# # Bring your own sequences and labels
#
# The whole workbench on your own data, small enough to run in a minute or two on a laptop CPU:
#
# 1. **extract** a layer's per-residue activations from a FASTA file with a model named by its card (`workbench
#    models` lists them; AntiBERTy and the Sapiens heavy/light models install offline with the package's `sequence`
#    extra), or a checkpoint path;
# 2. **label** the residues and sequences: concepts from ANARCI's IMGT numbering and from sequence motifs, plus your
#    own per-sequence labels from a CSV file (`user:FILE`);
# 3. **train** a small sparse autoencoder (SAE) on the activations;
# 4. **annotate**: associate every SAE feature with every concept (with the model's neurons as a control), and
#    write a catalog;
# 5. **look** at what the features captured, your own labels included.
#
# Without parameters it takes 300 human IgG heavy chains (a seeded random sample) of the Observed Antibody Space
# subset bundled with the workbench, writes them as a FASTA file and a labels CSV (the V-gene family OAS reports for
# them and their CDR3 length class, as stand-ins for whatever you know about your sequences), and runs the Sapiens
# heavy-chain model (4 layers, 128 wide).
#
# **Parameters** (environment variables, read in the next cell):
#
# | variable | default | what |
# |---|---|---|
# | `WORKBENCH_NB_FASTA` | (bundled OAS chains) | your FASTA file |
# | `WORKBENCH_NB_LABELS` | (built from the bundled table) | your CSV: `sequence_id` plus one column per label |
# | `WORKBENCH_NB_N` | `300` | sequences taken from the bundled table when no FASTA is given |
# | `WORKBENCH_NB_MODEL` | `sapiens-vh` | a model card name (`antiberty`, `sapiens-vl`...) or a checkpoint path |
# | `WORKBENCH_NB_LAYER` | `3` | the layer to analyse (0 = embeddings) |
# | `WORKBENCH_NB_WIDTH`, `WORKBENCH_NB_K` | `512`, `16` | SAE latents and active latents per residue (TopK) |
# | `WORKBENCH_NB_SAE_TOKENS` | `300000` | SAE training rows |
# | `WORKBENCH_NB_OUT` | `demo_out/notebooks/bring_your_own` | work folder (store, SAE, catalog) |

# %%
import os
from pathlib import Path


def find_root() -> Path:
    """The repository root (the folder holding pyproject.toml) at or above the working folder, else the latter."""
    here = Path.cwd().resolve()
    return next((p for p in (here, *here.parents) if (p / "pyproject.toml").is_file()), here)


ROOT = find_root()
FASTA = os.environ.get("WORKBENCH_NB_FASTA")
LABELS = os.environ.get("WORKBENCH_NB_LABELS")
N_SEQUENCES = int(os.environ.get("WORKBENCH_NB_N", "300"))
MODEL = os.environ.get("WORKBENCH_NB_MODEL", "sapiens-vh")
LAYER = int(os.environ.get("WORKBENCH_NB_LAYER", "3"))
WIDTH = int(os.environ.get("WORKBENCH_NB_WIDTH", "512"))
K = int(os.environ.get("WORKBENCH_NB_K", "16"))
SAE_TOKENS = int(os.environ.get("WORKBENCH_NB_SAE_TOKENS", "300000"))
OUT = Path(os.environ.get("WORKBENCH_NB_OUT", ROOT / "demo_out" / "notebooks" / "bring_your_own"))
OUT.mkdir(parents=True, exist_ok=True)

# %%
import time
import warnings

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

import workbench

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook bars would need ipywidgets
plt.rcParams.update({"figure.dpi": 72, "figure.figsize": (8, 3)})
pd.set_option("display.max_columns", 12, "display.width", 120, "display.max_colwidth", 60)
t_start = time.perf_counter()

# %% [markdown]
# ## Your inputs
#
# A FASTA file, and a CSV with a `sequence_id` column (the FASTA ids) and one column per label you have: each
# value becomes a sequence concept `"<column>=<value>"` (a CSV with `sequence_id, start, end, concept` columns
# would instead label residue spans). Column names must not repeat a concept group of the other sources, or the
# labels are refused with the column's name (ANARCI already gives `v_family`, so OAS's own call is `oas_v_family`
# here). Without a FASTA we write both from the bundled OAS table.

# %%
from domains.sequence.readers import bundled, read_fasta

oas = pd.read_csv(bundled("oas_human_igg_memory_b_vh"))
if FASTA is None:
    FASTA = OUT / "my_sequences.fasta"
    mine = oas.sample(min(N_SEQUENCES, len(oas)), random_state=0)
    FASTA.write_text("".join(f">{i}\n{s}\n" for i, s in zip(mine["seq_id"], mine["sequence_alignment_aa"])))
records = read_fasta(FASTA)
print(f"{len(records)} sequences in {FASTA}; the first: {records[0].id} {records[0].sequence[:50]}...")

# %%
if LABELS is None:
    ids = [r.id for r in records]
    known = oas.set_index("seq_id").reindex(ids).dropna(subset=["cdr3_aa"])
    cdr3 = known["cdr3_aa"].str.len()
    table = pd.DataFrame({"sequence_id": known.index, "oas_v_family": known["v_family"].to_numpy(),
                          "cdr3_class": pd.cut(cdr3, [0, 12, 16, 99], labels=["short", "medium", "long"]).to_numpy()})
    LABELS = OUT / "my_labels.csv"
    table.to_csv(LABELS, index=False)
labels_table = pd.read_csv(LABELS)
print(f"{len(labels_table)} labelled sequences in {LABELS}")
labels_table.head()

# %% [markdown]
# ## 1. Extract
#
# One row per residue of every sequence, for the chosen layer, in an on-disk store (float16 shards, a manifest with
# the model's weights hash, the sequences as a table). `overwrite=True` replaces the store of an earlier run (once
# the new one is complete); a run killed part way resumes when called again with the same arguments.

# %%
card = workbench.get_card(MODEL) if not Path(MODEL).exists() else None
if card is not None:
    print(f"{card.name}: {card.n_layers} layers, width {card.d_model}")
store = workbench.extract(MODEL, FASTA, layers=[LAYER], out=OUT / f"store_L{LAYER}", overwrite=True, progress=False)
store

# %%
store.obs().head()

# %% [markdown]
# ## 2. Labels
#
# `labels_for` turns annotation sources into concept labels for the store's residues and sequences: `anarci`
# (IMGT numbering: regions, positions, chain type, species, V/J genes), `motif` (sequons, cysteines, amino-acid
# identity) and `user:FILE` (your CSV). Other sources: `germline`, `humanness`, `liability`, `cdr`,
# `table:COLUMNS` (columns carried from an input table), `uniprot:FILE`, `pfam:FILE`, `airr:FILE`.

# %%
from workbench.registry import labels_for

labels = labels_for(store, ["anarci", "motif", f"user:{LABELS}"])
print(labels)  # tokens and sequences, the concepts of each source by group
labels.sequence_concepts.groupby("source")["concept"].apply(lambda c: ", ".join(c.astype(str)[:6]))

# %%
labels.sequence_concepts[labels.sequence_concepts["source"] == "user"]

# %% [markdown]
# ## 3. A sparse autoencoder
#
# A TopK SAE: `WIDTH` latents of which `K` are active on every residue. Training streams shuffled batches from the
# store; `result.metrics` holds its fidelity on held-out sequences (fraction of variance explained, active latents,
# dead latents, and how much of the model's loss survives when the layer is replaced by the SAE's reconstruction).

# %%
from workbench.sae import TrainConfig, train_sae

result = train_sae(store, out=OUT / "sae", layer=LAYER, arch="topk", width=WIDTH, k=K, overwrite=True,
                   train=TrainConfig(n_tokens=SAE_TOKENS, batch_size=1024, lr=2e-3, warmup_steps=20,
                                     checkpoint_every=0, loss_recovered_sequences=16), progress=False)
m = result.metrics
recovered = (m.get("loss_recovered") or {}).get("loss_recovered")
print(f"FVE {m['fve']:.3f}, L0 {m['l0']:.1f}, dead {m.get('dead_fraction', float('nan')):.1%}, "
      f"loss recovered {recovered if recovered is None else round(recovered, 3)}")

# %% [markdown]
# ## 4. Annotate
#
# Every feature against every concept: a threshold chosen on validation sequences, F1 on held-out test sequences,
# q-values across all pairs, the same for the model's own neurons, association within IMGT-position and residue
# strata (does a finding survive position and identity?), probes, descriptions and families. Your per-sequence
# labels are probe targets (can the features of a sequence predict its class?) and, named in `finding_groups`,
# held-out sequence-level findings (the single feature that best separates each class, chosen on half the sequences
# and tested on the other half, controlled for ANARCI's V family). The settings below trade precision for speed
# (fewer permutations and bootstraps, a small causal check, fewer probe samples); the defaults are what the demo
# uses.

# %%
from workbench import AnnotateConfig

user_groups = sorted(c for c in labels_table.columns if c != "sequence_id")
catalog = workbench.annotate(
    store, OUT / "sae", labels, layer=LAYER, out=OUT / "catalog", overwrite=True, progress=False,
    config=AnnotateConfig(n_permutations=5, n_bootstrap=200, n_causal=4, causal_sequences=4, probe_cv=3,
                          probe_max_samples=5000, token_probe_groups=("region",), finding_groups=user_groups,
                          finding_covariates=("v_family",)),
)
catalog

# %% [markdown]
# ## 5. What the features captured

# %%
s = catalog.summary
pd.Series({key: s.get(key) for key in ("n_features", "n_sequences", "n_tokens", "concepts_captured_sae",
                                      "concepts_captured_neurons", "n_families")})

# %% [markdown]
# The best SAE feature and the best neuron for every concept, from the `best_sae` and `best_neurons` tables:

# %%
best = catalog.table("best_sae").astype({"concept": str})
neurons = catalog.table("best_neurons").astype({"concept": str}).set_index("concept")
best = best.assign(neuron=best["concept"].map(neurons["best_feature"]),
                   neuron_test_f1=best["concept"].map(neurons["test_f1"]))
cols = ["concept", "best_feature", "test_f1", "neuron", "neuron_test_f1", "q_value"]
best.sort_values("test_f1", ascending=False)[cols].head(15).round(3)

# %% [markdown]
# ### Your own labels
#
# Sequence-level probes on your label columns: cross-validated balanced accuracy from all SAE features of a sequence
# (`k = 0`), from the single best one (`k = 1`) or the best 8, beside the same for the model's neurons (a label
# column with a single value, or too few sequences per value, is not probed).

# %%
probes = catalog.table("probes")
mine = probes[(probes["level"] == "sequence") & probes["target"].astype(str).isin(user_groups)]
mine.pivot_table(index=["target", "k"], columns="representation", values="score").round(3)

# %% [markdown]
# `catalog.search` finds your labels too (`match` = `sequence concept`: the best feature of each held-out finding
# below, then the features the sequence-level probe weighs most), and `catalog.concept("<column>=<value>")` gathers
# what the catalog holds about one class.

# %%
catalog.search(user_groups[0], limit=8)

# %% [markdown]
# The held-out sequence-level findings for each of your classes: the best single feature (chosen on half the
# sequences), its AUROC on the other half, and the same after controlling for ANARCI's V family (a class needs
# 20 sequences on each side to be tested; a label that ANARCI's V family already determines, such as OAS's own
# V-family call, is reported as not testable).

# %%
if "sequence_findings" in catalog.tables:
    findings = catalog.table("sequence_findings")
    cols = ["target", "representation", "status", "n_test", "best_feature", "test_auroc", "test_auroc_adjusted",
            "test_q_adjusted"]
    display(findings[[c for c in cols if c in findings.columns]].round(3))
    found = findings[(findings["representation"] == "sae") & (findings["status"] == "ok")]
    if len(found):
        row = found.sort_values("test_auroc_adjusted", key=lambda v: (v - 0.5).abs(), ascending=False).iloc[0]
        print(f"{row['target']}: {row['best_feature']}, held-out AUROC {row['test_auroc']:.2f}")
        display(catalog.concept(row["target"], limit=5))
        display(catalog.feature(row["best_feature"]))
else:
    print("no sequence-level findings (no label class had enough sequences on each side)")

# %% [markdown]
# The best-annotated feature, its concepts and its top examples:

# %%
fid = best.sort_values("test_f1", ascending=False)["best_feature"].iloc[0]
catalog.feature(fid)

# %%
catalog.examples_frame(fid).head(8)

# %%
fig, ax = plt.subplots()
f1 = best["test_f1"].dropna()
ax.hist([f1, best["neuron_test_f1"].dropna()], bins=20, range=(0, 1), label=["SAE feature", "neuron"])
ax.set_xlabel("held-out F1 of the best unit per concept")
ax.set_ylabel("concepts")
ax.legend()
plt.show()
print(f"done in {time.perf_counter() - t_start:.0f} s; the catalog is in {OUT / 'catalog'} "
      f"(open it with `workbench app {OUT / 'catalog'}`)")
