"""`IndexSpec`: what a segment's search index is (kind, structure, tuned search parameter) as JSON."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, fields, replace

from facesearch.embedder.core.errors import AnnInputError, IndexFormatError

SPEC_VERSION = 1
KINDS = ("flat", "hnsw", "ivf")
# What tuning aims for (`facesearch.index.storage.ann.tune`): the agreement of the verdict's inputs with
# exact search ("decisions"), or recall@k over faces ("recall", the only objective before it existed).
OBJECTIVES = ("decisions", "recall")
# Where the floor of `floor_recall` came from: the index's calibrated threshold (score rule), the
# held-out rows' best other-identity scores, or (rows without identities) their k-th neighbours'.
FLOOR_SOURCES = ("calibration", "strangers", "neighbours")

log = logging.getLogger(__name__)
_PQ = re.compile(r"^pq([1-9][0-9]*)$")


def codes_bytes(codes: str, d: int) -> int:
    """Bytes one vector's code takes in an IVF list: `flat` 4d, `sq8` d, `pq<m>` m (8-bit codes)."""
    if codes == "flat":
        return 4 * d
    if codes == "sq8":
        return d
    match = _PQ.match(codes)
    if match:
        return int(match.group(1))
    raise AnnInputError(f"unknown IVF codes {codes!r}: expected 'flat', 'sq8' or 'pq<m>' (e.g. 'pq32')")


