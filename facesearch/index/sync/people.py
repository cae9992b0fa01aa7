"""People among the faces of unlabelled photos: grouped, kept, named, merged and moved, staged on a writer.

The faces come from `build_index(..., labeled=False)`; the grouping from
`facesearch.index.people.clustering`. Where each face is lives in the index's metadata (`people`
rows, `facesearch.index.storage.store`), so every change is one generation of the index: atomic,
crash-safe, rolled back with its commit. The rules (docs/people.md):

- a face is in at most one person, and two faces of one photo are never in one person;
- new faces join the existing people or start new ones (`assign`); old faces stay where they are;
  `recluster` starts over from every face, keeping what the user decided: a named person's faces
  and faces moved into a person stay together (pinned), faces moved out stay alone;
- naming a person makes its faces an identity (searched by `query`, counted by the open-set
  calibration); a name another person has already joins the two; a name a labelled identity has
  adds the faces to that identity;
- a group that looks like a named identity is offered as a suggestion with its score, never merged.

The API (`facesearch.Gallery.people/name/merge/move`) and the service call these with a writer
they hold and commit.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from facesearch.embedder.core.errors import FaceNotFoundError, PeopleError, PersonNotFoundError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.people.clustering import (
    ClusterInputError,
    ClusterParams,
    assign,
    cluster,
    params_for,
    suggest,
    threshold_for,
)
from facesearch.index.storage.store import IndexStore, PersonFace
from facesearch.index.storage.writer import IndexWriter
from facesearch.index.sync.enrolment import check_identity

PERSON_PATTERN = re.compile(r"person-(\d{1,9})")


def person_id(number: int) -> str:
    """`person-0001` for person 1."""
    return f"person-{number:04d}"


def parse_person(text: str) -> int:
    """The number of a person id (`person-0001` -> 1).

    Raises:
        PersonNotFoundError: not of that form.
    """
    m = PERSON_PATTERN.fullmatch(str(text).strip())
    if m is None or int(m.group(1)) == 0:
        raise PersonNotFoundError(f"'{text}' is not a person id: expected person-NNNN as `facesearch people` "
                                  "lists them")
    return int(m.group(1))


@dataclass(frozen=True)
class Group:
    """A provisional person: its faces, its name if given, and the identity it looks like if not."""

    number: int
    name: str | None
    faces: tuple[PersonFace, ...]
    suggestion: tuple[str, float] | None = None  # (identity, score): offered, never applied


@dataclass(frozen=True)
class People:
    """Every person, largest first (ties: lower number), and the faces that are in none."""

    groups: tuple[Group, ...]
    unclustered: tuple[PersonFace, ...]  # grouped, and in no person
    threshold: float | None  # the linking score the grouping used (None: no face to group)
    pending: int = 0  # faces not grouped yet (added since the last grouping)


def cluster_threshold(card: ModelCard, vectors: np.ndarray) -> float:
    """The model's linking threshold (`threshold_for`: the card's pair calibration, else these vectors').

    Raises:
        PeopleError: the card has no calibration and there are too few faces to estimate one.
    """
    try:
        return threshold_for(card.thresholds or None, vectors)
    except ClusterInputError as e:
        raise PeopleError(str(e)) from e


def grouping_params(card: ModelCard, vectors: np.ndarray) -> ClusterParams:
    """Every parameter of a grouping from scratch (`params_for`: the model's threshold, the collection's pair rule).

    Raises:
        PeopleError: as `cluster_threshold`.
    """
    try:
        return params_for(card.thresholds or None, vectors)
    except ClusterInputError:
        # The pair rule could not be estimated from this collection (too few faces, say): the threshold
        # alone, and `cluster` estimates the rest as it goes (or says why nothing can be grouped).
        return ClusterParams(cluster_threshold(card, vectors))


def stored_params(recorded: dict | None) -> ClusterParams | None:
    """The parameters a manifest records for its people (None: none recorded, or unreadable)."""
    if not recorded:
        return None
    try:
        fields = {f.name for f in dataclasses.fields(ClusterParams)}
        return ClusterParams(**{k: v for k, v in recorded.items() if k in fields})
    except (TypeError, ClusterInputError):
        return None


def stage_grouping(writer: IndexWriter, *, recluster: bool = False, seed: int = 0) -> tuple[float | None, int]:
    """Group the faces that clustering has not seen yet (all of them on a first run or with `recluster`).

    A grouping from scratch records its parameters in the manifest (`people`); new faces are then
    assigned by the same parameters, so they follow the rule their groups were made by.

    Returns:
        (the threshold used or None when there is no face, faces whose row was written).
    """
    faces = writer.person_faces()
    if not faces:
        return None, 0
    ids = np.array([f.id for f in faces], np.int64)
    photos = np.unique([f.path for f in faces], return_inverse=True)[1].astype(np.int64)
    seen = np.array([f.person is not None for f in faces])
    if not recluster and seen.all():
        return None, 0
    vectors = writer.vectors(ids)
    params = None if recluster or not seen.any() else stored_params(writer.manifest.people)
    if params is None:
        params = grouping_params(writer.manifest.model_card, vectors)
        writer.set_people({k: v for k, v in dataclasses.asdict(params).items()
                           if not (isinstance(v, float) and not math.isfinite(v))})  # JSON has no infinity
        rows = _regroup(faces, vectors, photos, params, seed)
    else:
        rows = _assign_new(faces, vectors, photos, seen, params)
    writer.put_people(rows)
    return params.threshold, len(rows)


def _regroup(faces: list[PersonFace], vectors: np.ndarray, photos: np.ndarray, params: ClusterParams,
             seed: int) -> list[tuple[int, int, str | None, bool]]:
    """Rows of a grouping from scratch: the user's placements pinned, faces moved out left alone."""
    alone = np.array([f.fixed and f.person == 0 for f in faces])
    take = np.flatnonzero(~alone)
    pins = np.array([f.person if f.fixed and f.person else -1 for f in faces], np.int64)[take]
    labels = cluster(vectors[take], photos[take], params, seed=seed, fixed=pins)
    pinned_name = {f.person: f.name for f in faces if f.fixed and f.person}
    label_name = {int(labels[j]): pinned_name[int(pins[j])] for j in range(len(take)) if pins[j] >= 0}
    rows = []
    for j, i in enumerate(take.tolist()):
        f, label = faces[i], int(labels[j])
        row = (f.id, label + 1 if label >= 0 else 0, label_name.get(label), f.fixed)
        if (f.person, f.name, f.fixed) != row[1:]:
            rows.append(row)
    return rows


