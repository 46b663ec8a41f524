"""The catalog explorer on image catalogs: every page renders, the Images page, image overlays in the feature browser,
the imaging block of the overview, and the overlay helper itself.

Catalogs: ``imaging_catalog`` (the imaging demo pipeline with a tiny random CNN on real PneumoniaMNIST images) and a
copy of it with findings written in (three significant pathology features, two ablation rows and three
disagreements: the tiny random model finds none of its own), plus ``tiny_catalog`` (sequences) for what image
catalogs must not change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest  # noqa: E402

from apptest_helpers import assert_ok  # noqa: E402  (tests/apps, on the path under pytest)

from apps.workbench_app import _images as images  # noqa: E402
from apps.workbench_app import _views as views  # noqa: E402
from apps.workbench_app._state import ENV  # noqa: E402
from workbench.catalog import Catalog  # noqa: E402
from workbench.errors import InputError  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "apps" / "workbench_app" / "app.py"
PAGES = {"overview": "Overview", "features": "Feature browser", "images": "Images", "concepts": "Concept explorer",
         "discovery": "Discovery", "atlas": "Feature atlas", "live": "Live input"}
INJECTED = {"f00005": (0.82, 1e-4, 0.93), "f00009": (0.21, 3e-3, 0.35), "f00012": (0.66, 0.02, 0.41)}
"""Features given a significant adjusted association in the copy with findings: adjusted AUROC, adjusted q, and the
share of the activation mass on the same 5% of the frame (f00005: a possible shortcut)."""


@pytest.fixture(scope="module")
def findings_catalog(imaging_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``imaging_catalog`` with significant pathology features, ablation rows and disagreements written in."""
    import anndata as ad

    from workbench.catalog import write_catalog

    adata = ad.read_h5ad(Catalog.open(imaging_catalog).path)
    tables = dict(adata.uns["tables"])
    pooled = tables["pooled_association"].copy()
    pooled["region_share"] = 0.3
    pooled["region"], pooled["region_cells"] = "middle centre", "r3c3"
    for fid, (auc, q, share) in INJECTED.items():
        rows = (pooled["feature"].astype(str) == fid).to_numpy()
        # raw AUROC, partial correlation and adjusted AUROC all on the same side of chance
        pooled.loc[rows, ["auroc", "partial_r", "auroc_adjusted", "q_adjusted", "region_share"]] = [
            auc, 2 * (auc - 0.5), auc, q, share]
        adata.var.loc[fid, ["pathology_auroc", "pathology_auroc_adjusted", "pathology_q_adjusted"]] = [auc, auc, q]
    tables["pooled_association"] = pooled
    tables["pathology_causal"] = pd.DataFrame({
        "rank": [1, 2], "feature": ["f00005", "f00009"], "kind": ["feature"] * 2, "n_features": [1, 1],
        "n_firing": [20, 18], "mean_activation_firing": [0.4, 0.3], "dlogit_firing": [-0.8, 0.5],
        "dlogit_random": [-0.05, 0.45], "abs_dlogit_firing": [0.8, 0.5], "abs_dlogit_random": [0.06, 0.48],
        "flip_fraction": [0.25, 0.1], "flip_fraction_random": [0.0, 0.1], "p_vs_random": [1e-4, 0.6],
        "beyond_control": [True, False]})
    ids = [str(i) for i in tables["images"]["image_id"]]
    tables["disagreements"] = pd.DataFrame({
        "rank": [1, 2, 1], "kind": ["model wrong, features right"] * 2 + ["model and features both wrong"],
        "image_id": [ids[3], ids[50], ids[100]], "split": ["test"] * 3,
        "label": ["pneumonia", "normal", "normal"], "p_model": [0.3, 0.8, 0.8], "p_features": [0.9, 0.1, 0.7],
        "model_correct": [False] * 3, "features_correct": [True, True, False], "features": ["f00005,f00012"] * 3})
    adata.uns["tables"] = tables
    return write_catalog(adata, tmp_path_factory.mktemp("imaging_findings") / "catalog")


