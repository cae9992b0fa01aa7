"""Identification on LFW: does the gallery's self-calibrated "unknown" threshold keep strangers out at the FPIR asked?

    python benchmarks/lfw_identify.py --lfw-dir ../shared/lfw [--work .identify] [--splits all,devtrain,devtest]
                                      [--enrol 1,2] [--fpir 0.01] [--probes-per-person 2] [--impostors 500]
                                      [--model MODEL_DIR] [--scaling 10000,100000]

Gallery: the first photo of every person of the split with at least 2 photos (1,680 people for all
of LFW; 1,184 in view 1's `peopleDevTrain.txt`, 496 in `peopleDevTest.txt`); with `--enrol 2`
also photo 4 where the person has 4 or more (the probes stay the same). Probes: their photos 2 and
3, plus one photo each of `--impostors` people of the split with a single photo (seeded choice),
who are in no gallery folder and must come out `unknown`. Both folders are symbolic links under
WORK (LFW is never copied); `facesearch eval identify --compare-rules --json` then builds the
index, which calibrates its own threshold from the gallery alone (nothing of the strangers), and
answers every probe as `query` would. Printed: per run, the stored threshold, the FPIR it gives on
the strangers, DIR, and the oracle (the best DIR any threshold reaches at the target FPIR, chosen on
the strangers themselves); then DIR at the target for each decision rule and fusion.

`--scaling` times the calibration of seeded synthetic galleries of those many faces (random
identity clusters, 2.5 faces per identity, 128-d) through the same code, to extrapolate to 1M.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPLITS = {"all": "lfw-names.txt", "devtrain": "peopleDevTrain.txt", "devtest": "peopleDevTest.txt"}


def read_people(lfw_dir: Path, file: str) -> list[tuple[str, int]]:
    """(name, photo count) of every person listed in `file` (lfw-names.txt or a view-1 people file)."""
    out = []
    for line in (lfw_dir / file).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 2:
            out.append((parts[0], int(parts[1])))
    return out


def link_folders(lfw_dir: Path, work: Path, people: list[tuple[str, int]], *, enrol: int, probes_per_person: int,
                 impostors: int, seed: int) -> dict:
    """Fill WORK/gallery and WORK/probes with links to LFW photos; returns the counts."""
    from facesearch.embedder.evaluation.lfw import find_images_dir, image_path

    images = find_images_dir(lfw_dir)
    enrolled = [(name, n) for name, n in people if n >= 2]
    singles = [name for name, n in people if n == 1]
    strangers = sorted(np.random.default_rng(seed).choice(singles, size=min(impostors, len(singles)), replace=False))
    links: list[tuple[Path, Path]] = []
    for name, count in enrolled:
        for k in [1] + ([4] if enrol == 2 and count >= 4 else []):
            links.append((work / "gallery" / name / f"{name}_{k:04d}.jpg", images / image_path(name, k)))
        for k in range(2, min(count, 1 + probes_per_person) + 1):
            links.append((work / "probes" / name / f"{name}_{k:04d}.jpg", images / image_path(name, k)))
    for name in strangers:
        links.append((work / "probes" / name / f"{name}_0001.jpg", images / image_path(name, 1)))
    for link, target in links:
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(target.resolve())
    gallery = sum(1 for link, _ in links if link.parts[-3] == "gallery")
    return {"gallery_people": len(enrolled), "gallery_photos": gallery, "probes": len(links) - gallery,
            "impostor_probes": len(strangers)}


def run(work: Path, fpir: float | None, model: Path | None) -> dict:
    """`facesearch eval identify --compare-rules --json` on WORK/gallery and WORK/probes.

    Without `fpir` the index calibrates at its default, 1%, or at the lowest rate a smaller gallery
    supports (view 1's DevTest: 496 identities); an explicit `--fpir` the gallery cannot resolve is
    refused instead.
    """
    cmd = [sys.executable, "-c", "from facesearch.cli.main import main; main()", "eval", "identify", "--gallery",
           str(work / "gallery"), "--probes", str(work / "probes"), "--compare-rules", "--json"]
    if fpir is not None:
        cmd += ["--fpir", str(fpir)]
    if model is not None:
        cmd += ["--model", str(model)]
    start = time.perf_counter()
    answer = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT).stdout)
    answer["benchmark_seconds"] = time.perf_counter() - start
    return answer


def row(split: str, enrol: int, counts: dict, answer: dict) -> dict:
    """The figures of one run: the stored calibration, what it gives on the strangers, the oracle."""
    d, cal = answer["decision"], answer["calibration"]
    return {"split": split, "enrol": enrol, "identities": answer["gallery_identities"],
            "faces": answer["gallery_faces"], "known_probes": d["known_probes"], "strangers": d["impostor_probes"],
            "rule": d["decision"]["rule"], "fusion": d["decision"]["fusion"],
            "target_fpir": d["decision"]["fpir"] or float("nan"), "threshold": d["decision"]["threshold"],
            "threshold_source": d["decision"]["threshold_source"], "calibration": cal,
            "fpir": d["at_threshold"]["fpir"], "dir": d["at_threshold"]["dir"],
            "oracle_dir": d["oracle"]["dir"] if d["oracle"] else float("nan"),
            "oracle_threshold": d["oracle"]["threshold"] if d["oracle"] else None,
            "rank1": answer["identification"]["rank_rates"]["1"], "rules": answer["rules"], "links": counts}


def table(rows: list[dict]) -> str:
    """The measured table as Markdown."""
    lines = ["| split | enrolled | identities / faces | stored threshold (target FPIR) | FPIR on strangers | DIR | "
             "oracle DIR | DIR - oracle | calibration s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = round(r["fpir"] * r["strangers"])
        lines.append(f"| {r['split']} | {r['enrol']} photo{'s' if r['enrol'] > 1 else ''} | {r['identities']:,} / "
                     f"{r['faces']:,} | {r['threshold']:.4f} ({r['target_fpir']:g}) | {n}/{r['strangers']} = "
                     f"{r['fpir']:.2%} | {r['dir']:.3f} | {r['oracle_dir']:.3f} | {r['dir'] - r['oracle_dir']:+.3f} | "
                     f"{r['calibration']['seconds'] or 0:.2f} |")
    lines += ["", "| split | enrolled | fusion | rule | self-calibrated threshold | FPIR on strangers | DIR | oracle DIR |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for c in r["rules"]:
            if "error" in c:
                continue
            a = c["at_threshold"]
            lines.append(f"| {r['split']} | {r['enrol']} | {c['fusion']} | {c['rule']} | {c['threshold']:.4f} | "
                         f"{a['fpir']:.2%} | {a['dir']:.3f} | {c['oracle']['dir']:.3f} |")
    return "\n".join(lines)


def scaling(sizes: list[int], seed: int = 0) -> list[dict]:
    """Seconds to self-calibrate synthetic galleries of `sizes` faces, through `facesearch.index.openset.open_set`."""
    import shutil
    import tempfile

    from facesearch.embedder.core.model_card import ModelCard
    from facesearch.index import open_writer
    from facesearch.index.storage.store import Photo

    card = ModelCard(name="synthetic", input_height=8, input_width=8, embedding_size=128, alignment_template="none")
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        ids = int(n / 2.5)
        centres = rng.standard_normal((ids, 128)).astype(np.float32)
        owner = np.r_[np.arange(ids), rng.integers(0, ids, n - ids)]
        v = centres[owner] + 0.8 * rng.standard_normal((n, 128)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        tmp = Path(tempfile.mkdtemp(prefix="facesearch-scaling-"))
        try:
            (tmp / "model").mkdir()
            with open_writer(tmp / "index", card=card, model_dir=tmp / "model") as w:
                for i in range(n):
                    w.add_photo(Photo(f"{i}.jpg", f"p{owner[i]:07d}", 1, 1, str(i), 1, "api"), [(0, None)], v[i:i + 1])
                result = w.commit()  # the first commit calibrates: the cost a build pays
                kinds = [s.kind for s in w.manifest.segments]
            c = result.calibration
            seconds = result.seconds["calibration"]
            out.append({"faces": n, "identities": ids, "seconds": seconds, "kinds": kinds, "message": c["message"]})
            print(f"scaling: {n:,} faces, {ids:,} identities ({kinds}): {c['message']}", file=sys.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw-dir", type=Path, default=Path(os.environ.get("FACESEARCH_LFW", ROOT.parent / "shared/lfw")))
    parser.add_argument("--work", type=Path, default=ROOT / ".identify")
    parser.add_argument("--splits", default="all,devtrain,devtest")
    parser.add_argument("--enrol", default="1,2", help="photos enrolled per person: 1, 2 (photo 4 too where there is one)")
    parser.add_argument("--fpir", type=float, default=None, help="target FPIR (default: the index's, 1%%)")
    parser.add_argument("--probes-per-person", type=int, default=2)
    parser.add_argument("--impostors", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: facesearch's default model)")
    parser.add_argument("--scaling", default="", help="comma-separated synthetic gallery sizes (faces) to time")
    parser.add_argument("--collect", action="store_true", help="print the table of the runs already in WORK")
    args = parser.parse_args(argv)

    rows = []
    for split in [s for s in args.splits.split(",") if s]:
        people = read_people(args.lfw_dir, SPLITS[split])
        for enrol in [int(e) for e in args.enrol.split(",") if e]:
            work = (args.work / f"{split}-enrol{enrol}").resolve()
            if args.collect:
                if (work / "identify.json").is_file():
                    rows.append(row(split, enrol, {}, json.loads((work / "identify.json").read_text())))
                continue
            counts = link_folders(args.lfw_dir, work, people, enrol=enrol, probes_per_person=args.probes_per_person,
                                  impostors=args.impostors, seed=args.seed)
            print(f"{split}, {enrol} enrolled: {counts}", file=sys.stderr)
            answer = run(work, args.fpir, args.model)
            (work / "identify.json").write_text(json.dumps(answer, indent=2))
            rows.append(row(split, enrol, counts, answer))
            print(table(rows[-1:]).split("\n")[2], file=sys.stderr)
    timing = scaling([int(s) for s in args.scaling.split(",") if s]) if args.scaling else []
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.collect:
        (args.work / "identify.json").write_text(json.dumps({"rows": rows, "scaling": timing}, indent=2))
    if rows:
        print(table(rows))
    for t in timing:
        print(f"calibration of {t['faces']:,} faces ({t['identities']:,} identities, {t['kinds']}): "
              f"{t['seconds']:.1f} s ({t['message']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
