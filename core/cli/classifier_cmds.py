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
    p.set_defaults(func=train_image_cls_cmd)


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
    cfg = SupervisedTrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, patience=args.patience,
                                seed=args.seed, device=args.device, save_path=args.save_path)
    mcfg = ClassifierConfig(backbone=args.backbone, image_size=args.img_size)
    print(json.dumps(train_image_classifier(mcfg, cfg, train, val, info), indent=2))
    return 0
