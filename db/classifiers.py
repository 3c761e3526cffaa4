"""Classifier versions: immutable specs keyed by name and content hash."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import and_, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Classifier
from labelq.errors import Conflict, NotFound
from labelq.spec import STORED, ClassifierSpec


def spec_hash(spec: ClassifierSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def spec_of(classifier: Classifier) -> ClassifierSpec:
    """A stored version's spec (checked in full when it was stored)."""
    return ClassifierSpec.model_validate(classifier.spec, context=STORED)


def store_version(s: Session, spec: ClassifierSpec, *, tenant: str) -> tuple[Classifier, bool]:
    """`spec` as the next version of its name in `tenant`, or its existing version (created:
    False). A concurrent writer taking the same version number is retried in a savepoint."""
    digest = spec_hash(spec)
    mine = Classifier.tenant == tenant
    for _ in range(5):
        found = s.scalar(
            select(Classifier).where(
                mine, Classifier.name == spec.name, Classifier.spec_hash == digest
            )
        )
        if found:
            return found, False
        latest = s.scalar(
            select(func.max(Classifier.version)).where(mine, Classifier.name == spec.name)
        )
        row = Classifier(
            tenant=tenant,
            name=spec.name,
            version=(latest or 0) + 1,
            spec=spec.model_dump(mode="json"),
            spec_hash=digest,
        )
        try:
            with s.begin_nested():
                s.add(row)
            return row, True
        except IntegrityError:
            continue  # another writer took that version; read again
    raise Conflict(f"could not store classifier {spec.name!r}: too many concurrent writers")


def get_classifier(s: Session, name: str, version: int | None, *, tenant: str) -> Classifier:
    """A version of a tenant's classifier (the latest when `version` is None)."""
    query = select(Classifier).where(Classifier.tenant == tenant, Classifier.name == name)
    if version is not None:
        query = query.where(Classifier.version == version)
    row = s.scalar(query.order_by(Classifier.version.desc()).limit(1))
    if row is None:
        what = f"classifier {name!r}" + (f" version {version}" if version is not None else "")
        raise NotFound(f"{what} does not exist", field="classifier")
    return row


def classifier_versions(s: Session, name: str, *, tenant: str) -> list[Classifier]:
    rows = list(
        s.scalars(
            select(Classifier)
            .where(Classifier.tenant == tenant, Classifier.name == name)
            .order_by(Classifier.version)
        )
    )
    if not rows:
        raise NotFound(f"classifier {name!r} does not exist", field="classifier")
    return rows


def classifier_ids(s: Session, name: str, *, tenant: str) -> list[int]:
    """The row ids of every version of a classifier (none when it does not exist)."""
    return list(
        s.scalars(select(Classifier.id).where(Classifier.tenant == tenant, Classifier.name == name))
    )


def latest_classifiers(s: Session, *, tenant: str) -> list[Classifier]:
    latest = (
        select(Classifier.name, func.max(Classifier.version).label("v"))
        .where(Classifier.tenant == tenant)
        .group_by(Classifier.name)
        .subquery()
    )
    return list(
        s.scalars(
            select(Classifier)
            .join(latest, and_(Classifier.name == latest.c.name, Classifier.version == latest.c.v))
            .where(Classifier.tenant == tenant)
            .order_by(Classifier.name)
        )
    )


def classifier_by_id(s: Session, classifier_id: int) -> Classifier:
    """A classifier version by its row id (ids come from rows already scoped to a tenant)."""
    return s.get_one(Classifier, classifier_id)
