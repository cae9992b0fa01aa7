"""A tiny LFW look-alike made from synthetic faces: images_deepfunneled/<name>/<name>_NNNN.jpg + pairs.txt."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def make_fake_lfw(faces_dir: Path, out: Path, folds: int = 2, per_kind: int = 10) -> Path:
    """Copy `faces_dir/<id>/<k>.png` to LFW names and write a `folds x per_kind` pairs.txt over them.

    Matched pair `i` of a fold joins two photos of one identity, mismatched pair `i` two identities.
    """
    people = sorted(p for p in faces_dir.iterdir() if p.is_dir())
    names = []
    for person in people:
        for n, photo in enumerate(sorted(person.glob("*.png")), 1):
            target = out / "images_deepfunneled" / person.name / f"{person.name}_{n:04d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(photo).convert("RGB").save(target, quality=95)
        names.append((person.name, n))
    lines = [f"{folds}\t{per_kind}"]
    for fold in range(folds):
        for i in range(per_kind):
            name, count = names[(fold * per_kind + i) % len(names)]
            lines.append(f"{name}\t{1 + i % count}\t{1 + (i + 1) % count}")
        for i in range(per_kind):
            (a, ca), (b, cb) = names[(fold + i) % len(names)], names[(fold + i + 1 + i % 3) % len(names)]
            lines.append(f"{a}\t{1 + i % ca}\t{b}\t{1 + (i + fold) % cb}")
    (out / "pairs.txt").write_text("\n".join(lines) + "\n")
    return out
