"""AppTest checks of the app for daily work (issue 16, part 3) on the tiny catalog (tiny ESM-2 on 40 OAS heavy chains,
ANARCI + motif concepts): search opens its first hit and every result opens its feature; sequence logos on the
feature and concept pages; the Compare features page; links out to IMGT, UniProt and Thera-SAbDab; CSV / Parquet
downloads on every table; the live input on IMGT columns; the atlas's colourings and named families; no external
address in any page except the link-outs.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
pytest.importorskip("logomaker")

from streamlit.testing.v1 import AppTest  # noqa: E402

from apps.workbench_app import _links as links  # noqa: E402
from apps.workbench_app import _logos as logos  # noqa: E402
from apps.workbench_app import _views as views  # noqa: E402
from apps.workbench_app._state import ENV  # noqa: E402
from apptest_helpers import assert_ok, chart_rows, page_test, send_selection  # noqa: E402
from workbench.catalog import Catalog  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "apps" / "workbench_app" / "app.py"
PAGES = ("overview", "features", "compare", "concepts", "beyond", "discovery", "atlas", "universality", "live")
URL = re.compile(r"""https?://[^\s"'<>)\]]+""")


def _in_app(monkeypatch: pytest.MonkeyPatch, catalog: Path, page: str, **query: str) -> AppTest:
    """``page`` run through the real app (``app.py``, its navigation), with ``query`` parameters."""
    monkeypatch.setenv(ENV, str(catalog))
    at = AppTest.from_file(str(APP), default_timeout=240)
    at.switch_page(f"app_pages/{page}.py")
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert_ok(at)
    return at


def _texts(at: AppTest) -> str:
    """Everything a page shows as Markdown, captions and HTML."""
    parts = [str(m.value) for m in at.markdown] + [str(c.value) for c in at.caption]
    parts += [str(h.proto.body) for h in at.get("html")]
    return "\n".join(parts)


def _titles(at: AppTest) -> list[str]:
    return [t.value for t in at.title]


