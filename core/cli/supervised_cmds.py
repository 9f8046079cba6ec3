"""Supervised pipeline commands: train-seg, train-cls, evaluate-supervised, predict."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from ..data.io import IMAGE_SUFFIXES, DataError


def _common(p, save_default: str, img_default: int) -> None:
    p.add_argument("--data", default=None, help="BUSI/Kaggle-layout root (uses the committed leak-free split)")
    p.add_argument("--images-dir", default=None, help="images folder (flat or <class>/ subfolders)")
    p.add_argument("--masks-dir", default=None, help="masks folder matching --images-dir")
    p.add_argument("--split", default=None, help="split JSON for --data (default: the committed BUSI split)")
    p.add_argument("--val-split", type=float, default=0.15,
                   help="validation share for data without a split file (split by duplicate group)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=img_default)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")
    p.add_argument("--save-path", default=save_default, help="checkpoint path without extension")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images of each part (smoke runs)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--weights", default="imagenet", choices=["imagenet", "imagenet-download", "random"])


def register(sub) -> None:
    _register_training(sub)
    _register_selection(sub)
    _register_evaluation(sub)


def _register_training(sub) -> None:
    p = sub.add_parser("train-seg", help="train the supervised segmenter (smp DeepLabV3+ by default)")
    _common(p, "runs/segmenter", 256)
    p.add_argument("--arch", default="deeplabv3plus", help="smp architecture: deeplabv3plus, unet, unetplusplus, fpn, ...")
    p.add_argument("--encoder", default="tf_efficientnet_lite0",
                   help="registry backbone, or mit_b2 (random init offline)")
    p.set_defaults(func=train_seg_cmd)

    p = sub.add_parser("train-cls", help="train the 4-channel (image + mask) lesion classifier")
    _common(p, "runs/classifier", 224)
    p.add_argument("--backbone", default="tf_efficientnet_lite0",
                   help="tf_efficientnet_lite0/lite2, mobilenetv2 (offline ImageNet), resnet50, convnext_base (random offline)")
    p.add_argument("--mask-source", choices=["gt", "predicted", "oof"], default="gt",
                   help="training masks: ground truth, the --seg-model's predictions, or out-of-fold predictions "
                        "(--oof-masks, from the oof-masks command)")
    p.add_argument("--oof-masks", default=None, help="file written by oof-masks (without extension)")
    p.add_argument("--oof-share", type=float, default=1.0,
                   help="with --mask-source oof: share of training steps that use an image's out-of-fold mask; "
                        "the rest use its ground-truth mask (perturbed with --mask-noise)")
    p.add_argument("--seg-model", default=None, help="segmenter checkpoint for --mask-source predicted")
    p.add_argument("--val-mask-source", choices=["same", "gt", "predicted"], default="same",
                   help="masks for validation (early stopping, temperature): 'predicted' scores the classifier "
                        "as the pipeline uses it (needs --seg-model; the segmenter never trained on val)")
    p.add_argument("--select-by", choices=["nll", "auc"], default="nll",
                   help="early stopping / best epoch on the validation NLL or macro AUC")
    p.add_argument("--mask-noise", action="store_true",
                   help="train on masks with a segmenter's kinds of error (misses, false lesions, boundary errors)")
    p.set_defaults(func=train_cls_cmd)



def _register_selection(sub) -> None:
    p = sub.add_parser("oof-masks", help="out-of-fold segmenter masks of the training split (for train-cls "
                                         "--mask-source oof): k segmenters, each predicting the fold it did not see")
    _common(p, "runs/oof_masks", 256)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--arch", default="deeplabv3plus")
    p.add_argument("--encoder", default="tf_efficientnet_lite0")
    p.set_defaults(func=oof_masks_cmd)

    p = sub.add_parser("benchmark-pipeline", help="ms per image of segment + classify on BUSI test images (CPU)")
    p.add_argument("--data", default=None, help="BUSI folder (default $BUSI_DIR)")
    p.add_argument("--seg-model", required=True)
    p.add_argument("--cls-model", required=True)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target machine has 2 cores)")
    p.add_argument("--out", default=None, help="JSON (docs/results_pipeline_latency.json also renders docs/results.md)")
    p.set_defaults(func=benchmark_pipeline_cmd)

    p = sub.add_parser("select-classifier", help="compare candidate classifiers on the validation split with "
                                                 "predicted masks; the test split is not read")
    p.add_argument("--data", default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--seg-model", required=True)
    p.add_argument("--candidates", nargs="+", required=True)
    p.add_argument("--out", default=None)
    p.set_defaults(func=select_classifier_cmd)



def _register_evaluation(sub) -> None:
    p = sub.add_parser("evaluate-external", help="the pipeline on another hospital's labelled images "
                                                 "(e.g. BUS-BRA): Dice, benign-vs-malignant AUC with bootstrap CIs")
    p.add_argument("--data", required=True, help="folder with images/, masks/, labels.csv (id,pathology), groups.csv")
    p.add_argument("--seg-model", required=True)
    p.add_argument("--cls-model", required=True)
    p.add_argument("--bootstrap", type=int, default=2000, help="resamples of whole patients for the 95%% CIs")
    p.add_argument("--limit", type=int, default=0, help="first N images only (smoke runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="JSON of the metrics (+ per-image CSV and a reliability diagram beside it)")
    p.set_defaults(func=evaluate_external_cmd)

    p = sub.add_parser("evaluate-supervised", help="test-split metrics of a segmenter and/or classifier")
    p.add_argument("--data", default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--seg-model", default=None)
    p.add_argument("--cls-model", default=None)
    p.add_argument("--out", default=None, help="JSON file for the metrics (and a confusion-matrix PNG beside it)")
    p.add_argument("--part", default="test", choices=["test", "val"],
                   help="val: compare candidate models without touching the test split")
    p.set_defaults(func=evaluate_supervised_cmd)

    p = sub.add_parser("predict", help="segment an image (or a folder) and classify the lesion")
    p.add_argument("--image", required=True, help="an image file or a folder of images")
    p.add_argument("--seg_model", "--seg-model", dest="seg_model", default=None,
                   help="segmenter checkpoint (default: the shipped one named in checkpoints/DEFAULTS.json)")
    p.add_argument("--cls_model", "--cls-model", dest="cls_model", default=None,
                   help="classifier checkpoint (default: the shipped one; the LiteMedSAM probe also says 'no lesion')")
    p.add_argument("--save_mask", "--save-mask", dest="save_mask", default=None,
                   help="mask PNG (for a folder: an output folder; default <folder>/predictions)")
    p.add_argument("--csv", default=None, help="for a folder: results CSV (default <out>/predictions.csv)")
    p.add_argument("--malignant-odds", type=float, default=None,
                   help="this site's malignant:benign odds among its lesions (e.g. 0.49 for BUSI's training part, "
                        "0.46 for BUS-BRA's): p(malignant) is set to that prior; the labels do not change")
    p.add_argument("--kind-head", default=None,
                   help="a lesion-crop head whose fusion was fitted with the classifier: the kind is read from both "
                        "(default: the one DEFAULTS.json names for the default classifier, if any; 'none' for none)")
    p.set_defaults(func=predict_cmd)


def load_parts(args, size: int):
    """(train, val, test-or-None, info) ImageSets from --data (+split) or --images-dir/--masks-dir."""
    from ..data.discover import discover
    from ..data.sets import default_data_dir, split_sets
    from ..data.split import DEFAULT_SPLIT_FILE, load_split, split_hash

    if args.images_dir:
        if not args.masks_dir:
            raise DataError("--images-dir needs --masks-dir")
        import shutil
        import tempfile
        # present the two folders as one root with images/ and masks/ (symlinks, nothing copied)
        root = Path(tempfile.mkdtemp(prefix="panet_data_"))
        (root / "images").symlink_to(Path(args.images_dir).resolve())
        (root / "masks").symlink_to(Path(args.masks_dir).resolve())
        try:
            samples = discover(root).samples
            parts = _group_split(samples, args.val_split, args.seed, size)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        info = {"images_dir": args.images_dir, "masks_dir": args.masks_dir, "val_split": args.val_split}
        train, val, test = parts
    else:
        data = Path(args.data) if args.data else default_data_dir()
        if data is None:
            raise DataError("no data: pass --data DIR (BUSI layout) or --images-dir/--masks-dir, or set BUSI_DIR")
        split_file = args.split or DEFAULT_SPLIT_FILE
        sets = split_sets(data, ("train", "val", "test"), size, split_file)
        train, val, test = sets["train"], sets["val"], sets["test"]
        info = {"data_dir": str(data), "split_file": str(split_file), "split_hash": split_hash(load_split(split_file))}
    if getattr(args, "limit", 0):
        n = args.limit
        cut = lambda s: s.subset(slice(0, n)) if s is not None else None
        train, val, test = cut(train), cut(val), cut(test)
    info.update(n_train=len(train), n_val=len(val))
    return train, val, test, info


def _group_split(samples, val_share: float, seed: int, size: int):
    from ..data.dataset import load_image_set
    from ..data.dedup import group_near_duplicates, image_signatures
    from ..data.split import split_groups

    thumbs, embs = image_signatures(samples)
    groups = group_near_duplicates(thumbs, embs).groups
    parts = split_groups(samples, groups, seed, (1 - val_share, val_share, 0.0))
    if not parts["train"] or not parts["val"]:
        raise DataError(f"the {len(samples)} images form only {len(set(groups))} near-duplicate group(s): "
                        "cannot hold out a validation set without a leak; add more distinct images")
    gmap = {s.rel_path: g for s, g in zip(samples, groups)}
    pick = lambda names: [s for s in samples if s.rel_path in set(names)]
    return load_image_set(pick(parts["train"]), size, gmap), load_image_set(pick(parts["val"]), size, gmap), None


def _threads(args):
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)


def _segmenter_configs(args):
    """(training config, model config) of a segmenter from the shared options (train-seg, oof-masks)."""
    from ..models.supervised import SegmenterConfig
    from ..training.supervised import SupervisedTrainConfig

    return (SupervisedTrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, patience=args.patience,
                                  seed=args.seed, device=args.device, save_path=args.save_path),
            SegmenterConfig(arch=args.arch, encoder=args.encoder, image_size=args.img_size, weights=args.weights))


def train_seg_cmd(args) -> int:
    from ..training.supervised import train_segmenter

    _threads(args)
    train, val, _, info = load_parts(args, args.img_size)
    cfg, mcfg = _segmenter_configs(args)
    print(json.dumps(train_segmenter(mcfg, cfg, train, val, info), indent=2))
    return 0


def _masks_for(parts, seg_path, device):
    from ..inference import load_segmenter
    from ..training.supervised import predict_masks
    from ..data.dataset import resize_mask

    seg = load_segmenter(seg_path, device)
    out = []
    for data in parts:
        pred = predict_masks(seg, _resized(data, seg.config.image_size), device)
        out.append(np.stack([resize_mask(p, data.images.shape[1]) for p in pred]))
    return out


def _resized(data, size):
    from ..data.dataset import ImageSet, resize_image, resize_mask

    if data.images.shape[1] == size:
        return data
    return ImageSet(data.samples, np.stack([resize_image(i, size) for i in data.images]),
                    np.stack([resize_mask(m, size) for m in data.masks]), data.groups)


def train_cls_cmd(args) -> int:
    from ..device import pick_device
    from ..models.supervised import ClassifierConfig
    from ..training.supervised import SupervisedTrainConfig, train_classifier

    _threads(args)
    train, val, _, info = load_parts(args, args.img_size)
    val_source = args.mask_source if args.val_mask_source == "same" else args.val_mask_source
    if val_source == "oof":
        raise ValueError("out-of-fold masks exist for the training split only: use --val-mask-source predicted")
    if "predicted" in (args.mask_source, val_source) and not args.seg_model:
        raise ValueError("predicted masks need --seg-model")
    device = pick_device(args.device)
    train_masks = _masks_for([train], args.seg_model, device)[0] if args.mask_source == "predicted" else train.masks
    alt = None
    if args.mask_source == "oof":
        from ..data.dataset import resize_mask
        from ..training.oof import load_oof

        if not args.oof_masks:
            raise ValueError("--mask-source oof needs --oof-masks (made by the oof-masks command)")
        alt = np.stack([resize_mask(m, args.img_size) for m in load_oof(args.oof_masks, train.names)])
    val_masks = _masks_for([val], args.seg_model, device)[0] if val_source == "predicted" else val.masks
    info.update(mask_source=args.mask_source, val_mask_source=val_source, seg_model=args.seg_model,
                oof_masks=args.oof_masks, oof_share=args.oof_share if alt is not None else None)
    cfg = SupervisedTrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, patience=args.patience,
                                seed=args.seed, device=args.device, save_path=args.save_path)
    mcfg = ClassifierConfig(backbone=args.backbone, image_size=args.img_size, weights=args.weights)
    from ..data.mask_noise import MaskNoise
    noise = MaskNoise() if args.mask_noise else None
    print(json.dumps(train_classifier(mcfg, cfg, train, val, train_masks, val_masks, info, mask_noise=noise,
                                      alt_masks=alt, alt_share=args.oof_share if alt is not None else 0.0,
                                      select_by=args.select_by),
                     indent=2))
    return 0


def oof_masks_cmd(args) -> int:
    from ..training.oof import out_of_fold_masks, save_oof

    _threads(args)
    train, val, _, info = load_parts(args, args.img_size)
    cfg, mcfg = _segmenter_configs(args)
    result = out_of_fold_masks(train, val, args.folds, mcfg, cfg, args.save_path + "_models", info)
    save_oof(args.save_path, train.names, result)
    print(json.dumps({"folds": args.folds, "val_dice": result["val_dice"], "held_out_dice": result["held_out_dice"],
                      "written": args.save_path + ".npz"}, indent=2))
    return 0


def benchmark_pipeline_cmd(args) -> int:
    from ..data.sets import default_data_dir, split_sets
    from ..evaluation.benchmark import latency_images, pipeline_latency

    _threads(args)
    data = Path(args.data) if args.data else default_data_dir()
    if data is None:
        raise DataError("no data: pass --data DIR or set BUSI_DIR")
    test = split_sets(data, ("test",), 64, progress=False)["test"]
    images, _ = latency_images(test)
    result = pipeline_latency(args.seg_model, args.cls_model, images, args.repeats)
    print(json.dumps(result, indent=2))
    from ..evaluation.report import save_result
    save_result(result, args.out)
    return 0



def select_classifier_cmd(args) -> int:
    from ..evaluation.supervised import select_classifier

    result = select_classifier(args.data, args.split, args.seg_model, args.candidates, None)
    print(json.dumps(result, indent=2))
    from ..evaluation.report import save_result
    save_result(result, args.out)
    return 0


def evaluate_external_cmd(args) -> int:
    from ..evaluation.external import evaluate_external

    result = evaluate_external(args.data, args.seg_model, args.cls_model, n_boot=args.bootstrap, limit=args.limit,
                               out=args.out, device=args.device)
    print(json.dumps(result, indent=2))
    from ..evaluation.report import save_result
    save_result(result, args.out)
    return 0


def evaluate_supervised_cmd(args) -> int:
    from ..evaluation.supervised import evaluate_supervised

    result = evaluate_supervised(args.data, args.split, args.seg_model, args.cls_model, args.out, args.part)
    print(json.dumps(result, indent=2))
    if args.out:
        from ..evaluation.report import announce
        announce(args.out)
    return 0


def image_refs(files) -> list:
    """Each file, or each frame 'X.dcm#k' of a multi-frame DICOM."""
    from ..data.dicom import frame_refs
    out = []
    for f in files:
        out += [Path(r) if r == str(f) else r for r in frame_refs(f, str(f))]
    return out


def ref_names(ref) -> tuple[str, str]:
    """(name shown in the CSV, stem of its mask file): 'X.dcm#7' -> ('X.dcm#7', 'X_f0007')."""
    from ..data.dicom import frame_stem, split_frame
    path, k = split_frame(ref)
    return (path.name if k is None else f"{path.name}#{k}"), frame_stem(ref)


def _print_result(res, size: dict) -> None:
    if not res.lesion_present:
        print(f"No lesion (p(lesion) {res.lesion_probability:.3f}, below the presence threshold): class normal, empty mask")
    else:
        print(f"Predicted class: {res.label} ({res.confidence:.2f} confidence)")
    print("Probabilities: " + ", ".join(f"{k} {v:.3f}" for k, v in res.probabilities.items()))
    print(f"Lesion area: {res.lesion_fraction * 100:.1f}% of the image"
          + (f", {size['area_mm2']:.1f} mm^2, longest diameter {size['diameter_mm']:.1f} mm" if size["area_mm2"] else ""))


def predict_cmd(args) -> int:
    from .. import checkpoint
    from ..metrics import fmt_or_blank as _num, lesion_size
    from ..data.io import read_image_info
    from ..inference import SupervisedPipeline

    kind_head = None if args.kind_head == "none" else args.kind_head
    if args.kind_head is None and args.cls_model is None:
        kind_head = checkpoint.default_kind_head()
    pipe = SupervisedPipeline(args.seg_model or checkpoint.default_checkpoint("segmenter"),
                              args.cls_model or checkpoint.default_checkpoint("classifier"),
                              malignant_odds=args.malignant_odds, kind_head=kind_head)
    from ..data.dicom import split_frame

    src = Path(args.image)
    if not split_frame(src)[0].exists():
        raise DataError(f"{src}: not found")
    if split_frame(src)[0].is_file():
        img, info = read_image_info(src)
        res = pipe.predict(img)
        _print_result(res, lesion_size(res.mask, info.get("spacing_mm")))
        if args.save_mask:
            res.save_mask(args.save_mask)
            print(f"Mask written: {args.save_mask}")
        return 0
    out_dir = Path(args.save_mask) if args.save_mask else src / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = Path(args.csv) if args.csv else out_dir / "predictions.csv"
    files = image_refs(sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and "_mask" not in p.stem))
    if not files:
        raise DataError(f"{src}: no images found")
    from tqdm import tqdm

    classes = pipe.classes
    n_err = 0
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "class", "confidence", *(f"p_{c}" for c in classes), "p_lesion", "lesion_present",
                    "lesion_area_px", "lesion_area_fraction", "lesion_area_mm2", "longest_diameter_mm", "study_key",
                    "mask", "error"])
        for f in tqdm(files, desc="presence + segment + classify", unit="image"):
            name, stem = ref_names(f)
            try:
                img, info = read_image_info(f)
                res = pipe.predict(img)
            except DataError as exc:
                n_err += 1
                w.writerow([name, "", "", *([""] * len(classes)), "", "", "", "", "", "", "", "", str(exc)])
                tqdm.write(f"{name}: error: {exc}")
                continue
            mask_path = out_dir / f"{stem}_mask.png"
            res.save_mask(mask_path)
            size = lesion_size(res.mask, info.get("spacing_mm"))
            w.writerow([name, res.label, f"{res.confidence:.4f}", *(f"{res.probabilities[c]:.4f}" for c in classes),
                        "" if res.lesion_probability is None else f"{res.lesion_probability:.4f}",
                        int(res.lesion_present), int(res.mask.sum()), f"{res.lesion_fraction:.5f}",
                        _num(size["area_mm2"]), _num(size["diameter_mm"]), info.get("study_key", ""), mask_path.name, ""])
    print(f"{len(files) - n_err} images processed, {n_err} errors; CSV: {csv_path}; masks in {out_dir}")
    return 0