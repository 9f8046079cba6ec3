"""Issue 28 commands: the lesion-crop benign / malignant head (train it; score it, recording test reads)."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEGMENTER = ROOT / "checkpoints" / "segmenter_deeplabv3plus_lite0"
BOX_CACHE = ROOT / "runs" / "crop_boxes.json"
PARTS = ("busi_val", "busi_test", "bb_val", "bb_test", "bb_all")
TEST_PARTS = ("busi_test", "bb_test", "bb_all")


def _data_args(p, boxes: bool = True) -> None:
    """The arguments every crop-head command shares: where the data are, smoke runs, threads, whose boxes."""
    p.add_argument("--data", default=None, help="BUSI folder (default $BUSI_DIR)")
    p.add_argument("--multidomain", default=None, help="multidomain folder with busbra_breast (default: the shared copy)")
    p.add_argument("--limit", type=int, default=0, help="first N images of each part (smoke runs; not a test read)")
    p.add_argument("--threads", type=int, default=0)
    if boxes:
        p.add_argument("--segmenter", default=str(SEGMENTER), help="whose masks give the crops scored")
        p.add_argument("--box-cache", default=str(BOX_CACHE), help="the segmenter's boxes, cached per image")


def register(sub) -> None:
    p = sub.add_parser("train-crop-cls", help="train the lesion-crop benign / malignant head (BUSI, + BUS-BRA)")
    _data_args(p)
    p.add_argument("--no-busbra", action="store_true", help="BUSI only, selected on BUSI val (the 'never saw BUS-BRA' model)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--save-path", default="runs/crop_classifier")
    p.set_defaults(func=train_crop_cls_cmd)

    p = sub.add_parser("evaluate-crop-cls", help="score the lesion-crop head with the segmenter's masks (and the true "
                                                 "ones); a read of a test part is recorded")
    p.add_argument("--cls-model", required=True)
    p.add_argument("--parts", nargs="+", default=["busi_val", "bb_val"], choices=PARTS,
                   help="bb_all = all of BUS-BRA (only for a model that never saw it)")
    _data_args(p)
    p.add_argument("--out", default=None, help="JSON of the scores (default: printed only)")
    p.set_defaults(func=evaluate_crop_cls_cmd)

    p = sub.add_parser("fuse-crop-cls", help="fit the kind's fusion of an image classifier and a crop head on the val "
                                             "lesions (BUSI val + BUS-BRA val; the test parts are not read)")
    p.add_argument("--cls-model", required=True, help="the image classifier (its calibrated p(malignant | lesion))")
    p.add_argument("--crop-model", required=True)
    p.add_argument("--save-path", default=None, help="write a copy of the crop head with the fusion stored in it")
    _data_args(p)
    p.add_argument("--out", default=None)
    p.set_defaults(func=fuse_crop_cls_cmd)

    p = sub.add_parser("evaluate-kind-head", help="predict end to end with and without a crop head's fused kind, on "
                                                  "BUSI test and BUS-BRA test (one recorded read of the test parts)")
    p.add_argument("--cls-model", required=True)
    p.add_argument("--kind-head", required=True, help="a crop head with its fusion (fuse-crop-cls --save-path)")
    _data_args(p, boxes=False)
    p.add_argument("--out", default=None)
    p.set_defaults(func=evaluate_kind_head_cmd)


def _rows(args, names) -> dict[str, list[dict]]:
    from ..data.lesion_sets import kind_parts
    from ..data.sets import data_dir

    parts = kind_parts(data_dir(args.data), args.multidomain)
    parts["bb_all"] = parts.get("bb_train", []) + parts.get("bb_val", []) + parts.get("bb_test", [])
    out = {}
    for n in names:
        if not parts.get(n):
            raise FileNotFoundError(f"{n}: no images (is the data folder there?)")
        out[n] = parts[n][:args.limit] if args.limit else parts[n]
    return out


def _emit(result: dict, out: str | None) -> int:
    """Print a command's result and, with --out, write it (atomically)."""
    print(json.dumps(result, indent=1))
    if out:
        from ..io import atomic_write_json

        atomic_write_json(out, result)
    return 0


def _with_segmenter_boxes(data: dict, args) -> dict:
    from ..evaluation.crop_classifier import segmenter_boxes

    boxes = segmenter_boxes(data, args.segmenter, args.box_cache, progress=True)
    return {**data, "true_boxes": data["boxes"], "boxes": boxes}


def train_crop_cls_cmd(args) -> int:
    import numpy as np
    import torch

    from ..evaluation.crop_classifier import load_lesions
    from ..models.supervised import ClassifierConfig
    from ..training.crop_classifier import train_crop_classifier
    from ..training.supervised import SupervisedTrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    sites = ["busi"] if args.no_busbra else ["busi", "bb"]
    rows = _rows(args, [f"{s}_{p}" for s in sites for p in ("train", "val")])
    loaded = {k: load_lesions(v, progress=True) for k, v in rows.items()}
    train = {k: sum((loaded[f"{s}_train"][k] for s in sites), []) for k in ("images", "boxes")}
    train["y"] = np.concatenate([loaded[f"{s}_train"]["y"] for s in sites])
    vals = [_with_segmenter_boxes(loaded[f"{s}_val"], args) for s in sites]
    val = {k: sum((v[k] for v in vals), []) for k in ("images", "boxes")}
    val["y"] = np.concatenate([v["y"] for v in vals])
    info = {"sites": sites, **{f"n_{k}": len(v) for k, v in rows.items()},
            "val_boxes_from": Path(args.segmenter).name,
            "val_lesions_segmenter_found": int(sum(b is not None for b in val["boxes"]))}
    cfg = SupervisedTrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, patience=args.patience,
                                seed=args.seed, device=args.device, save_path=args.save_path)
    summary = train_crop_classifier(ClassifierConfig(backbone=args.backbone, image_size=args.img_size,
                                                     classes=("benign", "malignant")), cfg, train, val, info)
    print(json.dumps(summary, indent=2))
    return 0