@dataclass(frozen=True)
class IndexSpec:
    """One segment index's structure and search settings; saved in the manifest as `to_dict()`.

    Positions `0..n-1` of the segment's raw vectors are the index's FAISS ids; the metric is the
    inner product throughout (rows are L2-normalised, so a score is a cosine).

    Attributes:
        kind: "flat" (exact `IndexFlatIP`), "hnsw" (`IndexHNSWFlat`) or "ivf"
            (`IndexIVF{Flat,ScalarQuantizer,PQ}` with a flat coarse quantizer).
        dim: vector dimension d.
        hnsw_m: HNSW links per node (level 0 keeps 2M); hnsw only.
        ef_construction: HNSW build-time beam width; hnsw only.
        nlist: IVF inverted lists; ivf only.
        codes: how IVF lists store vectors: "flat" (float32), "sq8" (8-bit per dimension) or
            "pq<m>" (m bytes: product quantisation with 8-bit sub-codes); ivf only.
        ef_search: HNSW search beam width (tuned); hnsw only.
        nprobe: IVF lists visited per query (tuned); ivf only.
        rerank: for lossy codes (sq8, pq) the index returns `k * rerank` candidates that are
            re-scored exactly from the segment's raw vectors; 1 for exact codes.
        target_recall: with objective "decisions", the floor recall tuning aimed for; with
            "recall", recall@`recall_k` against exact search.
        recall: recall@`recall_k` measured by tuning (1.0 for flat, None before tuning); a reported
            figure under the "decisions" objective.
        recall_at_1: recall@1 measured on the same sample.
        recall_k: the k of `recall`.
        tune_sample: held-out queries the recall was measured on (0: not measured).
        target_met: whether tuning reached its objective's targets (False: it stopped at the largest
            search parameter it tries; see `facesearch.index.storage.ann.tune`). None before tuning.
        objective: "decisions" (agreement >= `target_agreement` and floor recall >=
            `target_recall`) or "recall" (recall@`recall_k` >= `target_recall`); records read
            from manifests written before objectives existed say "recall".
        target_agreement: identity agreement tuning aimed for (objective "decisions").
        agreement: share of held-out queries (searched as themselves and, with their own identity
            left out, as strangers) whose top and runner-up identities agree with exact search
            wherever those score at or above `floor` (ties count as agreeing).
        strict_agreement: the same share with no floor (reported).
        floor: the score above which every face must be found ("threshold - margin", a cosine).
        floor_recall: share of the exact neighbours scoring at or above `floor` that were found.
        floor_source: where `floor` came from (`FLOOR_SOURCES`).
        note: why the targets were not met and what was kept instead; None when they were.
        version: format version of this record.
    """

    kind: str
    dim: int
    hnsw_m: int | None = None
    ef_construction: int | None = None
    nlist: int | None = None
    codes: str | None = None
    ef_search: int | None = None
    nprobe: int | None = None
    rerank: int = 1
    target_recall: float = 0.99
    recall: float | None = None
    recall_at_1: float | None = None
    recall_k: int = 10
    tune_sample: int = 0
    target_met: bool | None = None
    objective: str = "decisions"
    target_agreement: float = 0.999
    agreement: float | None = None
    strict_agreement: float | None = None
    floor: float | None = None
    floor_recall: float | None = None
    floor_source: str | None = None
    note: str | None = None
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise AnnInputError(f"invalid index spec ({problem}): {self!r}")

    def _problem(self) -> str | None:
        def positive(name: str) -> bool:
            value = getattr(self, name)
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        if self.kind not in KINDS:
            return f"kind must be one of {KINDS}, got {self.kind!r}"
        for name in ("dim", "rerank", "recall_k"):
            if not positive(name):
                return f"{name} must be an integer >= 1"
        used = {"flat": (), "hnsw": ("hnsw_m", "ef_construction", "ef_search"),
                "ivf": ("nlist", "codes", "nprobe")}[self.kind]
        for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "codes", "nprobe"):
            value = getattr(self, name)
            if name in used and value is None and name not in ("ef_search", "nprobe"):
                return f"a {self.kind} index needs {name}"
            if name not in used and value is not None:
                return f"{name} does not apply to {self.kind} indexes"
            if value is not None and name != "codes" and not positive(name):
                return f"{name} must be an integer >= 1"
        if self.kind == "ivf":
            codes_bytes(self.codes, self.dim)  # raises on unknown codes
            match = _PQ.match(self.codes)
            if match and self.dim % int(match.group(1)):
                return f"{self.codes} needs a dimension divisible by {match.group(1)}, got {self.dim}"
        if self.rerank != 1 and not self.lossy:
            return "rerank applies only to lossy codes (ivf sq8 / pq)"
        if self.objective not in OBJECTIVES:
            return f"objective must be one of {OBJECTIVES}, got {self.objective!r}"
        if self.floor_source is not None and self.floor_source not in FLOOR_SOURCES:
            return f"floor_source must be one of {FLOOR_SOURCES} or null, got {self.floor_source!r}"
        if self.floor is not None and not (isinstance(self.floor, (int, float)) and math.isfinite(self.floor)):
            return "floor must be a finite number or null"
        if self.note is not None and not isinstance(self.note, str):
            return "note must be a string or null"
        for name in ("target_recall", "recall", "recall_at_1", "target_agreement", "agreement",
                     "strict_agreement", "floor_recall"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)
                                          and 0.0 <= value <= 1.0):
                return f"{name} must be a number in [0, 1]"
        if not isinstance(self.tune_sample, int) or self.tune_sample < 0:
            return "tune_sample must be an integer >= 0"
        if self.target_met not in (None, True, False):
            return "target_met must be true, false or null"
        return None

    @property
    def lossy(self) -> bool:
        """True when the index stores compressed codes (scores need exact re-ranking)."""
        return self.kind == "ivf" and self.codes != "flat"

    @property
    def factory(self) -> str:
        """The FAISS `index_factory` string of this structure (inner-product metric), for logs and docs."""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        codes = {"flat": "Flat", "sq8": "SQ8"}.get(self.codes) or f"PQ{self.codes[2:]}x8"
        return f"IVF{self.nlist},{codes}"

    @property
    def search_parameter(self) -> tuple[str, int | None] | None:
        """("ef_search", value) for hnsw, ("nprobe", value) for ivf, None for flat."""
        if self.kind == "hnsw":
            return "ef_search", self.ef_search
        if self.kind == "ivf":
            return "nprobe", self.nprobe
        return None

    def with_search(self, value: int) -> IndexSpec:
        """A copy with the search parameter (ef_search or nprobe) set to `value`."""
        name = self.search_parameter
        if name is None:
            raise AnnInputError("a flat index has no search parameter to set")
        return replace(self, **{name[0]: int(value)})

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field (None included), read back by `from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IndexSpec:
        """Read a spec written by `to_dict`.

        Fields this version does not know (written by a newer facesearch of the same format
        version) are ignored; fields it knows but the record lacks take their defaults, except
        `objective`: a record without one was tuned for recall@k, before objectives existed.

        Raises:
            IndexFormatError: not a dict, a newer or unknown version, missing `kind`/`dim`, or
                values that do not make a valid spec.
        """
        if not isinstance(d, dict):
            raise IndexFormatError(f"an index spec must be a JSON object, got {type(d).__name__}")
        version = d.get("version")
        if version != SPEC_VERSION:
            raise IndexFormatError(
                f"index spec version {version!r} is not one this facesearch reads ({SPEC_VERSION}): "
                "upgrade facesearch, or rebuild the index with this one")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            log.info("index spec fields %s are not known to this facesearch: ignored", unknown)
        d = {name: value for name, value in d.items() if name in known}
        d.setdefault("objective", "recall")
        missing = sorted({"kind", "dim"} - set(d))
        if missing:
            raise IndexFormatError(f"index spec lacks {missing}: the manifest is damaged; rebuild the index")
        try:
            return cls(**d)
        except AnnInputError as e:
            raise IndexFormatError(f"index spec in the manifest is invalid: {e}; rebuild the index") from e
