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
        if face.get("decision", {}).get("rule", "score") != "score":
            lines.append(f"{header}{format_decision(face, answer.get('threshold_source', ''))}")
        elif verdict == "unknown":
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
    if report.get("excluded"):
        lines.append(f"{report['excluded']} photo(s) removed through the service left out (unchanged since; change "
                     "or move a file to index it again)")
    if report.get("enrolled"):
        lines.append(f"{report['enrolled']} photo(s) enrolled through the service embedded again from the photo store")
    if report["skipped"]:
        lines.append(f"skipped {len(report['skipped'])} unreadable file(s):")
        lines.extend(f"  {item['path']}: {item['reason']}" for item in report["skipped"])
    if not report["written"]:
        lines.append("nothing changed; the index was left as it was")
    lines.extend(format_tuning(t) for t in report.get("tuning") or [])
    if report.get("calibration"):
        lines.append(f"open-set threshold: {report['calibration']['message']}")
    return "\n".join(lines)


FLOOR_SOURCES = {"calibration": "the calibrated threshold", "strangers": "an estimated stranger threshold",
                 "neighbours": "an estimated stranger threshold (no identities: 10th neighbours)"}


def format_tuning(t: dict) -> str:
    """One line per tuned segment: what was chosen, what it reached against exact search, and any shortfall."""
    rerank = f", re-rank x{t['rerank']}" if t["rerank"] > 1 else ""
    parameter = {"ef_search": "efSearch"}.get(t["parameter"], t["parameter"])
    head = f"segment {t['segment']} ({t['faces']} faces): {t['factory']}, {parameter} {t['value']}{rerank}"
    if t["tune_sample"] == 0:
        return f"{head}; not tuned: {t['note']}"
    recall = f"recall@{t['recall_k']} {t['recall']:.3f}, recall@1 {t['recall_at_1']:.3f}"
    if t["objective"] == "recall":
        body = f"tuned for {recall} (target {t['target_recall']:g}) on {t['tune_sample']} held-out faces"
    else:
        body = (f"identity agreement {t['agreement']:.4f} (target {t['target_agreement']:g}), floor recall "
                f"{t['floor_recall']:.4f} (target {t['target_recall']:g}) above {t['floor']:.3f} "
                f"({FLOOR_SOURCES.get(t['floor_source'], t['floor_source'])} - margin) on {t['tune_sample']} "
                f"held-out faces; {recall}")
    return f"{head}: {body}" + (f"; target missed: {t['note']}" if t["note"] else "")


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
    return "\n".join(lines + format_identify_decision(result))


def format_models_install(result: dict) -> str:
    """Render `models install`: where the model went, its card, the parity its export proved."""
    card, parity = result["card"], result["parity"]
    return (f"{'installed' if result['converted'] else 'already installed'} {card['name']} in {result['model_dir']}\n"
            f"input {card['input_height']}x{card['input_width']} {card['channel_order']}, "
            f"{card['embedding_size']}-d, template {card['alignment_template']}\n"
            + (f"onnx: min cosine vs Keras {parity['onnx_min_cosine']:.7f} over {parity['parity_samples']} inputs\n"
               if parity.get("onnx_min_cosine") is not None else
               f"onnx: {'; '.join((result.get('install') or {}).get('checked', ['built from the weights']))}\n")
            + "next: facesearch build-index PHOTOS_DIR   (the default model needs no --model)")


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


