"""Identification on LFW: one enrolled photo per person, who is this on the others?

    python benchmarks/lfw_identify.py --lfw-dir ../shared/lfw [--work .identify] [--probes-per-person 2]
                                      [--impostors 500] [--model MODEL_DIR]

Gallery: the first photo of every LFW person with at least 2 photos (1,680 people). Probes: their
next `--probes-per-person` photos, plus one photo each of `--impostors` people with a single photo
(seeded choice), who are in no gallery folder and must come out `unknown`. Both folders are made of
symbolic links under WORK (LFW itself is never copied), then `facesearch eval identify --json`
measures rank-1 / rank-5 and the open-set detection-and-identification rate; this script prints the
figures and writes WORK/identify.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def lfw_people(lfw_dir: Path) -> list[tuple[str, int]]:
    """(name, photo count) of every person in lfw-names.txt."""
    lines = (lfw_dir / "lfw-names.txt").read_text().split("\n")
    return [(name, int(count)) for name, count in (line.split("\t") for line in lines if line.strip())]


def link_folders(lfw_dir: Path, work: Path, probes_per_person: int, impostors: int, seed: int) -> dict:
    """Fill WORK/gallery and WORK/probes with links to LFW photos; returns the counts."""
    from embedder.evaluation.lfw import find_images_dir, image_path

    images = find_images_dir(lfw_dir)
    people = lfw_people(lfw_dir)
    enrolled = [(name, n) for name, n in people if n >= 2]
    singles = [name for name, n in people if n == 1]
    strangers = sorted(np.random.default_rng(seed).choice(singles, size=min(impostors, len(singles)), replace=False))
    links: list[tuple[Path, Path]] = []
    for name, count in enrolled:
        links.append((work / "gallery" / name / f"{name}_0001.jpg", images / image_path(name, 1)))
        for k in range(2, min(count, 1 + probes_per_person) + 1):
            links.append((work / "probes" / name / f"{name}_{k:04d}.jpg", images / image_path(name, k)))
    for name in strangers:
        links.append((work / "probes" / name / f"{name}_0001.jpg", images / image_path(name, 1)))
    for link, target in links:
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(target.resolve())
    probes = sum(1 for link, _ in links if link.parts[-3] == "probes")
    return {"gallery_people": len(enrolled), "probes": probes, "impostor_probes": len(strangers)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw-dir", type=Path, default=Path(os.environ.get("FACESEARCH_LFW", ROOT.parent / "shared/lfw")))
    parser.add_argument("--work", type=Path, default=ROOT / ".identify")
    parser.add_argument("--probes-per-person", type=int, default=2)
    parser.add_argument("--impostors", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: facesearch's default model)")
    args = parser.parse_args(argv)

    work = args.work.resolve()
    counts = link_folders(args.lfw_dir, work, args.probes_per_person, args.impostors, args.seed)
    print(f"linked: {counts}", file=sys.stderr)
    cmd = [sys.executable, "-c", "from cli.main import main; main()", "eval", "identify",
           "--gallery", str(work / "gallery"), "--probes", str(work / "probes"), "--json"]
    if args.model is not None:
        cmd += ["--model", str(args.model)]
    answer = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT).stdout)
    (work / "identify.json").write_text(json.dumps(answer, indent=2))
    print(json.dumps({"setup": counts, "model": answer["model"], "gallery_faces": answer["gallery_faces"],
                      "gallery_skipped": answer["gallery_skipped"], "probe_failures": len(answer["failures"]),
                      "card_threshold": answer["card_threshold"], "identification": answer["identification"]},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
