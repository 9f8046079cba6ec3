"""Issue 28 commands: train the image-level lesion classifier on BUSI + BUS-BRA, and score it once."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("train-image-cls",
                       help="train the image-level classifier (benign / malignant / normal) on BUSI + BUS-BRA")
    p.add_argument("--data", default=None, help="BUSI folder (default $BUSI_DIR)")
    p.add_argument("--multidomain", default=None, help="multidomain folder with busbra_breast (default: the shared copy)")
    p.add_argument("--no-busbra", action="store_true", help="BUSI only (the 'never saw BUS-BRA' model)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="first N images of each part (smoke runs)")
    p.add_argument("--save-path", default="runs/image_classifier")
    p.add_argument("--crops", type=float, default=0.0,
                   help="share of training lesion images that also give a lesion-free crop labelled normal")
    p.add_argument("--multitask", action="store_true",
                   help="DeepLabV3+ with the classification head on its encoder (smp aux_params), trained on the masks too")
    p.add_argument("--fold", nargs=2, type=int, metavar=("I", "K"), default=None,
                   help="cross-validation: train without fold I of K (whole patient groups) and write the logits on "
                        "fold I to SAVE_PATH.oof.json (out-of-fold probabilities for calibration and model choice)")
    p.set_defaults(func=train_image_cls_cmd)
    register_evaluation(sub)
    register_ensemble(sub)
    register_calibration(sub)


def _parts(args) -> tuple[dict, dict, dict]:
    from ..data.multidomain import default_multidomain_dir, domain_set
    from ..data.sets import data_dir, split_sets
    from ..data.split import DEFAULT_SPLIT_FILE, load_split, split_hash
    from ..training.image_classifier import busbra_labels, labelled

    size = args.img_size
    busi = split_sets(data_dir(args.data), ("train", "val"), size)
    cut = (lambda s: s.subset(slice(0, args.limit))) if args.limit else (lambda s: s)
    train = {"busi": (cut(busi["train"]), labelled(cut(busi["train"])))}
    val = {"busi": (cut(busi["val"]), labelled(cut(busi["val"])))}
    info = {"busi": str(data_dir(args.data)), "split_hash": split_hash(load_split(DEFAULT_SPLIT_FILE))}
    if not args.no_busbra:
        root = Path(args.multidomain) if args.multidomain else default_multidomain_dir()
        if root is None:
            raise ValueError("BUS-BRA not found: pass --multidomain DIR or --no-busbra")
        labels = busbra_labels(root / "busbra_breast")
        for part, into in (("train", train), ("val", val)):
            s = cut(domain_set(root, "busbra_breast", part, size))
            into["busbra"] = (s, labelled(s, labels))
        info["busbra"] = str(root / "busbra_breast")
    info.update({f"n_{k}_{name}": len(v[0]) for k, d in (("train", train), ("val", val)) for name, v in d.items()})
    return train, val, info


def train_image_cls_cmd(args) -> int:
    import torch

    from ..models.supervised import ClassifierConfig
    from ..training.image_classifier import train_image_classifier
    from ..training.supervised import SupervisedTrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    train, val, info = _parts(args)
    held = None
    if args.fold:
        from ..training.image_classifier import fold_parts

        train, held = fold_parts(train, *args.fold)
        info.update(fold={"index": args.fold[0], "k": args.fold[1],
                          "held_out": {name: len(d) for name, (d, _) in held.items()}},
                    **{f"n_train_{name}": len(d) for name, (d, _) in train.items()})
    cfg = SupervisedTrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, patience=args.patience,
                                seed=args.seed, device=args.device, save_path=args.save_path)
    mcfg = ClassifierConfig(backbone=args.backbone, image_size=args.img_size)
    summary = train_image_classifier(mcfg, cfg, train, val, info, crops_share=args.crops, multitask=args.multitask)
    print(json.dumps(summary, indent=2))
    if held is not None and summary.get("status") == "finished":
        from ..device import pick_device
        from ..training.image_classifier import save_out_of_fold

        out = Path(str(args.save_path) + ".oof.json")
        save_out_of_fold(args.save_path, held, out, pick_device(args.device))
        print(f"out-of-fold logits: {out}")
    return 0


def register_ensemble(sub) -> None:
    p = sub.add_parser("ensemble-image-cls",
                       help="one checkpoint from several image classifiers (their probabilities averaged)")
    p.add_argument("--members", required=True, nargs="+", help="image classifiers trained on the same split")
    p.add_argument("--save-path", required=True)
    p.add_argument("--float32", action="store_true", help="keep float32 weights (default float16: half the bytes)")
    p.set_defaults(func=ensemble_image_cls_cmd)


def ensemble_image_cls_cmd(args) -> int:
    from ..training.ensemble import save_ensemble

    path = save_ensemble(args.members, args.save_path, half=not args.float32)
    print(f"saved {path} ({len(args.members)} members); choose its decision points with "
          f"`evaluate-image-cls --cls-model {args.save_path} --no-test --write-points`")
    return 0


def register_calibration(sub) -> None:
    p = sub.add_parser("calibrate-image-cls",
                       help="fit the image classifier's temperature and decision points out of fold "
                            "(the logits of `train-image-cls --fold I K`, every fold) and store them in a checkpoint")
    p.add_argument("--oof", required=True, nargs="+", help="the SAVE_PATH.oof.json of every fold of one cross-validation")
    p.add_argument("--cls-model", default=None,
                   help="checkpoint of the same recipe trained on all the training parts: --write stores the "
                        "calibration in its JSON (every member's temperature, the decision points)")
    p.add_argument("--max-missed", type=float, default=0.02, help="share of out-of-fold lesions presence may miss")
    p.add_argument("--write", action="store_true", help="store it in --cls-model's JSON (atomically)")
    p.add_argument("--out", default=None, help="JSON of the fit and the out-of-fold figures (a reliability PNG beside it)")
    p.set_defaults(func=calibrate_image_cls_cmd)


def calibrate_image_cls_cmd(args) -> int:
    from .. import checkpoint
    from ..evaluation import image_classifier as ev
    from ..io import atomic_write

    oof = ev.read_out_of_fold(args.oof)
    t, points = ev.fit_out_of_fold(oof, args.max_missed)
    result = {"temperature": t, "decision_points": points, "folds": oof["folds"], "k": oof["k"],
              "n": {name: int((oof["sets"] == name).sum()) for name in sorted(set(oof["sets"]))},
              "out_of_fold": ev.out_of_fold_report(oof, t, points)}
    if args.write:
        if not args.cls_model:
            raise ValueError("--write needs --cls-model")
        _, json_path = checkpoint.paths(args.cls_model)
        meta = json.loads(json_path.read_text())
        if oof["split_hashes"] != {(meta.get("data") or {}).get("split_hash")}:
            raise ValueError("the folds were cut from another split than the checkpoint's training parts")
        folds = (meta.get("data") or {}).get("folds")
        if isinstance(folds, dict) and folds.get("k") != oof["k"]:
            raise ValueError(f"a k-fold ensemble of {folds.get('k')} folds takes the out-of-fold logits of its own "
                             f"cross-validation (got {oof['k']} folds)")
        for model in [m["model"] for m in meta.get("members", [])] or [meta["model"]]:
            model["temperature"] = t
        meta["decision_points"] = {**points, "presence": "classifier"}
        meta["calibration"] = {"fitted": "out of fold", "folds": oof["folds"], "temperature": t}
        atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True)))
        result["written_to"] = str(json_path)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from ..evaluation.external import plot_reliability

        Path(args.out).write_text(text)
        z, y = oof["logits"], oof["labels"]
        les = y != ev.N
        probs = ev.calibrate_kind(ev.softmax(z / t), points["kind_calibration"])
        plot_reliability(ev.p_malignant(probs[les]), y[les] == ev.M, Path(args.out).with_suffix(".kind_reliability.png"),
                         "out of fold: p(malignant | lesion)")
    return 0


def register_evaluation(sub) -> None:
    p = sub.add_parser("evaluate-image-cls",
                       help="choose the image classifier's decision points on the val parts, then read the test parts once")
    p.add_argument("--cls-model", required=True, nargs="+",
                   help="one image classifier, or several: their probabilities averaged (an ensemble)")
    p.add_argument("--data", default=None, help="BUSI folder (default $BUSI_DIR)")
    p.add_argument("--multidomain", default=None)
    p.add_argument("--max-missed", type=float, default=0.02, help="share of val lesions the presence decision may miss")
    p.add_argument("--no-test", action="store_true", help="val only (selection): the test parts stay unread")
    p.add_argument("--write-points", action="store_true", help="store the decision points in the checkpoint's JSON")
    p.add_argument("--stored-points", action="store_true",
                   help="use the checkpoint's stored decision points (e.g. fitted out of fold by calibrate-image-cls) "
                        "instead of choosing them on the val parts: the val parts are then a clean check")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seg-model", default=None,
                   help="segmenter whose evidence may join the presence decision (default: the shipped one); "
                        "the combination is kept only if it ranks better out of fold on the val parts")
    p.add_argument("--busbra-all", action="store_true",
                   help="also score every BUS-BRA image (only for a model trained with --no-busbra: it never saw them)")
    p.add_argument("--out", default=None, help="JSON of the metrics (a reliability diagram PNG beside it)")
    p.set_defaults(func=evaluate_image_cls_cmd)


def _probs(model, data):
    import numpy as np
    import torch

    from ..training.image_classifier import logits_of

    if hasattr(model, "members"):     # an ImageEnsemble: the mean of its members' probabilities, as its predict
        return np.mean([_probs(m, data) for m in model.members], 0)
    z = logits_of(model, data.images, "cpu")
    return torch.softmax(z / model.config.temperature, 1).numpy()


def _site_mix_parts(args, root, labels, probs, presence, points, val_y) -> dict:
    """Each test part with the kind's prior moved from the val parts' mix to its own site's training-part mix
    (known before deployment, from training labels only): calibration at the deployment mix."""
    from ..data.multidomain import domain_set
    from ..data.sets import data_dir, split_sets
    from ..evaluation import image_classifier as ev
    from ..training.image_classifier import labelled

    val_odds = points.get("kind_odds") or ev.malignant_odds(val_y)    # the mix the kind was calibrated at
    train = {"busi": labelled(split_sets(data_dir(args.data), ("train",), 64, progress=False)["train"]),
             "busbra": labelled(domain_set(root, "busbra_breast", "train", 64, progress=False), labels)}
    out = {"val_odds": val_odds}
    for site, y_train in train.items():
        odds = ev.malignant_odds(y_train)
        p, y = probs[f"{site}_test"]
        out[f"{site}_test"] = {**ev.at_site_mix(p, y, points, odds / val_odds, presence.get(f"{site}_test")),
                               "site_train_odds": odds}
    return out


def _combined_presence(args, probs: dict, sets: dict, points: dict, val_y) -> dict:
    """The classifier's p(lesion) joined with the segmenter's evidence by a logistic combiner, kept only when
    its out-of-fold presence AUC on the val parts (5 folds by patient group) beats the classifier's alone;
    then its threshold comes from those out-of-fold scores. Changes `points`; returns {part: score}."""
    import numpy as np

    from .. import checkpoint
    from ..evaluation import image_classifier as ev
    from ..inference import SupervisedPipeline
    from ..metrics import auc

    seg = args.seg_model or checkpoint.default_checkpoint("segmenter")
    pipe = SupervisedPipeline(seg, None)
    feats = {}
    for name, parts in sets.items():
        for part, data in parts.items():
            ev_rows = [ev.segmenter_evidence(pipe.probability_map(im)) for im in data.images]
            feats[f"{name}_{part}"] = ev.presence_features(ev.p_lesion(probs[f"{name}_{part}"][0]), np.array(ev_rows))
    x = np.concatenate([feats["busi_val"], feats["busbra_val"]])
    groups = np.array([f"busi{g}" for g in sets["busi"]["val"].groups] + [f"bb{g}" for g in sets["busbra"]["val"].groups])
    lesion = (val_y != ev.N).astype(float)
    oof = ev.out_of_fold(x, lesion, groups)
    alone = auc(x[:, 0], lesion > 0.5)
    joined = auc(oof, lesion > 0.5)
    points.update(presence_auc_val_classifier=alone, presence_auc_val_combined_oof=joined, segmenter=Path(seg).name)
    if not joined > alone:
        points["presence"] = "classifier"
        return {}
    w = ev.fit_logistic(x, lesion)
    points.update(presence="combined", presence_weights=[float(v) for v in w],
                  presence_threshold=ev.presence_threshold(oof, lesion > 0.5, args.max_missed))
    return {k: ev.logistic_score(w, f) for k, f in feats.items()}


def _decision_points(args, val_p, val_y) -> dict:
    """The checkpoint's stored points (--stored-points: fitted out of fold), else chosen on the val parts."""
    from .. import checkpoint
    from ..evaluation import image_classifier as ev

    if not args.stored_points:
        return ev.decision_points(val_p, val_y, args.max_missed)
    points = checkpoint.load_meta(args.cls_model[0]).get("decision_points")
    if len(args.cls_model) > 1 or not points or points.get("presence") != "classifier":
        raise ValueError("--stored-points: one checkpoint whose stored points use the classifier's presence")
    return points


