"""Text renderings of command results (the --json forms are the dicts themselves)."""

from __future__ import annotations

from pathlib import Path


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


def format_detect(answer: dict) -> str:
    """Render a detection: one line per face (box, score), then what was written."""
    faces = answer["faces"]
    lines = [f"{len(faces)} face(s) in {answer['image']} ({answer['width']}x{answer['height']})"]
    for n, face in enumerate(faces, 1):
        lines.append(f"  {n}. box {','.join(f'{v:.0f}' for v in face['box'])}  score {face['score']:.3f}")
    if answer.get("annotated"):
        lines.append(f"annotated: {answer['annotated']}")
    if answer.get("crops") is not None:
        lines.append(f"{len(answer['crops'])} crop(s) aligned to {answer['template']}: "
                     + (str(Path(answer['crops'][0]).parent) if answer["crops"] else "none"))
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
    if result.get("initial_step"):
        lines.append(f"resumed after epoch {result['initial_epoch']} (batch {result['initial_step']} of the stream); "
                     f"optimizer step {result['optimizer_steps']}")
    if result.get("mixed_precision"):
        lines.append("mixed precision: float16 backbone, float32 head, loss and weights")
    if result.get("loaded_layers") or result.get("skipped_layers"):
        lines.append(f"init weights: {len(result['loaded_layers'])} layers loaded; left as built: "
                     f"{', '.join(result['skipped_layers']) or 'none'}")
    if result.get("val_pair_acc") is not None:
        lines.append(f"pair verification on {result.get('val_pairs_from', 'held-out images')}: "
                     f"{result['initial_val_pair_acc']:.3f} untrained -> "
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


def _failures(result: dict, what: str) -> list[str]:
    failures = result["failures"]
    if not failures:
        return []
    lines = [f"{len(failures)} {what} gave no face vector (failure to enrol; left out of the figures):"]
    lines += [f"  {f['path']}: {f['reason']}" for f in failures[:10]]
    return lines + ([f"  ... and {len(failures) - 10} more (see --json)"] if len(failures) > 10 else [])


def format_eval_lfw(result: dict) -> str:
    """Render `eval lfw`: k-fold accuracy, AUC, TAR at FAR, best threshold, ROC file, calibration."""
    v = result["verification"]
    lines = [f"model {result['model']} on {result['pairs_file']}: {v['pairs']} pairs ({v['positives']} same, "
             f"{v['negatives']} different), {result['images']} images embedded once at "
             f"{result['images_per_second']:.1f} images/s"]
    lines += _failures(result, "image(s)")
    if result["pairs_excluded"]:
        lines.append(f"{result['pairs_excluded']} pair(s) left out: an image gave no face vector")
    how = (f"{v['folds']}-fold, threshold chosen on the other folds" if v["folds"] > 1
           else "one fold: threshold fit on these pairs")
    lines.append(f"accuracy      {v['accuracy']:.4f} +/- {v['accuracy_std']:.4f} ({how})")
    lines.append(f"AUC           {v['auc']:.4f}")
    for p in v["tar_at_far"]:
        lines.append(f"TAR @ FAR {p['far_target']:<5g} {p['tar']:.4f} (threshold {p['threshold']:.4f}, "
                     f"measured FAR {p['far']:.4f})")
    lines.append(f"best threshold {v['threshold']:.4f} (accuracy {v['best_accuracy']:.4f} on all pairs)")
    if result["roc_png"]:
        lines.append(f"ROC curve: {result['roc_png']}")
    if result["calibrated"] is not None:
        lines.append(f"calibrated {result['model_dir']}/model_card.json: "
                     + ", ".join(f"{k} = {t:.4f}" for k, t in sorted(result["calibrated"].items()))
                     + " (query's 'unknown' now uses far_1e-3)")
    return "\n".join(lines)


def format_eval_identify(result: dict) -> str:
    """Render `eval identify`: rank-k rates of known probes, open-set DIR at false alarm rates."""
    r = result["identification"]
    lines = [f"model {result['model']}: gallery {result['gallery']} ({result['gallery_faces']} faces of "
             f"{result['gallery_identities']} identities), probes {result['probes']} ({r['known_probes']} of "
             f"enrolled identities, {r['unknown_probes']} impostors)"]
    lines += _failures(result, "probe(s)")
    lines += [f"rank-{k} identification {rate:.4f}" for k, rate in r["rank_rates"].items()]
    if not r["open_set"]:
        lines.append("no impostor probes (identities without a gallery folder): no open-set figures")
    for p in r["open_set"]:
        at = (f"at FAR {p['far_target']:g}" if p["far_target"] is not None
              else "at the model card's threshold")
        far = "n/a" if p["far"] != p["far"] else f"{p['far']:.4f}"  # NaN without impostors
        lines.append(f"open-set {at}: DIR {p['dir']:.4f}, false alarms {far} (threshold {p['threshold']:.4f})")
    return "\n".join(lines)


def format_models_install(result: dict) -> str:
    """Render `models install`: where the model went, its card, the parity its export proved."""
    card, parity = result["card"], result["parity"]
    return (f"{'installed' if result['converted'] else 'already installed'} {card['name']} in {result['model_dir']}\n"
            f"input {card['input_height']}x{card['input_width']} {card['channel_order']}, "
            f"{card['embedding_size']}-d, template {card['alignment_template']}\n"
            f"onnx: min cosine vs Keras {parity['onnx_min_cosine']:.7f} over {parity['parity_samples']} inputs\n"
            "next: facesearch build-index PHOTOS_DIR   (the default model needs no --model)")


def format_models_list(result: dict) -> str:
    """Render `models list`: one line per model, installed or not."""
    lines = []
    for m in result["models"]:
        state = f"installed in {m['model_dir']}" if m["installed"] else "not installed (facesearch models install)"
        lines.append(f"{m['name']}{' (default)' if m['default'] else ''}: {state}")
    return "\n".join(lines)


def format_prepare(result: dict) -> str:
    """Render `prepare`: shards written, images skipped, the command that comes next."""
    lines = [f"wrote {result['num_shards']} shards ({result['num_train']} images of {result['num_classes']} "
             f"identities) and {result['num_val']} held-out images to {result['out_dir']}; "
             f"skipped {len(result['skipped'])} unreadable"]
    lines += [f"  unreadable: {path}" for path in result["skipped"][:10]]
    lines.append(f"next: facesearch train {result['out_dir']} --out RUN_DIR")
    return "\n".join(lines)


def format_compact(result: dict) -> str:
    """Render `compact`: segments and removed faces before and after."""
    b, a = result["before"], result["after"]
    lines = []
    if result["upgraded"]:
        lines.append(f"upgraded {result['index_dir']} to the current format (no photo embedded again)")
    if not result["written"]:
        lines.append(f"nothing to compact: {a['segments']} segment ({', '.join(a['types']) or 'empty'}), no removed faces")
    else:
        lines.append(f"compacted {result['index_dir']}: {b['segments']} segment(s) ({', '.join(b['types'])}) holding "
                     f"{b['stored']} vectors, {b['removed']} removed -> {a['segments']} segment(s) "
                     f"({', '.join(a['types'])}), {a['stored']} vectors, in {result['seconds']:.1f} s")
    return "\n".join(lines)
