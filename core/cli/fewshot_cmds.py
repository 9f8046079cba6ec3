"""Few-shot commands: train-fewshot, evaluate-fewshot, segment, benchmark-fewshot."""
from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path

import torch


def register(sub) -> None:
    from ..training.fewshot import FewShotTrainConfig

    d = FewShotTrainConfig()
    p = sub.add_parser("train-fewshot", help="episodic training of PANet++ on the training split")
    p.add_argument("--data", default=None, help="BUSI root (default: $BUSI_DIR)")
    p.add_argument("--split", default=None, help="split JSON (default: the committed BUSI split)")
    p.add_argument("--backbone", default=d.backbone)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--shots", type=int, default=d.shots, help="fixed k (1-5); 0 draws k from {1, 5} per episode")
    p.add_argument("--episodes-per-epoch", type=int, default=d.episodes_per_epoch)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--val-episodes", type=int, default=d.val_episodes)
    p.add_argument("--par", action="store_true", help="prototype alignment regularisation")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--device", default=d.device, help="auto (GPU when present), cpu, cuda")
    p.add_argument("--save-path", default=d.save_path, help="checkpoint path without extension")
    p.add_argument("--limit", type=int, default=0, help="use only the first N train/val images (smoke runs)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if a resume file exists")
    p.add_argument("--max-minutes", type=float, default=0, help="stop (resumably) after this many minutes")
    p.set_defaults(func=train_fewshot_cmd)


def _data_dir(arg):
    from ..data.sets import default_data_dir

    d = arg or default_data_dir()
    if d is None:
        raise ValueError("no data folder: pass --data DIR or set BUSI_DIR")
    return Path(d)


def train_fewshot_cmd(args) -> int:
    from ..data.split import DEFAULT_SPLIT_FILE, load_split, split_hash
    from ..data.sets import split_sets
    from ..training.fewshot import FewShotTrainConfig, train_fewshot

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = FewShotTrainConfig(
        backbone=args.backbone, image_size=args.image_size, shots=args.shots,
        episodes_per_epoch=args.episodes_per_epoch, epochs=args.epochs, lr=args.lr, patience=args.patience,
        seed=args.seed, val_episodes=args.val_episodes, par=args.par, augment=not args.no_augment,
        device=args.device, save_path=args.save_path)
    data = _data_dir(args.data)
    split_file = args.split or DEFAULT_SPLIT_FILE
    sets = split_sets(data, ("train", "val"), cfg.image_size, split_file)
    if args.limit:
        from ..data.dataset import ImageSet
        for k, s in sets.items():
            n = args.limit
            sets[k] = ImageSet(s.samples[:n], s.images[:n], s.masks[:n], s.groups[:n])
    info = {"data_dir": str(data), "split_file": str(split_file), "split_hash": split_hash(load_split(split_file)),
            "n_train": len(sets["train"]), "n_val": len(sets["val"])}
    deadline = time.time() + args.max_minutes * 60 if args.max_minutes else float("inf")
    summary = train_fewshot(cfg, sets["train"], sets["val"], info, resume=not args.no_resume,
                            should_stop=lambda: time.time() > deadline)
    print(json.dumps(summary, indent=2))
    return 0