# ------------------------------------------------------------------------------------------------ 1. search
def test_search_opens_the_first_hit_and_every_result(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(tiny_catalog)
    at = page_test("features", tiny_catalog, monkeypatch).run()
    assert_ok(at)
    first_shown = at.header[0].value
    at.text_input(key="_fb_query").input("region=").run()
    assert_ok(at)
    hits = at.dataframe[0].value
    expected = cat.search("region=", limit=50)
    assert list(hits["feature"]) == list(expected["feature"]) and len(hits) > 3
    assert at.header[0].value == hits["feature"].iloc[0] != first_shown  # the first hit is open at once
    assert at.selectbox(key="_fb_pick_hits").value == hits["feature"].iloc[0]
    # a clicked result row opens that feature
    send_selection(at, at.dataframe[0], {"rows": [3], "columns": [], "cells": []})
    assert_ok(at)
    assert at.header[0].value == hits["feature"].iloc[3]
    assert at.query_params["feature"] == [hits["feature"].iloc[3]]
    # a new query opens its own first hit
    at.text_input(key="_fb_query").input("f00009").run()
    assert_ok(at)
    assert at.header[0].value == "f00009"


# ------------------------------------------------------------------------------------------------ 2. logos
def test_window_counts_follow_imgt_positions(tiny_catalog: Path) -> None:
    cat = Catalog.open(tiny_catalog)
    fid = str(cat.features["density"].astype(float).idxmax())
    counts, kind = logos.window_counts(cat, [fid])
    assert kind == "imgt"
    tops = [ex for ex in cat.examples(fid) if ex.kind == "top"]
    # every top window contributes at most 2 * HALF + 1 residues, each counted once under its IMGT column
    assert len(tops) <= counts.to_numpy().sum() <= len(tops) * (2 * logos.HALF + 1)
    assert all(re.fullmatch(r"\d+(\.\d+)?", str(i)) for i in counts.index)
    numbers = [float(str(i)) for i in counts.index]
    assert numbers == sorted(numbers)
    ex = tops[0]
    peak = int(np.argmax(ex.activations))
    imgt = views.parse_positions(cat.sequences.at[ex.sequence_id, "imgt"], len(ex.sequence))
    if imgt[peak] is not None:
        assert counts.at[str(imgt[peak]), ex.sequence[peak]] >= 1
    _check_logo_svg(counts, fid, str(imgt[peak]))
    # without IMGT numbers: offsets from the strongest residue
    counts, kind = logos.window_counts(cat, [fid], use_imgt=False)
    assert kind == "offset" and "0" in counts.index and counts.loc["0"].sum() == len(tops)


def _check_logo_svg(counts: pd.DataFrame, title: str, highlight: str) -> None:
    """The SVG logo: one letter per non-zero information height, stacked to each column's information content, the
    columns labelled in order, the peak column shaded."""
    import xml.etree.ElementTree as ET

    import logomaker

    svg = logos.logo_svg(counts, title=title, highlight=highlight)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    info = logomaker.transform_matrix(counts.reset_index(drop=True).astype(float), from_type="counts",
                                      to_type="information", pseudocount=0).fillna(0.0)
    glyphs = [p for p in root.iter(f"{ns}path") if p.get("class") == "glyph"]
    assert len(glyphs) == int((info.to_numpy() > 1e-6).sum())
    # the letters of a column are its non-zero letters, their heights the information transform (bits)
    by_x: dict[float, list[tuple[str, float]]] = {}
    for p in glyphs:
        a, _, _, _, e, _ = (float(v) for v in re.findall(r"-?[\d.]+", p.get("transform")))
        by_x.setdefault(round(e + a / 2, 1), []).append((p.get("data-letter"), float(p.get("data-bits"))))
    first = sorted(by_x)[0]
    row = info.iloc[0]
    assert sorted(by_x[first]) == sorted((str(a), round(float(v), 4)) for a, v in row.items() if v > 1e-6)
    texts = [t.text for t in root.iter(f"{ns}text") if t.get("class") == "column"]
    assert texts == [str(i) for i in counts.index]
    shaded = [r for r in root.iter(f"{ns}rect") if r.get("class") == "peak"]
    assert len(shaded) == (1 if highlight in texts else 0)
    assert title in "".join(t.text or "" for t in root.iter(f"{ns}text"))


def test_feature_and_concept_pages_draw_logos(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page_test("features", tiny_catalog, monkeypatch)
    at.query_params["feature"] = "f00005"
    at.run()
    assert_ok(at)
    (logo,) = at.image
    assert "Sequence logo" in [s.value for s in at.subheader]
    assert logo.proto.imgs[0].caption.startswith("Top ") and "f00005" in logo.proto.imgs[0].caption
    assert "IMGT positions" in logo.proto.imgs[0].caption

    at = page_test("concepts", tiny_catalog, monkeypatch)
    at.query_params["concept"] = "region=CDR3"
    at.run()
    assert_ok(at)
    (logo,) = at.image
    best = list(at.dataframe[1].value["feature"].head(5))
    assert at.selectbox(key="_cx_logo_of").options[1:] == best
    assert all(f in logo.proto.imgs[0].caption for f in best)  # pooled over the best five
    at.selectbox(key="_cx_logo_of").select(best[1]).run()
    assert_ok(at)
    caption = at.image[0].proto.imgs[0].caption
    assert best[1] in caption and best[0] not in caption


# ------------------------------------------------------------------------------------------------ 3. comparison
def test_compare_page_shows_both_features(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(tiny_catalog)
    live = cat.features.index[cat.features["density"] > 0]
    a, b = str(live[0]), str(live[1])
    at = _in_app(monkeypatch, tiny_catalog, "compare", a=a, b=b)
    assert _titles(at) == ["Compare features"]
    heads = [s.value for s in at.subheader]
    assert f"A: {a}" in heads and f"B: {b}" in heads
    # firing sets from the catalog's per-sequence maxima
    x = cat.adata.X
    x = np.asarray(x.todense() if hasattr(x, "todense") else x)
    ia, ib = cat.features.index.get_loc(a), cat.features.index.get_loc(b)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Both fire in"] == f"{int(((x[:, ia] > 0) & (x[:, ib] > 0)).sum()):,}"
    assert metrics[f"A ({a}) fires in"] == f"{int((x[:, ia] > 0).sum()):,}"
    # top examples of both, and the overlap
    top = at.dataframe[0].value
    ta = [e.sequence_id for e in cat.examples(a) if e.kind == "top"]
    tb = [e.sequence_id for e in cat.examples(b) if e.kind == "top"]
    assert set(top["sequence_id"]) == set(ta) | set(tb)
    assert f"**{len(set(ta) & set(tb))}** of their top sequences are shared" in "\n".join(m.value for m in at.markdown)
    # per-residue activations of both features on the same sequences (the model runs on them)
    (tracks,) = [h.proto.body for h in at.get("html") if f"A {a}" in h.proto.body]
    assert f"B {b}" in tracks and '<span class="l k">IMGT</span>' in tracks
    assert "the catalog's model and SAE" in "\n".join(c.value for c in at.caption)
    # their associations side by side
    assoc = at.dataframe[-1].value
    assert {"concept", "test_f1 A", "test_f1 B"} <= set(assoc.columns)
    own = cat.feature(a, n_concepts=25)["concepts"]
    assert set(own["concept"].astype(str)) <= set(assoc["concept"])

    # the other feature picked in its selectbox
    at.selectbox(key="_cmp_b").select(str(live[2])).run()
    assert_ok(at)
    assert f"B: {live[2]}" in [s.value for s in at.subheader] and at.query_params["b"] == [str(live[2])]


def test_feature_browser_opens_the_comparison(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _in_app(monkeypatch, tiny_catalog, "features", feature="f00005")
    at.button(key="_fb_compare").click().run()
    assert_ok(at)
    assert _titles(at) == ["Compare features"]
    assert "A: f00005" in [s.value for s in at.subheader]


# ------------------------------------------------------------------------------------------------ 4. links out
def test_link_urls() -> None:
    assert links.therasabdab_url("Abagovomab") == (
        "https://opig.stats.ox.ac.uk/webapps/sabdab-sabpred/therasabdab/search/?therapeutic=Abagovomab")
    assert links.uniprot_gene_url("PDCD1") == "https://www.uniprot.org/uniprotkb?query=gene:PDCD1%20AND%20reviewed:true"
    assert links.uniprot_entry_url("P01857") == "https://www.uniprot.org/uniprotkb/P01857/entry"
    assert links.imgt_gene_url("IGHV1-2*02", "human") == (
        "https://www.imgt.org/genedb/GENElect?query=2+IGHV1-2&species=Homo%20sapiens")
    assert links.target_genes("PDCD1/CD279/PD1;CD3E") == ["PDCD1", "CD3E"]
    assert links.target_genes(float("nan")) == [] and links.target_genes("TBC") == []
    assert links.sequence_links("sp|P01857|IGHG1_HUMAN") == [("P01857 (UniProt)", links.uniprot_entry_url("P01857"))]
    assert links.sequence_links("OAS_4") == []
    assert links.concept_links("region=CDR3") == [("IMGT unique numbering", links.IMGT_NUMBERING_URL)]
    assert links.concept_links("v_family=IGHV1")[0][1].startswith("https://www.imgt.org/genedb/GENElect?query=2+IGHV1")
    assert links.concept_links("pfam=PF00069") == [("PF00069 (InterPro)",
                                                    "https://www.ebi.ac.uk/interpro/entry/pfam/PF00069/")]
    assert links.concept_links("motif=Cys") == []
    evil = links.therasabdab_url('x" onclick="alert(1)')
    assert '"' not in evil and " " not in evil
    for url in (links.therasabdab_url("A"), links.uniprot_gene_url("B"), links.imgt_gene_url("IGHV1-2"),
                links.IMGT_NUMBERING_URL):
        assert url.startswith(links.LINK_OUT_PREFIXES)


@pytest.fixture(scope="module")
def thera_like_catalog(tiny_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny catalog with the Thera-SAbDab table's columns (``Target``, ``Est. Status``) added to its sequences."""
    from workbench.catalog import write_catalog

    adata = Catalog.open(tiny_catalog).adata.copy()
    n = adata.n_obs
    adata.obs["Target"] = ["PDCD1/CD279/PD1;CD3E" if i % 2 else "MUC16/CA125" for i in range(n)]
    adata.obs["Est. Status"] = "Approved"
    out = tmp_path_factory.mktemp("thera_like") / "catalog"
    write_catalog(adata, out)
    return out


def test_feature_and_concept_pages_link_out(thera_like_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(thera_like_catalog)
    fid = "f00005"
    at = page_test("features", thera_like_catalog, monkeypatch)
    at.query_params["feature"] = fid
    at.run()
    assert_ok(at)
    text = _texts(at)
    for ex in [e for e in cat.examples(fid) if e.kind == "top"]:
        assert f"]({links.therasabdab_url(ex.sequence_id)})" in text
        for gene in links.target_genes(cat.sequences.at[ex.sequence_id, "Target"]):
            assert f"]({links.uniprot_gene_url(gene)})" in text
    top = str(cat.features.at[fid, "top_concept"])
    if links.concept_links(top):
        assert f"]({links.IMGT_NUMBERING_URL})" in text

    at = page_test("concepts", thera_like_catalog, monkeypatch)
    at.query_params["concept"] = "region=CDR3"
    at.run()
    assert_ok(at)
    assert f"[IMGT unique numbering]({links.IMGT_NUMBERING_URL})" in _texts(at)


# ------------------------------------------------------------------------------------------------ 5. downloads
@pytest.mark.parametrize("page", ["features", "concepts", "atlas", "compare"])
def test_every_table_has_csv_and_parquet_downloads(page: str, tiny_catalog: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st

    sent: dict[str, Any] = {}
    original = st.download_button

    def spy(label: str, data: Any, *args: Any, **kwargs: Any) -> Any:
        sent[kwargs["key"]] = data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(st, "download_button", spy)
    at = _in_app(monkeypatch, tiny_catalog, page)
    if page == "features":  # with search results too
        at.text_input(key="_fb_query").input("region").run()
        assert_ok(at)
    keys = [b.key for b in at.download_button]
    csv = [k for k in keys if k.endswith("_csv")]
    assert len(csv) >= len(at.dataframe) > 0 and len(keys) == 2 * len(csv)
    assert all(k.removesuffix("_csv") + "_parquet" in keys for k in csv)
    for key in csv:  # the Parquet file holds the CSV's rows and columns
        table = pd.read_csv(io.BytesIO(sent[key]()))  # both files are written when clicked
        parquet = pd.read_parquet(io.BytesIO(sent[key.removesuffix("_csv") + "_parquet"]()))
        assert list(parquet.columns) == list(table.columns) and len(parquet) == len(table)


# ------------------------------------------------------------------------------------------------ 6. live input
def _encode(at: AppTest, text: str) -> AppTest:
    at.text_area(key="live_text").input(text)
    return at.button[0].click().run()


@pytest.mark.skipif(shutil.which("hmmscan") is None, reason="ANARCI needs HMMER's hmmscan (apt-get install hmmer)")
def test_live_track_is_numbered_by_anarci(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st

    cat = Catalog.open(tiny_catalog)
    seq = cat.sequences["sequence"].iloc[7]
    st.cache_data.clear()
    at = _encode(_in_app(monkeypatch, tiny_catalog, "live"), seq)
    assert_ok(at)
    (drawn,) = at.get("html")
    body = drawn.proto.body
    assert '<span class="l k">IMGT</span>' in body and all(re.search(rf">{c} *</span>", body) for c in ("CDR1", "CDR2", "CDR3"))
    assert re.search(r'<span class="q n">[^<]*\b105\b', body)
    # the catalog's own numbering of this chain: the strongest residue's tooltip names its IMGT position
    table = at.dataframe[0].value
    assert body.count('<span class="a') == table["n_residues"].iloc[0]
    imgt = views.parse_positions(cat.sequences["imgt"].iloc[7], len(seq))
    assert any(f"· IMGT {p} ·" in body for p in imgt if p is not None)
    genes = "\n".join(m.value for m in at.markdown)
    assert "IMGT numbering by ANARCI" in genes and "https://www.imgt.org/genedb/GENElect?query=2+IGHV" in genes
    assert {"live_csv", "live_parquet"} <= {b.key for b in at.download_button}  # its table downloads as both

    # without hmmscan: raw positions and a one-line note
    from apps.workbench_app import _live

    st.cache_data.clear()
    monkeypatch.setattr(_live, "hmmscan_path", lambda: None)
    at = _encode(_in_app(monkeypatch, tiny_catalog, "live"), seq)
    assert_ok(at)
    (drawn,) = at.get("html")
    assert '<span class="l k">IMGT</span>' not in drawn.proto.body
    notes = [c.value for c in at.caption if "hmmscan" in c.value]
    assert len(notes) == 1 and "\n" not in notes[0] and "raw residue numbers" in notes[0]
    st.cache_data.clear()


# ------------------------------------------------------------------------------------------------ 7. atlas
def test_atlas_palette_and_named_families(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.open(tiny_catalog)
    at = _in_app(monkeypatch, tiny_catalog, "atlas")
    groups = at.selectbox(key="atlas_group")
    assert groups.value == "region" and "chain_region" not in groups.options[:1]
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    scale = spec["encoding"]["color"]["scale"]
    assert len(set(scale["range"])) == len(scale["range"]) == len(scale["domain"])  # no colour repeats
    assert "best region concept" in json.dumps(spec["encoding"]["color"])

    at.radio(key="atlas_colour").set_value("Family").run()
    assert_ok(at)
    chart = at.get("vega_lite_chart")[0]
    rows = chart_rows(chart)
    var = cat.features
    for fam, part in rows.groupby("family"):
        top = var.loc[part["feature"], "top_concept"].dropna().astype(str)
        name = top.value_counts().index[0] if len(top) else "unexplained"
        assert set(part["family_name"]) == {f"{fam} · {name}"}
    scale = json.loads(chart.proto.spec)["encoding"]["color"]["scale"]
    assert len(set(scale["range"])) == len(scale["range"]) == rows["family_name"].nunique()
    assert views.distinct_palette(60) == list(dict.fromkeys(views.distinct_palette(60)))


# ------------------------------------------------------------------------------------------------ 8. association table
def test_association_table_spans_the_page(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page_test("features", tiny_catalog, monkeypatch)
    at.query_params["feature"] = "f00005"
    at.run()
    assert_ok(at)
    (assoc,) = [d for d in at.dataframe if "concept" in d.value.columns and "test_recall" in d.value.columns]
    config = json.loads(assoc.proto.columns)
    assert config["concept"]["pinned"] and config["concept"]["width"] == "medium"
    assert list(assoc.value.columns) == ["concept", "test_f1", "test_precision", "test_recall", "test_domain_recall",
                                         "threshold", "q_value", "val_f1"]
    assert all(config[c]["width"] == "small" for c in assoc.value.columns if c != "concept")  # 200 + 7 x 75 px
    in_columns = [d for c in at.columns for d in c.dataframe]  # full width, not squeezed into a column
    assert not any("test_recall" in d.value.columns for d in in_columns)


# ------------------------------------------------------------------------------------------------ pages
def test_page_scripts_hold_no_bare_strings() -> None:
    """Streamlit's magic shows a bare string at a page script's top level on the page (only the module docstring
    is exempt), so attribute docstrings there would appear as text."""
    import ast

    for script in [APP, *sorted((APP.parent / "app_pages").glob("*.py"))]:
        body = ast.parse(script.read_text()).body[1:]
        bare = [n.lineno for n in body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                and isinstance(n.value.value, str)]
        assert not bare, (script.name, bare)


# ------------------------------------------------------------------------------------------------ 9. offline
def test_no_external_address_except_the_link_outs(tiny_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for page in PAGES:
        at = _in_app(monkeypatch, tiny_catalog, page)
        for url in URL.findall(_texts(at)):
            assert url.startswith(links.LINK_OUT_PREFIXES), (page, url)
    # the browser tab's icon is an inline emoji (a Material icon there is fetched from Google's font CDN)
    source = APP.read_text()
    assert "page_icon=FAVICON" in source
    favicon = re.search(r'^FAVICON = "(.+)"$', source, re.M)
    assert favicon is not None and not favicon.group(1).startswith(":material")
