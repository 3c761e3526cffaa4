"""Calibration methods: each a small class with `fit` / `apply` and JSON parameters.

Every method works on log-probabilities `z` (n, K): the log of the uncalibrated label
probabilities (softmax of the label scores plus `label_bias`), and returns calibrated
probabilities (n, K). `fit_with_holdout` fits on part of a labelled set and reports metrics
before and after on the held-out rest.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, Field
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_softmax, softmax

from labelq import metrics
from labelq.errors import InputError
from labelq.scoring import readings

Array = NDArray[np.float64]
IntArray = NDArray[np.int64]

CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


def log_probs(scores: Array, bias: Array | None = None) -> Array:
    """log of the uncalibrated label probabilities from label scores (and the spec's bias)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.asarray(log_softmax(scores + (0.0 if bias is None else bias), axis=1))


def _nll_of_logits(logits: Array, y: IntArray) -> float:
    return float(-log_softmax(logits, axis=1)[np.arange(len(y)), y].mean())


class Calibrator(ABC):
    """Fit on log-probabilities (and gold labels, unless `needs_labels` is False)."""

    method: ClassVar[str]
    needs_labels: ClassVar[bool] = True

    @abstractmethod
    def fit(self, z: Array, y: IntArray | None) -> Calibrator: ...

    @abstractmethod
    def apply(self, z: Array) -> Array: ...

    @abstractmethod
    def params(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def from_params(cls, params: dict[str, Any]) -> Calibrator: ...

    def sets(self, z: Array) -> NDArray[np.bool_] | None:
        """Prediction sets, for methods that make them (conformal)."""
        return None


def _require_labels(y: IntArray | None, method: str) -> IntArray:
    if y is None or len(y) == 0:
        raise InputError(f"{method} needs labelled examples", field="labels")
    return np.asarray(y, dtype=np.int64)


class TemperatureScaling(Calibrator):
    """softmax(z / T), T fitted by minimising NLL (Guo et al., 2017)."""

    method = "temperature"

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def fit(self, z: Array, y: IntArray | None) -> TemperatureScaling:
        y = _require_labels(y, self.method)
        result = minimize_scalar(
            lambda log_t: _nll_of_logits(z / math.exp(log_t), y),
            bounds=(math.log(1e-3), math.log(1e3)),
            method="bounded",
            options={"xatol": 1e-7},
        )
        self.temperature = float(math.exp(result.x))
        return self

    def apply(self, z: Array) -> Array:
        return np.asarray(softmax(z / self.temperature, axis=1))

    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TemperatureScaling:
        return cls(float(params["temperature"]))


class VectorScaling(Calibrator):
    """softmax(w * z + b): a temperature and a bias per label, fitted by NLL with L-BFGS."""

    method = "vector"

    def __init__(self, weights: list[float] | None = None, bias: list[float] | None = None):
        self.weights = np.asarray(weights if weights is not None else [], dtype=np.float64)
        self.bias = np.asarray(bias if bias is not None else [], dtype=np.float64)

    def fit(self, z: Array, y: IntArray | None) -> VectorScaling:
        y = _require_labels(y, self.method)
        n, k = z.shape
        onehot = np.eye(k)[y]

        def loss(theta: Array) -> tuple[float, Array]:
            w, b = theta[:k], theta[k:]
            logits = z * w + b
            logp = log_softmax(logits, axis=1)
            grad_logits = (np.exp(logp) - onehot) / n
            value = float(-(logp * onehot).sum() / n)
            return value, np.concatenate([(grad_logits * z).sum(axis=0), grad_logits.sum(axis=0)])

        theta0 = np.concatenate([np.ones(k), np.zeros(k)])
        result = minimize(loss, theta0, jac=True, method="L-BFGS-B")
        self.weights, self.bias = result.x[:k], result.x[k:]
        return self

    def apply(self, z: Array) -> Array:
        return np.asarray(softmax(z * self.weights + self.bias, axis=1))

    def params(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(), "bias": self.bias.tolist()}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> VectorScaling:
        return cls(params["weights"], params["bias"])


class PlattScaling(Calibrator):
    """Two labels: P(label 1) = sigmoid(a * (z1 - z0) + c), with Platt's smoothed targets."""

    method = "platt"

    def __init__(self, a: float = 1.0, c: float = 0.0):
        self.a, self.c = a, c

    def fit(self, z: Array, y: IntArray | None) -> PlattScaling:
        y = _require_labels(y, self.method)
        if z.shape[1] != 2:
            raise InputError(
                "Platt scaling needs exactly two labels; use vector scaling", field="method"
            )
        s = z[:, 1] - z[:, 0]
        n_pos = float((y == 1).sum())
        n_neg = float(len(y) - n_pos)
        t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

        def loss(theta: Array) -> tuple[float, Array]:
            f = theta[0] * s + theta[1]
            p = expit(f)
            # -[t log p + (1-t) log(1-p)], written stably with logaddexp.
            value = float((t * np.logaddexp(0, -f) + (1 - t) * np.logaddexp(0, f)).mean())
            g = (p - t) / len(s)
            return value, np.array([(g * s).sum(), g.sum()])

        result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        self.a, self.c = float(result.x[0]), float(result.x[1])
        return self

    def apply(self, z: Array) -> Array:
        p1 = expit(self.a * (z[:, 1] - z[:, 0]) + self.c)
        return np.stack([1 - p1, p1], axis=1)

    def params(self) -> dict[str, Any]:
        return {"a": self.a, "c": self.c}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PlattScaling:
        return cls(float(params["a"]), float(params["c"]))


class IsotonicCalibration(Calibrator):
    """One-vs-rest isotonic regression (scikit-learn), renormalised to sum to 1."""

    method = "isotonic"
    MIN_EXAMPLES = 100
    ADVISED_EXAMPLES = 1000

    def __init__(self, curves: list[dict[str, list[float]]] | None = None):
        self.curves = curves or []
        self.warning: str | None = None

    def fit(self, z: Array, y: IntArray | None) -> IsotonicCalibration:
        from sklearn.isotonic import IsotonicRegression

        y = _require_labels(y, self.method)
        if len(y) < self.MIN_EXAMPLES:
            raise InputError(
                f"isotonic calibration needs at least {self.MIN_EXAMPLES} labelled examples "
                f"(got {len(y)}); use temperature scaling",
                field="labels",
            )
        if len(y) < self.ADVISED_EXAMPLES:
            self.warning = (
                f"isotonic regression overfits with fewer than "
                f"{self.ADVISED_EXAMPLES} examples (got {len(y)})"
            )
        p = np.exp(z)
        self.curves = []
        for k in range(z.shape[1]):
            reg = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            reg.fit(p[:, k], (y == k).astype(np.float64))
            self.curves.append({"x": reg.X_thresholds_.tolist(), "y": reg.y_thresholds_.tolist()})
        return self

    def apply(self, z: Array) -> Array:
        p = np.exp(z)
        out = np.column_stack(
            [np.interp(p[:, k], c["x"], c["y"]) for k, c in enumerate(self.curves)]
        )
        totals = out.sum(axis=1, keepdims=True)
        # Where every curve says 0, keep the uncalibrated distribution rather than divide by 0.
        return np.where(totals > 0, out / np.where(totals > 0, totals, 1.0), p)

    def params(self) -> dict[str, Any]:
        return {"curves": self.curves}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> IsotonicCalibration:
        return cls(params["curves"])


class ContextualCalibration(Calibrator):
    """ "Calibrate Before Use" (Zhao et al., 2021): divide out the mean label distribution of
    content-free inputs scored in the same prompt, then renormalise. `fit` takes the
    content-free inputs' log-probabilities; it needs no labels."""

    method = "contextual"
    needs_labels = False

    def __init__(self, p_cf: list[float] | None = None, inputs: list[str] | None = None):
        self.p_cf = np.asarray(p_cf if p_cf is not None else [], dtype=np.float64)
        self.inputs = inputs or list(CONTENT_FREE_INPUTS)

    def fit(self, z: Array, y: IntArray | None = None) -> ContextualCalibration:
        self.p_cf = np.exp(z).mean(axis=0)
        return self

    def apply(self, z: Array) -> Array:
        # In log space: z - log p_cf, then softmax (= W p with W = diag(p_cf)^-1, renormalised).
        return np.asarray(softmax(z - np.log(self.p_cf), axis=1))

    def params(self) -> dict[str, Any]:
        return {"p_cf": self.p_cf.tolist(), "content_free_inputs": self.inputs}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ContextualCalibration:
        return cls(params["p_cf"], params.get("content_free_inputs"))


class BatchCalibration(Calibrator):
    """Batch calibration (Zhou et al., 2023): subtract each label's mean log-probability over
    the batch being scored. A batch of at least `min_batch` items is its own estimate; a smaller
    one uses the mean stored at fit time."""

    method = "batch"
    needs_labels = False

    def __init__(self, mean: list[float] | None = None, min_batch: int = 10):
        self.mean = np.asarray(mean if mean is not None else [], dtype=np.float64)
        self.min_batch = min_batch
        self._fixed = False

    def fit(self, z: Array, y: IntArray | None = None) -> BatchCalibration:
        self.mean = z.mean(axis=0)
        return self

    @classmethod
    def over_whole_batch(cls, z: Array) -> BatchCalibration:
        """The batch is all of `z` (a whole job served page by page): its prior is estimated
        once, here, and every later `apply` uses it whatever the size of the slice."""
        calibrator = cls().fit(z) if len(z) else cls()
        calibrator._fixed = True
        return calibrator

    def apply(self, z: Array) -> Array:
        own_estimate = not self._fixed and len(z) >= self.min_batch
        prior = z.mean(axis=0) if own_estimate or not self.mean.size else self.mean
        return np.asarray(softmax(z - prior, axis=1))

    def params(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "min_batch": self.min_batch}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> BatchCalibration:
        return cls(params["mean"], int(params.get("min_batch", 10)))


class ConformalPrediction(Calibrator):
    """Split conformal prediction sets with coverage >= 1 - alpha (marginal, exchangeable data).

    LAC: score 1 - p_gold; the set holds labels with 1 - p <= q. APS: score = probability mass of
    the labels ranked at or above the gold one; the set adds labels by rank until it reaches q
    (randomised, if asked, for exact rather than conservative coverage). q is the
    ceil((n+1)(1-alpha))-th smallest calibration score. Probabilities pass through unchanged.

    Mondrian (`mondrian=True`, class-conditional): one q per label, from the calibration items of
    that gold label alone, so each label's coverage is >= 1 - alpha, not only the average (a
    marginal guarantee can hold overall while a hard, rare label is covered far less). A label
    with too few calibration items for alpha (fewer than 1/alpha - 1) gets q = inf: it is in
    every set, which keeps its guarantee, and the fit says so.
    """

    method = "conformal"

    def __init__(
        self,
        alpha: float = 0.1,
        score: str = "lac",
        qhat: float | None = None,
        randomized: bool = False,
        seed: int = 0,
        mondrian: bool = False,
        qhats: list[float] | None = None,
    ):
        if not 0 < alpha < 1:
            raise InputError("alpha must be between 0 and 1", field="alpha")
        if score not in ("lac", "aps"):
            raise InputError("score must be 'lac' or 'aps'", field="score")
        self.alpha, self.score, self.qhat = alpha, score, qhat
        self.randomized, self.seed = randomized, seed
        self.mondrian, self.qhats = mondrian, qhats
        self.warnings: list[str] = []

    def _quantile(self, scores: Array) -> float:
        """The ceil((n+1)(1-alpha))-th smallest of `scores`; inf when there are too few."""
        n = len(scores)
        rank = math.ceil((n + 1) * (1 - self.alpha))
        if rank > n:
            return math.inf
        return float(np.sort(scores)[rank - 1])

    def _scores(self, p: Array, labels: IntArray, u: Array | None) -> Array:
        idx = np.arange(len(labels))
        p_label = p[idx, labels]
        if self.score == "lac":
            return np.asarray(1.0 - p_label)
        # mass of labels ranked strictly above (ties broken by index, as argsort does)
        order = np.argsort(-p, axis=1, kind="stable")
        rank = np.argsort(order, axis=1, kind="stable")
        above = np.where(rank < rank[idx, labels][:, None], p, 0.0).sum(axis=1)
        return np.asarray(above + (u if u is not None else 1.0) * p_label)

    def fit(self, z: Array, y: IntArray | None) -> ConformalPrediction:
        y = _require_labels(y, self.method)
        n = len(y)
        if self.alpha < 1 / (n + 1):
            raise InputError(
                f"alpha={self.alpha} needs at least {math.ceil(1 / self.alpha - 1)} "
                f"calibration examples (got {n})",
                field="alpha",
            )
        u = np.random.default_rng(self.seed).random(n) if self.randomized else None
        scores = self._scores(np.exp(z), y, u)
        rank = math.ceil((n + 1) * (1 - self.alpha))
        self.qhat = float(np.sort(scores)[min(rank, n) - 1])
        if self.mondrian:
            self.qhats = [self._quantile(scores[y == k]) for k in range(z.shape[1])]
            short = [k for k, q in enumerate(self.qhats) if math.isinf(q)]
            if short:
                self.warnings.append(
                    f"labels {short} have fewer than {math.ceil(1 / self.alpha - 1)} calibration "
                    "items: they are in every set (their coverage is kept, their sets are large)"
                )
        return self

    def apply(self, z: Array) -> Array:
        return np.exp(z)

    def sets(self, z: Array) -> NDArray[np.bool_]:
        if self.qhat is None:
            raise ValueError("conformal predictor is not fitted")
        p = np.exp(z)
        n, k = p.shape
        u = np.random.default_rng(self.seed + 1).random((n, 1)) if self.randomized else None
        out = np.zeros((n, k), dtype=bool)
        for label in range(k):
            labels = np.full(n, label, dtype=np.int64)
            q = self.qhats[label] if self.mondrian and self.qhats is not None else self.qhat
            out[:, label] = self._scores(p, labels, None if u is None else u[:, 0]) <= q
        if self.score == "aps" and not self.randomized:
            # Never empty: keep at least the top label.
            out[np.arange(n), p.argmax(axis=1)] = True
        return out

    def params(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "score": self.score,
            "qhat": self.qhat,
            "randomized": self.randomized,
            "seed": self.seed,
            "mondrian": self.mondrian,
            # JSON has no infinity: a label in every set is stored as null
            "qhats": None
            if self.qhats is None
            else [None if math.isinf(q) else q for q in self.qhats],
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ConformalPrediction:
        qhats = params.get("qhats")
        return cls(
            float(params["alpha"]),
            params["score"],
            params.get("qhat"),
            bool(params.get("randomized", False)),
            int(params.get("seed", 0)),
            bool(params.get("mondrian", False)),
            None if qhats is None else [math.inf if q is None else float(q) for q in qhats],
        )


METHODS: dict[str, type[Calibrator]] = {
    c.method: c
    for c in (
        TemperatureScaling,
        VectorScaling,
        PlattScaling,
        IsotonicCalibration,
        ContextualCalibration,
        BatchCalibration,
        ConformalPrediction,
    )
}


def make(method: str, **options: Any) -> Calibrator:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; one of {sorted(METHODS)}", field="method")
    try:
        return METHODS[method](**options)
    except TypeError as exc:
        raise InputError(f"bad options for {method}: {exc}", field="options") from None


def load(method: str, params: dict[str, Any]) -> Calibrator:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}", field="method")
    return METHODS[method].from_params(params)


class FitReport(BaseModel):
    method: str
    params: dict[str, Any]
    n_fit: int
    n_holdout: int
    seed: int
    holdout: float
    before: metrics.MetricReport | None = None
    after: metrics.MetricReport | None = None
    coverage: float | None = Field(default=None, description="Conformal: held-out coverage.")
    coverage_by_label: dict[str, float | None] | None = Field(
        default=None,
        description="Conformal: held-out coverage among the items of each gold label (None: "
        "no held-out item of it).",
    )
    mean_set_size: float | None = None
    warnings: list[str] = Field(default_factory=list)


def fit_with_holdout(
    calibrator: Calibrator,
    z: Array,
    y: IntArray | None,
    *,
    holdout: float = 0.2,
    seed: int = 0,
    bins: int = 15,
    content_free: Array | None = None,
    labels: Sequence[str] | None = None,
) -> FitReport:
    """Fit on a random (1 - holdout) share and measure before/after on the held-out rest.

    Contextual calibration is fitted on `content_free` log-probs instead; batch calibration on
    the fit share's own scores. Without labels there is no held-out evaluation.
    """
    if not 0 <= holdout < 1:
        raise InputError("holdout must be in [0, 1)", field="holdout")
    n = len(z)
    order = np.random.default_rng(seed).permutation(n)
    n_hold = round(n * holdout) if y is not None else 0
    hold, fit_idx = order[:n_hold], order[n_hold:]
    y_fit = None if y is None else np.asarray(y)[fit_idx]
    if isinstance(calibrator, ContextualCalibration):
        if content_free is None:
            raise InputError("contextual calibration needs the content-free inputs' scores")
        calibrator.fit(content_free, None)
    else:
        calibrator.fit(z[fit_idx], y_fit)
    report = FitReport(
        method=calibrator.method,
        params=calibrator.params(),
        n_fit=len(fit_idx),
        n_holdout=n_hold,
        seed=seed,
        holdout=holdout,
    )
    warning = getattr(calibrator, "warning", None)
    if warning:
        report.warnings.append(warning)
    report.warnings += getattr(calibrator, "warnings", [])
    if y is not None and n_hold:
        y_hold = np.asarray(y)[hold]
        report.before = metrics.report(np.exp(z[hold]), y_hold, bins)
        report.after = metrics.report(calibrator.apply(z[hold]), y_hold, bins)
        sets = calibrator.sets(z[hold])
        if sets is not None:
            report.coverage = metrics.set_coverage(sets, y_hold)
            report.mean_set_size = metrics.mean_set_size(sets)
            names = labels or [str(k) for k in range(z.shape[1])]
            report.coverage_by_label = {
                name: metrics.set_coverage(sets[y_hold == k], y_hold[y_hold == k])
                if (y_hold == k).any()
                else None
                for k, name in enumerate(names)
            }
    return report


# -- applying a calibration to stored results ----------------------------------------------------
def result_log_probs(rows: list[dict[str, Any]], labels: list[str], bias: list[float]) -> Array:
    """Uncalibrated log-probabilities (n, K) from result rows' raw label scores (`logprobs`)."""
    scores = np.array(
        [[row["logprobs"][label] for label in labels] for row in rows], dtype=np.float64
    ).reshape(len(rows), len(labels))
    return log_probs(scores, np.asarray(bias, dtype=np.float64))


def calibrate_rows(
    rows: list[dict[str, Any]],
    labels: list[str],
    bias: list[float],
    calibrator: Calibrator | None,
    info: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Result rows with probabilities, label and confidence readings recomputed under
    `calibrator` (None: uncalibrated) from the raw label scores they carry. `energy`, `logprobs`
    and `completion_logprobs` are raw scores and stay as they are."""
    if not rows:
        return []
    z = result_log_probs(rows, labels, bias)
    probs = np.exp(z) if calibrator is None else calibrator.apply(z)
    sets = None if calibrator is None else calibrator.sets(z)
    read = readings(probs)
    out = []
    for i, row in enumerate(rows):
        new = dict(row)
        new["probs"] = {label: float(probs[i, k]) for k, label in enumerate(labels)}
        new["label"] = labels[int(probs[i].argmax())]
        new["confidence"] = float(read["confidence"][i])
        new["margin"] = float(read["margin"][i])
        new["entropy"] = float(read["entropy"][i])
        new["calibration"] = info if calibrator is not None else None
        if sets is not None:
            new["label_set"] = [label for k, label in enumerate(labels) if sets[i, k]]
        else:
            new.pop("label_set", None)
        out.append(new)
    return out