def evaluate_crop_cls_cmd(args) -> int:
    import torch

    from .. import checkpoint
    from ..device import pick_device
    from ..evaluation.crop_classifier import kind_scores, load_lesions
    from ..evaluation.image_classifier import record_test_read
    from ..models.loading import load_classifier
    from ..training.crop_classifier import crop_logits

    if args.threads:
        torch.set_num_threads(args.threads)
    meta = checkpoint.load_meta(args.cls_model)
    if meta.get("architecture") != "lesion_crop":
        raise ValueError(f"{args.cls_model}: not a lesion-crop classifier")
    if "bb_all" in args.parts and "bb" in meta.get("data", {}).get("sites", []):
        raise ValueError("bb_all: this model trained on BUS-BRA's training part")
    device = pick_device("auto")
    model = load_classifier(args.cls_model, device)
    result = {"command": "python -m core evaluate-crop-cls --cls-model {} --parts {}".format(
        args.cls_model, " ".join(args.parts)) + (f" --out {args.out}" if args.out else ""),
        "checkpoint": Path(args.cls_model).name, "val_auc": meta.get("val_auc"), "epoch": meta.get("epoch"),
        "train_seconds": meta.get("train_seconds"),
        "temperature": model.config.temperature, "data": meta.get("data"), "parts": {}}
    for name, rows in _rows(args, args.parts).items():
        data = _with_segmenter_boxes(load_lesions(rows, progress=True), args)
        scores = {}
        for label, boxes in (("segmenter_masks", data["boxes"]), ("true_masks", data["true_boxes"])):
            z = crop_logits(model, data["images"], boxes, device)
            prob = torch.softmax(z / model.config.temperature, 1)[:, 1].numpy()
            scores[label] = kind_scores(prob, data["y"], data["groups"])
        scores["segmenter_found"] = int(sum(b is not None for b in data["boxes"]))
        result["parts"][name] = scores
    read = [p for p in args.parts if p in TEST_PARTS]
    if read and not args.limit:
        result["test_reads"] = record_test_read(ROOT / "docs" / "image_classifier_test_reads.json",
                                                Path(args.cls_model).name, read)
    return _emit(result, args.out)


def fuse_crop_cls_cmd(args) -> int:
    import numpy as np
    import torch

    from .. import checkpoint
    from ..evaluation.crop_classifier import fit_fusion, fusion_report, kind_probabilities, load_lesions

    if args.threads:
        torch.set_num_threads(args.threads)
    parts = {n: _with_segmenter_boxes(load_lesions(r, progress=True), args)
             for n, r in _rows(args, ["busi_val", "bb_val"]).items()}
    p_img, p_crop = kind_probabilities(args.cls_model, args.crop_model, parts)
    y = np.concatenate([d["y"] for d in parts.values()])
    fusion = {"with": Path(args.cls_model).name, **fit_fusion(np.concatenate(list(p_img.values())),
                                                              np.concatenate(list(p_crop.values())), y)}
    result = {"command": "python -m core fuse-crop-cls --cls-model {} --crop-model {}".format(args.cls_model, args.crop_model)
              + (f" --save-path {args.save_path}" if args.save_path else "") + (f" --out {args.out}" if args.out else ""),
              "fusion": fusion, "val": fusion_report(p_img, p_crop, {n: d["y"] for n, d in parts.items()}, fusion)}
    if args.save_path and not args.limit:
        meta = checkpoint.load_meta(args.crop_model)
        checkpoint.save(args.save_path, checkpoint.load_weights(args.crop_model), {**meta, "fusion": fusion}, half=True)
    return _emit(result, args.out)


def evaluate_kind_head_cmd(args) -> int:
    import torch

    from .. import checkpoint
    from ..data.lesion_sets import lesion_parts
    from ..data.sets import data_dir
    from ..evaluation.crop_classifier import answer_scores, pipeline_answers
    from ..evaluation.image_classifier import record_test_read
    from ..inference import SupervisedPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    seg = checkpoint.default_checkpoint("segmenter")
    pipes = {"image classifier": SupervisedPipeline(seg, args.cls_model),
             "with the crop head": SupervisedPipeline(seg, args.cls_model, kind_head=args.kind_head)}
    parts = lesion_parts(data_dir(args.data), args.multidomain)
    rows = {"busi_test": parts["busi_test"], "bb_test": parts["bb_test"]}
    rows = {k: (v[:args.limit] if args.limit else v) for k, v in rows.items()}
    result = {"command": f"python -m core evaluate-kind-head --cls-model {args.cls_model} --kind-head {args.kind_head}"
                         + (f" --out {args.out}" if args.out else ""),
              "segmenter": seg.name, "rows": {}}
    for label, pipe in pipes.items():
        result["rows"][label] = {k: answer_scores(pipeline_answers(pipe, v)) for k, v in rows.items()}
    if not args.limit:
        result["test_reads"] = record_test_read(ROOT / "docs" / "image_classifier_test_reads.json",
                                                Path(args.kind_head).name, ["busi_test", "bb_test (predict end to end)"])
    return _emit(result, args.out)