def _open(monkeypatch: pytest.MonkeyPatch, catalog: Path, page: str, *, feature: str | None = None) -> AppTest:
    monkeypatch.setenv(ENV, str(catalog))
    at = AppTest.from_file(str(APP), default_timeout=120)
    if feature is not None:
        at.session_state["feature"] = feature
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert_ok(at)
    return at


def _markdown(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


def _frame(at: AppTest, *columns: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if set(columns) <= set(d.value.columns))


def _expected_default(cat: Catalog) -> str:
    """The page's default: the live feature with the largest |partial correlation| agreeing in sign with its AUROC."""
    pooled = cat.table("pooled_association").set_index("feature")
    live = cat.features.index[cat.features["density"] > 0].astype(str)
    r, a = pooled["partial_r"].reindex(live), pooled["auroc"].reindex(live)
    strength = r.abs().where(np.sign(r) == np.sign(a - 0.5), 0.0)
    return str(strength.idxmax())


# ------------------------------------------------------------------------------------------------ overlay helper
def test_overlay_colours_only_where_the_feature_fires() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(1, 28, 28), dtype=np.uint8)
    grey = np.repeat(pixels[0][..., None], 3, axis=2)
    silent = images.overlay(pixels, np.zeros((28, 28), np.float32))
    assert silent.shape == (28, 28, 3) and silent.dtype == np.uint8
    assert np.array_equal(silent, grey)  # no activation: the image itself, grey as RGB
    heat = np.zeros((28, 28), np.float32)
    heat[5:10, 20:25] = 1.0
    out = images.overlay(pixels, heat, alpha=0.6)
    changed = np.any(out != grey, axis=2)
    assert changed[5:10, 20:25].all() and not changed[heat == 0].any()
    assert not np.all(out[5:10, 20:25, 0] == out[5:10, 20:25, 2])  # coloured, not grey
    # units: heat / vmax; values above vmax saturate
    assert np.array_equal(images.overlay(pixels, heat * 0.5, vmax=0.5, alpha=0.6), out)
    assert np.array_equal(images.overlay(pixels, heat * 7, alpha=0.6), out)
    # sharp upscaling by pixel repetition; RGB input
    big = images.overlay(pixels, heat, alpha=0.6, scale=6)
    assert big.shape == (168, 168, 3) and np.array_equal(big, np.repeat(np.repeat(out, 6, axis=0), 6, axis=1))
    rgb = images.overlay(np.repeat(pixels, 3, axis=0), heat, alpha=0.6)
    assert np.array_equal(rgb, out)
    assert images.display_factor(28) == 6 and images.display_factor(224) == 1


@pytest.mark.parametrize("pixels, heat, options", [
    (np.zeros((28, 28), np.uint8), np.zeros((28, 28)), {}),              # no channel axis
    (np.zeros((2, 28, 28), np.uint8), np.zeros((28, 28)), {}),           # two channels
    (np.zeros((1, 28, 28), np.uint8), np.zeros((7, 7)), {}),             # heat map of the grid, not the image
    (np.zeros((1, 28, 28), np.uint8), np.zeros((28, 28)), {"alpha": 2}),
    (np.zeros((1, 28, 28), np.uint8), np.zeros((28, 28)), {"vmax": 0}),
    (np.zeros((1, 28, 28), np.uint8), np.zeros((28, 28)), {"scale": 0}),
    (np.array([[["a"]]]), np.zeros((1, 1)), {}),
])
def test_overlay_refuses_what_does_not_fit(pixels: np.ndarray, heat: np.ndarray, options: dict) -> None:
    with pytest.raises(InputError):
        images.overlay(pixels, heat, **options)
    assert issubclass(InputError, ValueError)


def test_image_catalogs_are_told_apart(imaging_catalog: Path, tiny_catalog: Path) -> None:
    assert images.is_image_catalog(Catalog.open(imaging_catalog))
    assert not images.is_image_catalog(Catalog.open(tiny_catalog))
    assert not images.is_image_catalog(object())


