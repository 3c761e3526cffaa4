"""Calibration methods on synthetic scores with known miscalibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from labelq import calibration, metrics
from labelq.errors import InputError


def draw(n: int, k: int = 3, seed: int = 0, scale: float = 1.0, prior: np.ndarray | None = None):
    """True logits from a known model, gold labels drawn from them; the scorer's log-probs are
    the true logits times `scale` (over-confidence) plus a label prior (bias)."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0, 1.5, size=(n, k))
    y = np.array([rng.choice(k, p=p) for p in softmax(true, axis=1)])
    observed = true * scale + (np.log(prior) if prior is not None else 0.0)
    return log_softmax(observed, axis=1), y


def test_temperature_scaling_recovers_the_scale_and_lowers_ece() -> None:
    z, y = draw(20000, scale=3.0)
    cal = calibration.TemperatureScaling().fit(z, y)
    assert cal.temperature == pytest.approx(3.0, rel=0.05)
    assert metrics.ece(cal.apply(z), y) < 0.3 * metrics.ece(np.exp(z), y)


def test_temperature_scaling_agrees_with_netcal() -> None:
    from netcal.scaling import TemperatureScaling as NetcalTS

    z, y = draw(3000, k=4, seed=3, scale=2.0)
    ours = calibration.TemperatureScaling().fit(z, y).apply(z)
    theirs = NetcalTS().fit(np.exp(z), y).transform(np.exp(z))
    assert np.abs(ours - theirs).max() < 2e-3


def test_vector_and_platt_scaling() -> None:
    prior = np.array([0.6, 0.3, 0.1])
    z, y = draw(20000, scale=2.0, prior=prior, seed=1)
    cal = calibration.VectorScaling().fit(z, y)
    assert metrics.nll(cal.apply(z), y) < metrics.nll(np.exp(z), y)
    assert np.allclose(cal.weights, 0.5, atol=0.05)
    z2, y2 = draw(20000, k=2, scale=2.5, prior=np.array([0.8, 0.2]), seed=2)
    platt = calibration.PlattScaling().fit(z2, y2)
    assert platt.a == pytest.approx(0.4, rel=0.08)
    assert metrics.ece(platt.apply(z2), y2) < 0.3 * metrics.ece(np.exp(z2), y2)
    with pytest.raises(InputError, match="two labels"):
        calibration.PlattScaling().fit(z, y)


def test_isotonic_improves_and_is_guarded() -> None:
    z, y = draw(5000, scale=3.0, seed=4)
    fitted = calibration.IsotonicCalibration().fit(z[:4000], y[:4000])
    out = fitted.apply(z[4000:])
    assert np.allclose(out.sum(axis=1), 1.0)
    assert metrics.ece(out, y[4000:]) < 0.5 * metrics.ece(np.exp(z[4000:]), y[4000:])
    with pytest.raises(InputError, match="at least 100"):
        calibration.IsotonicCalibration().fit(z[:50], y[:50])
    small = calibration.IsotonicCalibration().fit(z[:300], y[:300])
    assert small.warning and "1000" in small.warning


def test_contextual_calibration_removes_an_injected_prior() -> None:
    prior = np.array([0.7, 0.2, 0.1])
    z, y = draw(20000, prior=prior, seed=5)
    # Content-free inputs carry no evidence: their distribution is the prior itself.
    content_free = log_softmax(
        np.log(prior)[None, :] + np.random.default_rng(0).normal(0, 0.05, (3, 3)), axis=1
    )
    cal = calibration.ContextualCalibration().fit(content_free)
    fixed = cal.apply(z)
    assert np.allclose(fixed.sum(axis=1), 1.0)
    before = np.bincount(np.exp(z).argmax(1), minlength=3) / len(y)
    after = np.bincount(fixed.argmax(1), minlength=3) / len(y)
    truth = np.bincount(y, minlength=3) / len(y)
    assert np.abs(after - truth).max() < 0.03 < np.abs(before - truth).max()
    assert metrics.accuracy(fixed, y) > metrics.accuracy(np.exp(z), y)


def test_batch_calibration_removes_an_injected_prior() -> None:
    prior = np.array([0.1, 0.2, 0.7])
    z, y = draw(20000, prior=prior, seed=6)
    cal = calibration.BatchCalibration().fit(z[:100])
    batch = z[5000:5400]
    assert metrics.accuracy(cal.apply(batch), y[5000:5400]) > metrics.accuracy(
        np.exp(batch), y[5000:5400]
    )
    predicted = np.bincount(cal.apply(z).argmax(1), minlength=3) / len(y)
    assert np.abs(predicted - np.bincount(y, minlength=3) / len(y)).max() < 0.05
    # A batch smaller than min_batch falls back on the mean stored at fit time.
    assert np.allclose(cal.apply(z[:3]), softmax(z[:3] - cal.mean, axis=1))


