"""Scoring backends: each computes completion log-probabilities for token-id requests."""

from labelq.backends.base import ScoreRequest, ScoringBackend

__all__ = ["ScoreRequest", "ScoringBackend"]