# ------------------------------------------------------------------------------------------------ every page
@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders_on_the_imaging_catalog(page: str, imaging_catalog: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open(monkeypatch, imaging_catalog, page)
    assert at.title[0].value == PAGES[page]
    if page == "live":
        assert any("Live input takes sequences" in i.value for i in at.info)
        assert not at.text_area and not at.button  # no input form for images


def test_sequence_catalogs_get_no_images_page(tiny_catalog: Path, imaging_catalog: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open(monkeypatch, tiny_catalog, "overview")
    with pytest.raises(ValueError, match="navigation page"):
        at.switch_page("app_pages/images.py")
    at = _open(monkeypatch, imaging_catalog, "overview")
    at.switch_page("app_pages/images.py").run()  # registered for images
    assert_ok(at)
    assert at.title[0].value == "Images"


# ------------------------------------------------------------------------------------------------ images page
def test_images_page_shows_the_features_top_images(imaging_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(imaging_catalog)
    first = _expected_default(cat)  # the most pathology-associated feature after adjustment
    at = _open(monkeypatch, imaging_catalog, "images")
    assert at.header[0].value == first
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Adjusted AUROC"] == views.fmt_num(cat.features.at[first, "pathology_auroc_adjusted"])

    def top_ids(fid: str) -> list[str]:
        return [e.sequence_id for e in cat.examples(fid) if e.kind == "top"]

    grid = at.image[0]
    assert [c.split(" · ")[0] for c in grid.captions] == top_ids(first)
    assert all(u for u in grid.value)  # every tile is served as an image
    label = str(cat.table("images").set_index("image_id").at[top_ids(first)[0], "label"])
    assert grid.captions[0].split(" · ")[1] == label and grid.captions[0].endswith("max 1.00")
    bins = at.image[1]  # the quantile-bin samples follow
    assert bins.captions and all(" · q" in c for c in bins.captions)

    other = next(f for f in cat.features.index[cat.features["density"] > 0] if top_ids(f) != top_ids(first))
    at.selectbox(key="_im_pick").select(other).run()
    assert_ok(at)
    assert at.header[0].value == other and at.session_state["feature"] == other
    assert [c.split(" · ")[0] for c in at.image[0].captions] == top_ids(other)


def test_images_page_compares_the_labels(imaging_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(imaging_catalog)
    fid = "f00003"
    at = _open(monkeypatch, imaging_catalog, "images", feature=fid)
    assert at.header[0].value == fid
    stats = _frame(at, "label", "images", "mean")
    j = cat.features.index.get_loc(fid)
    mean = np.asarray(cat.adata.layers["mean"][:, j].todense()).ravel()
    label = cat.table("images").set_index("image_id")["label"].astype(str).reindex(cat.sequences.index)
    expected = pd.Series(mean, index=label.index).groupby(label.to_numpy()).agg(["size", "mean"])
    assert list(stats["label"]) == ["normal", "pneumonia"]
    for row in stats.itertuples(index=False):
        assert row.images == expected.at[row.label, "size"]
        assert row.mean == pytest.approx(expected.at[row.label, "mean"], rel=1e-5)
    text = _markdown(at)
    assert "**normal**" in text and "**pneumonia**" in text  # top images of each label, side by side
    auc = views.fmt_num(cat.features.at[fid, "pathology_auroc"])
    assert any(f"AUROC {auc}" in c.value for c in at.caption)
    charts = at.get("vega_lite_chart")
    assert len(charts) >= 2  # histogram and box plot by label


def test_pathology_features_ranked_and_opened(findings_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(findings_catalog)
    summary = cat.summary
    at = _open(monkeypatch, findings_catalog, "images")
    table = _frame(at, "feature", "auroc_adjusted", "q_adjusted")
    assert list(table["feature"]) == ["f00005", "f00009", "f00012"]  # by |adjusted AUROC - 0.5|, q < 0.05 only
    assert list(table["direction"]) == ["higher in pneumonia", "lower in pneumonia", "higher in pneumonia"]
    metrics = {m.label: m.value for m in at.metric}
    tested, significant = summary["pathology_features_tested"], summary["pathology_significant_adjusted"]
    assert metrics["Significant: SAE features"] == f"{significant['sae']} / {tested['sae']}"
    assert metrics["Significant: random-weight SAE"] == f"{significant['random_sae']} / {tested['random_sae']}"
    assert metrics["Best single feature, test AUROC"] == views.fmt_num(summary["best_feature_test_auroc"])
    assert metrics["Model, test AUROC"] == views.fmt_num(summary["model_test_auroc"])
    at.selectbox(key="_im_path_pick").select("f00009").run()
    at.button(key="_im_path_show").click().run()
    assert_ok(at)
    assert at.header[0].value == "f00009"


def test_no_significant_features_is_said(imaging_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(imaging_catalog)
    assert (cat.table("pooled_association")["q_adjusted"] >= 0.05).all()
    at = _open(monkeypatch, imaging_catalog, "images")
    assert any("No SAE feature is associated with pneumonia" in i.value for i in at.info)
    assert len(_frame(at, "feature", "auroc_adjusted", "q_adjusted")) == 10
    assert any("No feature was ablated" in i.value for i in at.info)


def test_causal_table_and_disagreements(findings_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(findings_catalog)
    at = _open(monkeypatch, findings_catalog, "images")
    causal = _frame(at, "dlogit_firing", "dlogit_random", "beyond_control")
    assert list(causal["feature"]) == ["f00005", "f00009"]
    assert causal["description"].notna().all()
    # the feature its control explains as well is said not to be evidence
    assert any("1 of 2 ablated features move the pneumonia logit more than a random direction" in w.value
               and "explained as well by the control" in w.value for w in at.warning)
    disagree = cat.table("disagreements")
    shown = {c.split(" · ")[0] for img in at.image for c in img.captions if "features p" in c}
    assert shown == set(disagree["image_id"].astype(str))  # a thumbnail of each (both kinds)
    text = _markdown(at)
    assert "**model wrong, features right** (2 images)" in text and "**model and features both wrong** (1 images)" in text
    # the model's own errors on the test images, from the images table
    images_table = cat.table("images")
    test = images_table[images_table["split"].astype(str) == "test"]
    wrong = int(((test["p_model"] >= 0.5) != (test["label"].astype(str) == "pneumonia")).sum())
    assert f"**The model is wrong on {wrong:,} of {len(test):,} test images**" in text
    keys = {b.key for b in at.download_button}
    assert {"_im_path_csv", "_im_causal_csv", "_im_disagree_csv"} <= keys


def test_shortcut_warning_for_a_feature_fixed_in_the_frame(findings_catalog: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open(monkeypatch, findings_catalog, "images", feature="f00005")
    assert any(w.value.startswith("Possible shortcut: 93% of this feature's activation") for w in at.warning)
    table = _frame(at, "feature", "region_share")
    assert table.set_index("feature").at["f00005", "region_share"] == pytest.approx(0.93)
    assert any("1 of these 3 features hold" in w.value for w in at.warning)  # the table's warning names it
    at = _open(monkeypatch, findings_catalog, "images", feature="f00009")
    assert not any(w.value.startswith("Possible shortcut") for w in at.warning)
    assert any("35% of its activation mass" in c.value for c in at.caption)


def test_overlays_sit_beside_the_plain_image_with_an_opacity_slider(imaging_catalog: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(imaging_catalog)
    fid = "f00001"
    ex = next(e for e in cat.examples(fid) if e.kind == "top")
    scale = images.display_factor(28)
    plain = images.grey_rgb(cat.image(ex.sequence_id), scale=scale)

    heat = cat.heatmap(ex.activations)
    gy, gx = divmod(int(np.argmax(ex.activations)), 7)  # cell-aligned: the hottest cell covers its own 4x4 block
    assert np.all(heat[gy * 4 : gy * 4 + 4, gx * 4 : gx * 4 + 4] == np.max(ex.activations))

    at = _open(monkeypatch, imaging_catalog, "images", feature=fid)
    slider = at.slider(key=images.ALPHA_KEY)
    assert slider.value == pytest.approx(0.7)
    tile = images.render_overlay(cat, fid, ex.sequence_id, alpha=0.7, paired=True)  # what the page draws
    assert tile.shape == (28 * scale, 2 * 28 * scale + 3 * images.GAP_PX, 3)
    assert np.array_equal(tile[:, : 28 * scale], plain)  # the plain image on the left, then a gap and the overlay
    right = tile[:, 28 * scale + images.GAP_PX : 2 * 28 * scale + images.GAP_PX]
    assert np.array_equal(right, images.overlay(cat.image(ex.sequence_id), heat, alpha=0.7, scale=scale))
    assert (tile[:, 28 * scale : 28 * scale + images.GAP_PX] == 255).all() and (tile[:, -2 * images.GAP_PX :] == 255).all()
    slider.set_value(0.0).run()
    assert_ok(at)
    off = images.render_overlay(cat, fid, ex.sequence_id, alpha=0.0, paired=True)
    assert np.array_equal(off[:, 28 * scale + images.GAP_PX : 2 * 28 * scale + images.GAP_PX], plain)  # opacity 0
    assert at.session_state[images.ALPHA_KEY] == 0.0


# ------------------------------------------------------------------------------------------------ other pages
def test_feature_browser_draws_image_overlays(imaging_catalog: Path, tiny_catalog: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(imaging_catalog)
    fid = "f00001"
    at = _open(monkeypatch, imaging_catalog, "features", feature=fid)
    assert at.header[0].value == fid
    examples = cat.examples(fid)
    top, rest = at.image[0].captions, at.image[1].captions  # top images, then the quantile-bin samples
    assert [c.split(" · ")[0] for c in top] == [e.sequence_id for e in examples if e.kind == "top"]
    assert sorted(c.split(" · ")[0] for c in rest) == sorted(e.sequence_id for e in examples if e.kind != "top")
    assert all("max " in c for c in top + rest) and all(" · q" in c for c in rest)
    assert not any('class="wbx"' in str(h.value) for h in at.get("html"))  # no residue strings for images
    # sequence catalogs keep their residues (their only image: the sequence logo)
    at = _open(monkeypatch, tiny_catalog, "features")
    assert [i.proto.imgs[0].caption.startswith("Top ") for i in at.image] == [True]
    assert any('class="wbx"' in str(h.value) for h in at.get("html"))


def test_overview_shows_the_imaging_block(imaging_catalog: Path, tiny_catalog: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    s = Catalog.open(imaging_catalog).summary
    at = _open(monkeypatch, imaging_catalog, "overview")
    metrics = {m.label: m.value for m in at.metric}
    assert any(h.value == "Pathology: pneumonia" for h in at.subheader)
    assert metrics["Model test AUROC"] == views.fmt_num(s["model_test_auroc"])
    assert metrics["Model test accuracy"] == views.fmt_pct(s["model_test_accuracy"], digits=3)
    assert metrics["Best single feature test AUROC"] == views.fmt_num(s["best_feature_test_auroc"])
    for key, label in (("sae", "SAE"), ("neurons", "neurons"), ("random_sae", "random-weight SAE")):
        n, t = s["pathology_significant_adjusted"][key], s["pathology_features_tested"][key]
        assert metrics[f"Pathology features ({label})"] == f"{n} / {t}"
    errors = s["model_test_errors"]
    assert f"**Errors:** the model is wrong on {errors['model_wrong']:,} of {errors['images']:,} test images" in _markdown(at)
    at = _open(monkeypatch, tiny_catalog, "overview")
    assert "Model test AUROC" not in {m.label for m in at.metric}
