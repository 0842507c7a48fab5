"""The capacity model calibrated from a short real run on the test stack (two rates of the default mix,
CPU sampled per tier, Caddy's access log read back), the same calibration recomputed from the saved
run alone, and the capacity page rendered in-process (AppTest; no stack needed: it falls back to
default costs when the data dir has no calibration)."""
import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from workbench.capacity import calibration, costs, machine, measure
from workbench.loadgen.runs import load_result

RATES, SECONDS = (30.0, 60.0), 3.0


@pytest.fixture(scope="module")
def live(stack_config, stack):
    return measure.calibrate_live(stack_config, [{"rate": r, "duration_s": SECONDS} for r in RATES],
                                  label="pytest capacity", idle_s=1.0)


def test_a_short_run_calibrates_every_cost(live):
    assert live["source"] == "measured" and len(live["runs"]) == 2
    # Caddy's access log held the runs' requests, each with its Server-Timing.
    assert live["requests"] >= 0.9 * sum(RATES) * SECONDS, live["requests"]
    assert live["app_ms"]["user"]["n"] > 0 and live["app_ms"]["user"]["mean"] > 0
    assert live["db_ms"]["primary"]["mean"] > 0
    assert live["lb_ms"]["low"] <= live["lb_ms"]["mean"] <= live["lb_ms"]["high"]
    # CPU per request per tier, with a spread; the app servers spend something on every request.
    app = live["cpu_ms"]["app"]
    assert app["mean"] > 0 and app["low"] <= app["mean"] <= app["high"]
    fit = live["cpu_fit"]["total"]
    assert fit["per_request_ms"] > 0 and fit["low"] <= fit["high"]
    c = costs.from_calibration(live)
    assert c.source.startswith("calibration") and c.app_cpu_ms_read > 0
    m = machine.Machine.from_calibration(live)
    assert m.saturation_rps > 0 and m.percentile(RATES[0]) > 0


def test_the_saved_run_alone_gives_the_same_request_costs(live, stack_config):
    run = load_result(stack_config, live["runs"][0])
    records = calibration.read_access_log(stack_config.log_dir, run)
    again = calibration.calibrate([run], {run["id"]: records})
    assert again["requests"] == pytest.approx(RATES[0] * SECONDS, rel=0.1)
    assert "no CPU samples" in " ".join(again["notes"])
    assert costs.from_calibration(again).app_cpu_ms_read > 0  # the wall-time proxy


def test_the_capacity_page_labels_every_modelled_figure():
    at = AppTest.from_string(f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
                             "from lessons.app_pages import capacity\ncapacity.render()", default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Capacity model"]
    labels = [m.label for m in at.metric]
    assert labels and all("modelled" in label for label in labels), labels
    assert "App servers (modelled)" in labels
    # Moving the rate slider to 1,000 req/s re-sizes the fleet.
    before = next(m.value for m in at.metric if m.label == "App servers (modelled)")
    at.select_slider[0].set_value(1_000).run()
    after = next(m.value for m in at.metric if m.label == "App servers (modelled)")
    assert int(after.replace(",", "")) < int(before.replace(",", ""))
