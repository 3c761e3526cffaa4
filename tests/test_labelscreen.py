"""Which gold labels to doubt (confident learning) and which items to label next: the core on
arrays whose answer is known, the fit's screen, and GET .../to-label against the results."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from labelq.labelscreen import in_turn, label_issues
from tests.conftest import create_key, make_client
from tests.test_dashboard import DASH, NAME
from tests.test_estimation import seeded  # noqa: F401 - the fixture


def test_confident_learning_finds_the_flipped_labels() -> None:
    """A model right about 900 of 1000 items with a margin; 30 of the confidently predicted
    items get the wrong gold label: every one of the 30 is flagged, each suggesting its true
    label, and the flipped ones rank first."""
    rng = np.random.default_rng(0)
    n, labels = 1000, ["a", "b", "c"]
    truth = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), truth] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    confident = np.flatnonzero(probs[np.arange(n), truth] > 0.9)
    flipped = rng.choice(confident, 30, replace=False)
    y = truth.copy()
    y[flipped] = (truth[flipped] + 1) % 3
    issues = label_issues(probs, y, labels)
    found = {i.index for i in issues}
    assert set(flipped) <= found
    for issue in issues:
        if issue.index in set(flipped):
            assert issue.suggested == labels[truth[issue.index]]
            assert issue.given == labels[y[issue.index]]
    assert {i.index for i in issues[:30]} == set(flipped)  # the most doubtful first
    assert (
        label_issues(probs, truth, labels)[:1] == []
        or len(label_issues(probs, truth, labels)) < 100
    )
    assert label_issues(np.empty((0, 3)), np.empty(0, dtype=np.int64), labels) == []


def test_in_turn_shares_and_passes_on_what_a_short_group_lacks() -> None:
    assert in_turn([[1, 2, 3, 4], [10], [20, 21]], 5) == [1, 10, 20, 2, 21]
    assert in_turn([[1, 2, 3, 4], [10], [20, 21]], 7) == [1, 10, 20, 2, 21, 3, 4]
    assert in_turn([[1, 2], []], 10) == [1, 2]


def test_to_label_gives_the_least_confident_unlabelled_items_label_by_label(seeded: Any) -> None:  # noqa: F811
    c, ids, factory = seeded
    answer = c.get(f"{DASH}/to-label", params={"job": ids["new"], "n": 20}).json()
    items = answer["items"]
    assert len(items) == 20 and sum(answer["by_label"].values()) == 20
    labelled = set(list(ids["gold"])[300:400])
    assert not {i["custom_id"] for i in items} & labelled, "only items without a gold label"
    rows = [
        r
        for r in c.get(f"/v1/jobs/{ids['new']}/results", params={"limit": 1000}).json()["data"]
        if r["status"] == "succeeded" and r["custom_id"] not in labelled
    ]
    for label in answer["by_label"]:
        mine = [i for i in items if i["predicted"] == label]
        least = sorted(r["confidence"] for r in rows if r["label"] == label)[: len(mine)]
        assert [i["confidence"] for i in mine] == pytest.approx(least)
        assert all(i["input"]["text"] for i in mine)  # what a labeller reads
    assert {items[0]["predicted"], items[1]["predicted"]} == set(answer["by_label"])  # in turn
    assert c.get(f"{DASH}/to-label", params={"n": 0}).json()["field"] == "n"
    other = create_key(factory, "labeller", tenant="other", scopes=("read",))
    keyed, _ = make_client(factory, None, no_auth=False)
    with keyed:
        hidden = keyed.get(f"{DASH}/to-label", headers={"Authorization": f"Bearer {other}"})
    assert hidden.status_code == 404 and NAME in hidden.json()["error"]


def test_a_fit_reports_and_can_leave_out_doubtful_gold_labels(seeded: Any) -> None:  # noqa: F811
    """Gold labels contradicting the model's most confident predictions on job `old`: the fit's
    screen names them; with `exclude_label_issues` they are left out of the fit."""
    c, ids, _ = seeded
    rows = [
        r
        for r in c.get(
            f"/v1/jobs/{ids['old']}/results", params={"limit": 1000, "calibration": "none"}
        ).json()["data"]
        if r["status"] == "succeeded"
    ]
    wrong = sorted(rows, key=lambda r: -r["confidence"])[:10]
    flip = {"positive": "negative", "negative": "positive"}
    labels = {r["custom_id"]: ids["gold"][r["custom_id"]] for r in rows}
    labels.update({r["custom_id"]: flip[r["label"]] for r in wrong})
    assert c.post(f"/v1/jobs/{ids['old']}/labels", json=labels).status_code == 200
    fits = {}
    for exclude in (False, True):
        made = c.post(
            f"{DASH}/calibrations",
            json={"method": "temperature", "job_id": ids["old"], "exclude_label_issues": exclude},
        ).json()
        fits[exclude] = c.get(f"{DASH}/calibrations/{made['id']}").json()["fitted_on"]
    kept, left = fits[False], fits[True]
    screen = kept["label_issues"]
    assert screen["of"] == 300 and not screen["excluded"]
    named = {e["item"] for e in screen["examples"]}
    assert {r["custom_id"] for r in wrong} <= named  # the most confidently contradicted first
    assert kept["n_fit"] + kept["n_holdout"] == 300
    assert left["label_issues"]["excluded"] and left["label_issues"]["count"] == screen["count"]
    assert left["n_fit"] + left["n_holdout"] == 300 - screen["count"]
