"""Helpers shared by the AppTest page checks: browser selections and chart data that AppTest has no API for."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd


def send_selection(at: Any, element: Any, selection: dict[str, Any]) -> Any:
    """Rerun as if the browser had reported ``selection`` for a chart or dataframe with selections on.

    Chart and table selections are browser events that AppTest cannot produce through its public API, so the
    selection's widget state (the JSON string the frontend would send) is appended to the widget states of the next
    run, through AppTest's private ``_tree`` / ``_run``."""
    states = at._tree.get_widget_states()
    state = states.widgets.add()
    state.id = element.proto.id
    state.string_value = json.dumps({"selection": selection})
    return at._run(states)


def chart_rows(chart: Any) -> pd.DataFrame:
    """The rows of an Altair / Vega-Lite chart element's (single) dataset."""
    import pyarrow as pa

    (dataset,) = chart.proto.datasets
    return pa.ipc.open_stream(dataset.data.data).read_all().to_pandas()


def page_test(name: str, catalog: Any, monkeypatch: Any) -> Any:
    """An ``AppTest`` of one page script (``apps/workbench_app/app_pages/<name>.py``) on ``catalog``, given the way
    the app passes it (``WORKBENCH_APP_CATALOG``); run it with ``.run()``."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_APP_CATALOG", str(catalog))
    pages = Path(__file__).resolve().parents[2] / "apps" / "workbench_app" / "app_pages"
    return AppTest.from_file(str(pages / f"{name}.py"), default_timeout=120)


def assert_ok(at: Any) -> None:
    """No exception and no ``st.error`` on the page."""
    assert not at.exception, [getattr(e, "message", None) or e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