def format_embed_report(report: dict) -> str:
    """Render `embed`: where the shards went, what was embedded, skipped or faceless, and what comes next."""
    lines = [f"embeddings: {report['out_dir']} ({report['faces']} faces of {report['embedded']} photos in "
             f"{len(report['files'])} file(s), model {report['model']}, faces {report['faces_policy']}, "
             f"engine {report['engine']}" + (f", {report['actors']} actors" if report.get("actors") else "") + ")",
             f"photos: {report['photos']} seen, {report['embedded']} embedded, {len(report['no_face'])} without a "
             f"face, {len(report['skipped'])} unreadable; {report['multi_face']} with several faces",
             f"embedded at {report['images_per_second']:.1f} images/s ({report['seconds']:.1f} s)"]
    if report["ignored"]:
        lines.append(f"{report['ignored']} file(s) without an image extension ignored")
    if report["no_face"]:
        lines.append(f"{len(report['no_face'])} photo(s) without a face:")
        lines += [f"  {path}" for path in report["no_face"][:10]]
        lines += [f"  ... and {len(report['no_face']) - 10} more (see --json)"] if len(report["no_face"]) > 10 else []
    if report["skipped"]:
        lines.append(f"skipped {len(report['skipped'])} unreadable file(s):")
        lines += [f"  {item['path']}: {item['reason']}" for item in report["skipped"][:10]]
        lines += [f"  ... and {len(report['skipped']) - 10} more (see --json)"] if len(report["skipped"]) > 10 else []
    lines.append(f"next: facesearch build-index --from-embeddings {report['out_dir']} --index INDEX_DIR")
    return "\n".join(lines)


def format_query_lines(answers: list[dict]) -> str:
    """Render a batch query: per photo (or --embeddings row) a header line, then `format_query`'s block."""
    blocks = []
    for answer in answers:
        name = answer["image"] if "image" in answer else f"row {answer['row']}" + (
            f" ({answer['path']})" if answer.get("path") else "")
        if answer.get("error"):
            blocks.append(f"{name}: error: {answer['error']}")
        else:
            body = format_query(answer)
            blocks.append(f"{name}:\n" + "\n".join(f"  {line}" for line in body.splitlines()))
    return "\n".join(blocks)


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


def format_decision(face: dict, source: str) -> str:
    """A face's verdict under a calibrated rule: the statistic against the threshold, and where that came from."""
    d = face["decision"] | {"threshold_source": source}
    best = face["matches"][0]["score"] if face["matches"] else float("nan")
    runner = d.get("runner_up_score")
    how = (f"{d['statistic']:.3f} = {best:.3f} + {d['margin_weight']:g} x lead {best - runner:.3f} over the runner-up"
           if runner is not None else f"{d['statistic']:.3f} (no runner-up)")
    where = _threshold_source(d)
    if face["verdict"] == "unknown":
        return f"unknown ({how} < threshold {d['threshold']:.3f}, {where})"
    return f"{face['verdict']} ({how} >= threshold {d['threshold']:.3f}, {where})"


def _threshold_source(d: dict) -> str:
    source = d["threshold_source"]
    if source in ("calibration", "--fpir"):
        return f"{d['rule']} rule calibrated for FPIR {d['fpir']:g}" + (" (--fpir)" if source == "--fpir" else "")
    return {"--threshold": "--threshold", "model-card": "the model card's pair threshold",
            "default": "an uncalibrated default"}.get(source, source)


def format_calibration(result: dict) -> str:
    """Render `calibrate`: the stored threshold, what it came from, and the strangers used."""
    c = result["calibration"]
    lines = [f"calibrated {result['index']} (generation {result['generation']}): {result['message']}"]
    if result.get("strangers"):
        s = result["strangers"]
        lines.append(f"strangers: {s['embedded']} of {s['photos']} photos of {s['people']} people embedded")
        if s["enrolled_left_out"]:
            lines.append(f"  left out (enrolled): {', '.join(s['enrolled_left_out'][:10])}"
                         + (" ..." if len(s["enrolled_left_out"]) > 10 else ""))
        lines += [f"  no face vector: {f['path']}: {f['reason']}" for f in s["failures"][:10]]
    lines.append(f"query answers 'unknown' below {c['threshold']:.4f} ({c['rule']} rule, {c['fusion']} fusion); "
                 "`query --fpir F` picks another rate from this estimate, `--threshold T` overrides it")
    return "\n".join(lines)