@pytest.mark.parametrize(("score", "randomized"), [("lac", False), ("aps", False), ("aps", True)])
@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_conformal_sets_reach_their_coverage_on_fresh_draws(
    score: str, randomized: bool, alpha: float
) -> None:
    n_cal = 2000
    z_cal, y_cal = draw(n_cal, k=5, scale=2.0, seed=10)
    cal = calibration.ConformalPrediction(alpha=alpha, score=score, randomized=randomized).fit(
        z_cal, y_cal
    )
    z, y = draw(20000, k=5, scale=2.0, seed=11)
    sets = cal.sets(z)
    coverage = metrics.set_coverage(sets, y)
    sampling = 3 * np.sqrt(alpha * (1 - alpha) / len(y)) + 3 * np.sqrt(alpha * (1 - alpha) / n_cal)
    assert 1 - alpha - sampling <= coverage
    if randomized or score == "lac":
        assert coverage <= 1 - alpha + 1 / (n_cal + 1) + sampling
    assert 1 <= metrics.mean_set_size(sets) < 5
    assert np.allclose(cal.apply(z), np.exp(z))


def test_conformal_needs_enough_examples() -> None:
    z, y = draw(10, seed=1)
    with pytest.raises(InputError, match="alpha"):
        calibration.ConformalPrediction(alpha=0.05).fit(z, y)


@pytest.mark.parametrize("method", sorted(calibration.METHODS))
def test_params_round_trip_through_json(method: str) -> None:
    z, y = draw(2000, k=2, scale=2.0, seed=2)
    cal = calibration.make(method)
    if method == "contextual":
        cal.fit(z[:3], None)
    else:
        cal.fit(z, y)
    again = calibration.load(method, json.loads(json.dumps(cal.params())))
    assert np.allclose(again.apply(z), cal.apply(z))


def test_fit_with_holdout_reports_before_and_after() -> None:
    z, y = draw(5000, scale=3.0, seed=8)
    report = calibration.fit_with_holdout(
        calibration.make("temperature"), z, y, holdout=0.2, seed=1
    )
    assert (report.n_fit, report.n_holdout) == (4000, 1000)
    assert report.after is not None and report.before is not None
    assert report.after.ece < report.before.ece and report.after.nll < report.before.nll
    conformal = calibration.fit_with_holdout(calibration.make("conformal", alpha=0.1), z, y)
    assert conformal.coverage is not None and conformal.coverage >= 0.85
    with pytest.raises(InputError, match="unknown method"):
        calibration.make("magic")


def test_mondrian_conformal_covers_every_label_not_only_on_average() -> None:
    """Label 0 is common and easy, label 1 rare and hard. Marginal sets at alpha 0.1 cover
    about 90% overall but label 1 far less; Mondrian sets (a q per label) cover each label at
    >= 90% on held-out data, and the fit reports coverage per label either way."""
    from labelq.calibration import ConformalPrediction, fit_with_holdout, load

    rng = np.random.default_rng(5)
    n = 6000
    y = (rng.random(n) < 0.2).astype(np.int64)  # 20% label 1
    margin = np.where(y == 0, rng.normal(3.0, 1.0, n), rng.normal(0.3, 1.5, n))
    logits = np.stack([np.where(y == 0, margin, 0.0), np.where(y == 1, margin, 0.0)], axis=1)
    z = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    reports = {}
    for mondrian in (False, True):
        calibrator = ConformalPrediction(alpha=0.1, mondrian=mondrian)
        reports[mondrian] = fit_with_holdout(calibrator, z, y, holdout=0.5, labels=["easy", "hard"])
        again = load("conformal", calibrator.params())  # stored and read back
        assert np.array_equal(again.sets(z[:50]), calibrator.sets(z[:50]))
    marginal, by_label = reports[False], reports[True]
    assert marginal.coverage is not None and marginal.coverage >= 0.88
    assert marginal.coverage_by_label is not None and marginal.coverage_by_label["hard"] < 0.85
    assert by_label.coverage_by_label is not None
    assert min(v for v in by_label.coverage_by_label.values() if v is not None) >= 0.88
    assert by_label.params["qhats"][1] > by_label.params["qhats"][0]  # the hard label's is wider


def test_a_label_too_rare_for_alpha_is_in_every_mondrian_set() -> None:
    from labelq.calibration import ConformalPrediction

    z = np.log(np.array([[0.9, 0.1]] * 40 + [[0.3, 0.7]] * 5))
    y = np.array([0] * 40 + [1] * 5, dtype=np.int64)
    fitted = ConformalPrediction(alpha=0.1, mondrian=True).fit(z, y)
    assert fitted.qhats is not None and np.isinf(fitted.qhats[1])
    assert fitted.sets(z)[:, 1].all() and "fewer than 9" in fitted.warnings[0]
    assert fitted.params()["qhats"][1] is None  # JSON has no infinity
