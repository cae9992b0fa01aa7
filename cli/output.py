"""Text renderings of command results (the --json forms are the dicts themselves)."""

from __future__ import annotations


def format_query(answer: dict) -> str:
    """Render a query answer: one block per face, its verdict, then the top identities."""
    lines = []
    faces = answer["faces"]
    for n, face in enumerate(faces, 1):
        where = "" if face.get("box") is None else " at " + ",".join(f"{v:.0f}" for v in face["box"])
        header = f"face {n}{where}: " if len(faces) > 1 or face.get("box") is not None else ""
        verdict = face["verdict"]
        best = face["matches"][0]["score"] if face["matches"] else float("nan")
        if verdict == "unknown":
            lines.append(f"{header}unknown (best score {best:.3f} < threshold {answer['threshold']:.3f})")
        else:
            lines.append(f"{header}{verdict} (score {best:.3f}, threshold {answer['threshold']:.3f})")
        for rank, match in enumerate(face["matches"], 1):
            lines.append(f"  {rank}. {match['identity']:<30} {match['score']:.3f}  {match['path']}")
    return "\n".join(lines)


def format_build_report(report: dict) -> str:
    """Render a build report: what changed, what was skipped and why, and how fast."""
    lines = [
        f"index: {report['index_dir']} ({report['vectors']} faces of {report['identities']} identities, "
        f"model {report['model']})",
        f"photos: {report['total_files']} seen, {report['added']} added, {report['updated']} updated, "
        f"{report['removed']} removed, {report['unchanged']} unchanged",
    ]
    if report["images_per_second"]:
        lines.append(f"embedded at {report['images_per_second']:.1f} images/s "
                     f"(embed {report['seconds']['embed']:.1f} s, save {report['seconds']['save']:.1f} s)")
    if report["no_face"] or report["multi_face"]:
        lines.append(f"{report['no_face']} photo(s) without a face, {report['multi_face']} with several")
    if report["ignored"]:
        lines.append(f"{report['ignored']} file(s) without an image extension ignored")
    if report["skipped"]:
        lines.append(f"skipped {len(report['skipped'])} unreadable file(s):")
        lines.extend(f"  {item['path']}: {item['reason']}" for item in report["skipped"])
    if not report["written"]:
        lines.append("nothing changed; the index was left as it was")
    return "\n".join(lines)


def format_train(result: dict) -> str:
    """Render a training run's summary and the command that comes next."""
    lines = [f"trained on {result['num_train_images']} images of {result['num_classes']} identities "
             f"in {result['seconds']:.0f} s"]
    if result.get("val_pair_acc") is not None:
        lines.append(f"pair verification on held-out images: {result['initial_val_pair_acc']:.3f} untrained -> "
                     f"{result['val_pair_acc']:.3f} (threshold {result['val_pair_threshold']:.3f})")
    lines.append(f"checkpoint: {result['model_path']}")
    lines.append(f"next: facesearch export {result['out_dir']} --out MODEL_DIR")
    return "\n".join(lines)


def format_export(result: dict) -> str:
    """Render an export: where it went, what the card says, the parity it proved."""
    card, parity = result["card"], result["parity"]
    lines = [f"exported {card['name']} to {result['model_dir']}",
             f"input {card['input_height']}x{card['input_width']} {card['channel_order']}, "
             f"{card['embedding_size']}-d, template {card['alignment_template']}"]
    for fmt in ("onnx", "savedmodel"):
        if parity.get(f"{fmt}_min_cosine") is not None:
            lines.append(f"{fmt}: min cosine vs Keras {parity[f'{fmt}_min_cosine']:.7f} over "
                         f"{parity['parity_samples']} inputs (required {parity['min_cosine_required']})")
    lines.append(f"next: facesearch build-index PHOTOS_DIR --model {result['model_dir']}")
    return "\n".join(lines)