def _assign_new(faces: list[PersonFace], vectors: np.ndarray, photos: np.ndarray, seen: np.ndarray,
                params: ClusterParams) -> list[tuple[int, int, str | None, bool]]:
    """Rows of the new faces, each joining an existing person or starting a new one (or alone)."""
    old, new = np.flatnonzero(seen), np.flatnonzero(~seen)
    old_labels = np.array([faces[i].person - 1 if faces[i].person else -1 for i in old], np.int64)
    labels = assign(vectors[new], photos[new], vectors[old], photos[old], old_labels, params)
    names = {faces[i].person: faces[i].name for i in old if faces[i].person}
    return [(faces[i].id, int(label) + 1 if label >= 0 else 0, names.get(int(label) + 1), False)
            for i, label in zip(new.tolist(), labels.tolist())]


def read_people(store: IndexStore, vectors_of: Callable[[Sequence[int]], np.ndarray], card: ModelCard, *,
                suggestions: bool = True, threshold: float | None = None, recorded: dict | None = None) -> People:
    """Every person of the faces in `store`, largest first, with suggestions for the unnamed ones.

    Args:
        store: the metadata at the generation to read.
        vectors_of: stored vectors of live ids (`GalleryIndex.vectors`).
        card: the index's model card (the suggestion threshold is the grouping's).
        suggestions: offer each unnamed person the identity it looks like (reads every identified vector).
        threshold: the linking threshold if already known.
        recorded: the manifest's `people` parameters (their threshold is the grouping's).
    """
    if threshold is None and (params := stored_params(recorded)) is not None:
        threshold = params.threshold
    faces = store.person_faces()
    members: dict[int, list[PersonFace]] = {}
    for f in faces:
        if f.person:
            members.setdefault(f.person, []).append(f)
    unclustered = tuple(f for f in faces if f.person == 0)
    pending = sum(f.person is None for f in faces)
    order = sorted(members, key=lambda n: (-len(members[n]), n))
    offered: dict[int, tuple[str, float]] = {}
    if faces and (suggestions or threshold is None):
        vectors = vectors_of([f.id for f in faces])
        threshold = threshold if threshold is not None else cluster_threshold(card, vectors)
        if suggestions:
            offered = _suggestions(store, vectors_of, faces, vectors, threshold)
    groups = tuple(Group(n, members[n][0].name, tuple(members[n]), None if members[n][0].name else offered.get(n))
                   for n in order)
    return People(groups, unclustered, threshold, pending)