def evaluate_image_cls_cmd(args) -> int:
    import time

    import numpy as np
    import torch

    from ..data.multidomain import default_multidomain_dir, domain_set
    from ..data.sets import data_dir, split_sets
    from ..evaluation import image_classifier as ev
    from ..evaluation.report import DOCS
    from ..io import atomic_write
    from ..training.image_classifier import busbra_labels, labelled, load_image_classifier

    torch.set_num_threads(args.threads)
    if args.write_points and len(args.cls_model) > 1:
        raise ValueError("--write-points: one checkpoint at a time (an ensemble has no JSON of its own)")
    models = [load_image_classifier(m) for m in args.cls_model]
    run_name = "+".join(Path(m).name for m in args.cls_model)
    sizes = sorted({m.config.image_size for m in models})
    if len(sizes) > 1:
        raise ValueError(f"an ensemble's members must share their image size (got {sizes})")
    size = sizes[0]
    root = Path(args.multidomain) if args.multidomain else default_multidomain_dir()
    labels = busbra_labels(root / "busbra_breast")
    parts = ("val",) if args.no_test else ("val", "test")
    busi = split_sets(data_dir(args.data), parts, size)
    bb = {p: domain_set(root, "busbra_breast", p, size) for p in parts}
    mean_probs = lambda s: np.mean([_probs(m, s) for m in models], 0)
    probs = {f"{name}_{p}": (mean_probs(s), labelled(s, lab))
             for name, sets, lab in (("busi", busi, None), ("busbra", bb, labels)) for p, s in sets.items()}
    if args.busbra_all:
        from .. import checkpoint

        if any(checkpoint.load_meta(m).get("data", {}).get("busbra") for m in args.cls_model):
            raise ValueError("--busbra-all: this model was trained on BUS-BRA's training part")
        whole = domain_set(root, "busbra_breast", "all", size)
        probs["busbra_all"] = (mean_probs(whole), labelled(whole, labels))
    val_p = np.concatenate([probs["busi_val"][0], probs["busbra_val"][0]])
    val_y = np.concatenate([probs["busi_val"][1], probs["busbra_val"][1]])
    points = _decision_points(args, val_p, val_y)
    probs = {k: (ev.calibrate_kind(p, points["kind_calibration"]), y) for k, (p, y) in probs.items()}
    sets = {"busi": busi, "busbra": {**bb, **({"all": whole} if args.busbra_all else {})}}
    presence = {} if args.stored_points else _combined_presence(args, probs, sets, points, val_y)
    result = {"checkpoint": run_name, "members": [Path(m).name for m in args.cls_model], "image_size": size,
              "decision_points": points,
              "parts": {k: ev.part_metrics(p, y, points, presence.get(k)) for k, (p, y) in probs.items()}}
    if not args.no_test:
        result["site_mix"] = _site_mix_parts(args, root, labels, probs, presence, points, val_y)
        result["test_reads"] = ev.record_test_read(DOCS / "image_classifier_test_reads.json", run_name,
                                                   ["busi_test", "busbra_test"])
        t = time.perf_counter()
        imgs = busi["test"].images[:20]
        for im in imgs:
            from ..data.dataset import to_tensor
            for m in models:
                m.predict(to_tensor(im)[None])
        result["seconds_per_image_2_threads"] = (time.perf_counter() - t) / len(imgs)
    if args.write_points:
        from .. import checkpoint

        _, json_path = checkpoint.paths(args.cls_model[0])
        meta = json.loads(json_path.read_text())
        meta["decision_points"] = points
        atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        if not args.no_test:
            from ..evaluation.external import plot_reliability

            p, y = probs["busbra_test"]
            les = y != ev.N
            plot_reliability(ev.p_malignant(p[les]), y[les] == ev.M, Path(args.out).with_suffix(".busbra_reliability.png"),
                             "BUS-BRA test: p(malignant | lesion)")
            p, y = probs["busi_test"]
            plot_reliability(ev.p_lesion(p), y != ev.N, Path(args.out).with_suffix(".busi_presence_reliability.png"),
                             "BUSI test: p(lesion)")
    return 0
