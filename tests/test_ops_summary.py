"""The operator summary: hand-computed savings on a small log, fitted prices, cascades."""

from __future__ import annotations

import pytest

from router.ops.summary import PriceBook, fit_prices, price_book, summarize

PRICES = {"cheap": (1e-6, 2e-6), "strong": (1e-5, 2e-5)}


def rec(i, model, p, c, cost, q_cheap=None, q_strong=None, **extra):
    r = {"request_id": f"r{i}", "ts": 1000.0 + i, "status": "ok", "http_status": 200,
         "kind": "route", "policy": "knn", "model": model, "prompt_tokens": p,
         "completion_tokens": c, "cost": cost, "latency_ms": 10.0 * (i + 1),
         "key_name": "alice", "attempts": [{"model": model, "error": None}]}
    if q_cheap is not None:
        r["candidates"] = [{"model": "cheap", "quality": q_cheap},
                           {"model": "strong", "quality": q_strong}]
    r.update(extra)
    return r


def small_log():
    return [
        rec(0, "cheap", 100, 50, 0.0002, 0.6, 0.9),
        rec(1, "strong", 200, 100, 0.004, 0.5, 0.8,
            feedback={"reward": 1.0, "source": "api"}),
        {"request_id": "r2", "ts": 1002.0, "status": "error", "http_status": 502,
         "error_code": "upstream_error", "kind": "route",
         "attempts": [{"model": "strong", "error": "status"}, {"model": "cheap",
                                                               "error": "status"}]},
    ]


def test_savings_match_the_hand_computed_value():
    s = summarize(small_log(), PriceBook(PRICES, {b: "config" for b in PRICES}))
    sv = s["savings"]
    # always-strong: (100*1e-5 + 50*2e-5) + (200*1e-5 + 100*2e-5) = 0.002 + 0.004
    assert sv["reference"] == "strong"
    assert sv["counterfactual_usd"] == pytest.approx(0.006)
    assert sv["actual_usd"] == pytest.approx(0.0042)
    assert sv["saved_usd"] == pytest.approx(0.0018)
    assert sv["saved_share"] == pytest.approx(0.3)
    assert sv["estimated_quality_served"] == pytest.approx((0.6 + 0.8) / 2)
    assert sv["estimated_quality_reference"] == pytest.approx((0.9 + 0.8) / 2)
    assert (sv["feedback_mean_served"], sv["feedback_n_served"]) == (1.0, 1)
    assert s["requests"] == 3 and s["answered"] == 2 and s["errors"] == {"upstream_error": 1}
    assert s["fallbacks"] == {"strong -> cheap": 1} and s["requests_with_fallback"] == 1
    assert s["mix_by_key"] == {"alice": {"cheap": 1, "strong": 1}}
    assert s["backends"]["strong"]["feedback_mean"] == 1.0
    assert s["spend_usd"] == pytest.approx(0.0042)


def test_a_named_reference_and_prices_fitted_from_the_records():
    log = [rec(i, "cheap", 10 * (i + 1), 5 * (i % 3 + 1), 1e-6 * 10 * (i + 1)
               + 2e-6 * 5 * (i % 3 + 1)) for i in range(6)]
    fitted = fit_prices(log)
    assert fitted["cheap"] == pytest.approx(PRICES["cheap"], rel=1e-6)
    book = price_book(log, {"strong": PRICES["strong"]}, lookup=None)
    assert book.source == {"strong": "config", "cheap": "fitted to the records"}
    sv = summarize(log, book, reference="cheap")["savings"]
    assert sv["saved_usd"] == pytest.approx(0.0, abs=1e-12)


def test_a_cascade_spends_on_every_backend_it_called():
    r = rec(0, "strong", 200, 40, 0.0022, kind="cascade", cascade={
        "labels": {"cheap": 0.0, "strong": 1.0}},
        attempts=[{"model": "cheap", "cost": 0.0002, "error": None},
                  {"model": "strong", "cost": 0.002, "error": None}])
    s = summarize([r], PriceBook(PRICES, {}))
    assert s["backends"]["cheap"]["spend_usd"] == pytest.approx(0.0002)
    assert s["backends"]["strong"]["spend_usd"] == pytest.approx(0.002)
    assert s["backends"]["cheap"]["auto_reward_mean"] == 0.0
    assert s["fallbacks"] == {}
    # the reference is priced at one mean call: 100 prompt and 20 completion tokens
    assert s["savings"]["counterfactual_usd"] == pytest.approx(100 * 1e-5 + 20 * 2e-5)


def test_router_logs_report_writes_the_report_from_the_store(tmp_path, capsys):
    import json

    import yaml

    from router.cli import main
    from router.state.outcome_store import open_outcome_store
    from tests.upstream import backend_entry

    store = open_outcome_store(tmp_path / "state", None, "costroute:outcomes")
    log = small_log()
    fb = log[1].pop("feedback")
    store.write([{"event": "outcome", **r} for r in log]
                + [{"event": "feedback", "request_id": "r1", "ts": 1001.5, **fb}])
    store.close()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "model_list": [backend_entry("cheap", "http://127.0.0.1:9", *PRICES["cheap"]),
                       backend_entry("strong", "http://127.0.0.1:9", *PRICES["strong"])],
        "state": {"dir": str(tmp_path / "state")}}))
    out = tmp_path / "report"
    assert main(["logs", "report", "--config", str(cfg), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["savings"]["saved_usd"] == pytest.approx(0.0018)
    assert s["backends"]["strong"]["feedback_n"] == 1
    md = (out / "report.md").read_text()
    assert "Saved: $0.0018 (30.0% of the counterfactual)" in md
    for png in ("requests_over_time.png", "spend_over_time.png", "model_mix.png",
                "latency_by_backend.png", "rewards_by_backend.png", "savings.png"):
        assert (out / png).stat().st_size > 1000, png
    assert main(["logs", "report", "--config", str(cfg), "--out", str(out),
                 "--since", "2d"]) == 2  # the log is from 1970: nothing that recent
    assert "no outcome records" in capsys.readouterr().err