def format_identify_decision(result: dict) -> list[str]:
    """`eval identify`'s lines on the gallery's self-calibrated decision: where its threshold sits."""
    d = result.get("decision")
    if not d:
        return []
    rule = d["decision"]
    at = d["at_threshold"]
    lines = []
    if result.get("calibration"):
        lines.append(f"self-calibration: {result['calibration']['message']}")
    far = "n/a" if at["fpir"] != at["fpir"] else f"{at['fpir']:.4f}"
    lines.append(f"answered as query answers ({rule['rule']} rule, {rule['fusion']} fusion, threshold "
                 f"{rule['threshold']:.4f} from {_threshold_source(rule)}): FPIR {far} on {d['impostor_probes']} "
                 f"impostors, FNIR {at['fnir']:.4f} (DIR {at['dir']:.4f})")
    if d["oracle"]:
        o = d["oracle"]
        lines.append(f"oracle at FPIR {o['fpir_target']:g} (threshold chosen on the impostors): threshold "
                     f"{o['threshold']:.4f}, FPIR {o['fpir']:.4f}, DIR {o['dir']:.4f}")
        lines.append("FPIR/FNIR curve (thresholds chosen on the impostors), and where the stored threshold sits:")
        points = [(p["threshold"], f"  FPIR {p['fpir']:.4f} (<= {p['fpir_target']:g}): threshold {p['threshold']:.4f}, "
                   f"FNIR {p['fnir']:.4f}") for p in d["curve"]]
        points.append((at["threshold"], f"  FPIR {far}: threshold {at['threshold']:.4f}, FNIR {at['fnir']:.4f}   "
                       "<- the stored threshold"))
        lines += [text for _, text in sorted(points, key=lambda p: -p[0])]
    for r in result.get("rules") or []:
        if "error" in r:
            lines.append(f"  {r['fusion']:<8} {r['rule']:<6} not calibrated: {r['error'].split(':')[0]}")
            continue
        a, o = r["at_threshold"], r["oracle"]
        lines.append(f"  {r['fusion']:<8} {r['rule']:<6} self-calibrated threshold {r['threshold']:.4f} (FPIR "
                     f"{r['target_fpir']:g}): FPIR {a['fpir']:.4f}, DIR {a['dir']:.4f}"
                     + (f"; oracle DIR {o['dir']:.4f}" if o else ""))
    return lines


def format_people(d: dict, threshold: float | None, grouped: int) -> str:
    """Render `facesearch people`: one line per person (name or suggestion), its faces, then the rest."""
    people, alone = d["people"], d["unclustered"]
    if not people and not alone:
        return "no faces of unlabelled photos in this index (build-index PHOTOS --unlabeled adds some)"
    lines = [f"{len(people)} people, {sum(len(p['faces']) for p in people)} faces grouped, {len(alone)} alone"
             + (f" (linking threshold {threshold:.3f}" + (f"; {grouped} faces placed now)" if grouped else ")")
                if threshold is not None else "")]
    for p in people:
        label = f" {p['name']!r}" if p["name"] else ""
        offer = p["suggestion"]
        hint = f" - looks like {offer['identity']!r} ({offer['score']:.3f})" if offer else ""
        lines.append(f"{p['person']}{label}: {len(p['faces'])} faces{hint}")
        lines += [f"  {f['id']:>6}  {f['path']}  face {f['face']}" for f in p["faces"][:20]]
        if len(p["faces"]) > 20:
            lines.append(f"  ... {len(p['faces']) - 20} more (--json lists them all)")
    if alone:
        lines.append(f"alone: {len(alone)} faces")
        lines += [f"  {f['id']:>6}  {f['path']}  face {f['face']}" for f in alone[:20]]
    return "\n".join(lines)


def format_people_change(d: dict) -> str:
    """Render `facesearch people name|merge|move`."""
    where = f"{d['person']}" + (f" ({d['name']!r})" if d["name"] else "") if d["person"] else "no person (alone)"
    what = {"name": "named", "merge": "merged", "move": "moved"}[d["action"]]
    extra = f"; {d['joined']} " + ("joined" if d["action"] != "move" else "left") if d["joined"] else ""
    return f"{what}: {d['faces']} face(s) now in {where}{extra} (generation {d['generation']})"