def _suggestions(store: IndexStore, vectors_of, faces: list[PersonFace], vectors: np.ndarray,
                 threshold: float) -> dict[int, tuple[str, float]]:
    """person -> (identity, score) for unnamed people that look like an identity."""
    labels = np.array([f.person if f.person and f.name is None else -1 for f in faces], np.int64)
    if not (labels >= 0).any():
        return {}
    named = list(store.face_identities())
    if not named:
        return {}
    named_vectors = vectors_of([i for i, _ in named])
    numbers, dense = np.unique(labels[labels >= 0], return_inverse=True)  # groups 0..m-1, none empty
    compact = np.full(len(labels), -1, np.int64)
    compact[labels >= 0] = dense
    found = suggest(vectors, compact, named_vectors, np.array([x for _, x in named], dtype=object), threshold)
    return {int(numbers[s.group]): (str(s.identity), float(s.score)) for s in found}


# --- the user's decisions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What a name, merge or move did: the person the faces are in now and how many were placed."""

    person: str | None  # None: the face was moved out (alone)
    name: str | None
    faces: int
    joined: str | None = None  # another person the faces joined (a name it had, or a merge)


def _members(faces: list[PersonFace], number: int, text: str) -> list[PersonFace]:
    found = [f for f in faces if f.person == number]
    if not found:
        raise PersonNotFoundError(f"no person '{text}' in this index: `facesearch people` lists them")
    return found


def _check_apart(a: Sequence[PersonFace], b: Sequence[PersonFace], what: str) -> None:
    shared = sorted({f.path for f in a} & {f.path for f in b})
    if shared:
        raise PeopleError(f"{what} would put two faces of one photo in one person ({shared[0]}); nothing was changed")


def stage_name(writer: IndexWriter, person: str, name: str) -> Change:
    """Name a person: its faces become the identity `name` (joining the person already of that name).

    Raises:
        PersonNotFoundError: no such person.
        IdentityNameError: `name` is empty or breaks the identity rule.
        PeopleError: the person of that name has a face of one of this person's photos.
    """
    number = parse_person(person)
    check_identity(name)
    faces = writer.person_faces()
    mine = _members(faces, number, person)
    other = [f for f in faces if f.name == name and f.person != number]
    target, joined = number, None
    if other:
        _check_apart(mine, other, f"naming {person} '{name}' joins {person_id(other[0].person)}, which")
        target, joined = other[0].person, person_id(other[0].person)
    writer.put_people([(f.id, target, name, True) for f in mine])
    return Change(person_id(target), name, len(mine), joined)


def stage_merge(writer: IndexWriter, into: str, other: str) -> Change:
    """Put every face of person `other` into person `into` (a name either has is kept).

    Raises:
        PersonNotFoundError: either person does not exist.
        PeopleError: the same person twice, two different names, or a photo with a face in each.
    """
    a, b = parse_person(into), parse_person(other)
    if a == b:
        raise PeopleError(f"cannot merge {person_id(a)} with itself: give two different people")
    faces = writer.person_faces()
    first, second = _members(faces, a, into), _members(faces, b, other)
    names = {f.name for f in first + second} - {None}
    if len(names) > 1:
        raise PeopleError(f"{person_id(a)} and {person_id(b)} have different names ({', '.join(sorted(names))}): "
                          "rename one of them first")
    _check_apart(first, second, f"merging {person_id(b)} into {person_id(a)}")
    name = next(iter(names), None)
    writer.put_people([(f.id, a, name, True) for f in first + second])
    return Change(person_id(a), name, len(first) + len(second), person_id(b))


def stage_move(writer: IndexWriter, face_id: int, to: str | None = None) -> Change:
    """Move one face out of its person (it stays alone, also after a recluster) or into person `to`.

    Raises:
        FaceNotFoundError: no live face of an unlabelled photo has this id.
        PersonNotFoundError: `to` does not exist.
        PeopleError: the face is alone already / in `to` already, or `to` has a face of its photo.
    """
    faces = writer.person_faces()
    face = next((f for f in faces if f.id == int(face_id)), None)
    if face is None:
        raise FaceNotFoundError(f"no face {face_id} of an unlabelled photo in this index: `facesearch people "
                                "--json` gives each face's id")
    if to is None:
        if not face.person:
            raise PeopleError(f"face {face_id} is in no person: there is nothing to move it out of")
        writer.put_people([(face.id, 0, None, True)])
        return Change(None, None, 1, person_id(face.person))
    number = parse_person(to)
    members = _members(faces, number, to)
    if face.person == number:
        raise PeopleError(f"face {face_id} is in {person_id(number)} already")
    _check_apart([face], members, f"moving face {face_id} into {person_id(number)}")
    name = members[0].name
    writer.put_people([(face.id, number, name, True)])
    return Change(person_id(number), name, 1, None)
