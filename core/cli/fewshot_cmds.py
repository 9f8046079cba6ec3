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
    p.add_argument("--pseudo-prob", type=float, default=0.0,
                   help="share of self-supervised region-matching episodes (makes the model rely on its supports)")
    p.add_argument("--init-checkpoint", default=None, help="start from this PANet++ checkpoint's weights")
    p.set_defaults(func=train_fewshot_cmd)
    register_more(sub)
    register_benchmark(sub)


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
        device=args.device, save_path=args.save_path, pseudo_prob=args.pseudo_prob)
    init = None
    if args.init_checkpoint:
        from ..inference import load_panet
        base, _ = load_panet(args.init_checkpoint)
        if base.config.backbone != cfg.backbone:
            raise ValueError(f"--init-checkpoint has backbone {base.config.backbone}, not {cfg.backbone}")
        init = base.state_dict()
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
    if args.init_checkpoint:
        info["base"] = str(args.init_checkpoint)
    deadline = time.time() + args.max_minutes * 60 if args.max_minutes else float("inf")
    summary = train_fewshot(cfg, sets["train"], sets["val"], info, resume=not args.no_resume,
                            should_stop=lambda: time.time() > deadline, init_weights=init)
    print(json.dumps(summary, indent=2))
    return 0


def register_more(sub) -> None:
    p = sub.add_parser("evaluate-fewshot", help="score a PANet++ checkpoint on fixed, seeded episodes")
    p.add_argument("--checkpoint", default=None, help="PANet++ checkpoint (default: the shipped one)")
    p.add_argument("--data", default=None, help="data folder in any supported layout (default: $BUSI_DIR)")
    p.add_argument("--split", default=None, help="split JSON for BUSI (default: the committed split); "
                                                  "data without one is used whole")
    p.add_argument("--no-split", action="store_true", help="ignore any split: use every image of --data")
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--support-pool", choices=["test", "train"], default="test",
                   help="test: supports from the held-out cohort (never the query's duplicate group); "
                        "train: supports from the training split")
    p.add_argument("--normal-queries", type=int, default=1000,
                   help="also score up to N lesion-free queries (false-positive rate)")
    p.add_argument("--mismatched", action="store_true", help="support masks moved off the lesion (control)")
    p.add_argument("--out", default=None, help="JSON with every episode (default: print the summary only)")
    p.add_argument("--figure", default=None, help="PNG of example episodes with heatmaps")
    p.set_defaults(func=evaluate_fewshot_cmd)

    p = sub.add_parser("segment", help="segment a query image from 1-5 annotated support images")
    p.add_argument("--checkpoint", default=None, help="PANet++ checkpoint (default: the shipped one)")
    p.add_argument("--support", nargs=2, action="append", metavar=("IMG", "MASK"), required=True,
                   help="a support image and its lesion mask (repeat 1-5 times)")
    p.add_argument("--query", required=True)
    p.add_argument("--out", required=True, help="output mask PNG (query's original size)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--heatmap", default=None, help="PNG of the foreground/background cosine maps")
    p.add_argument("--overlay", default=None, help="PNG of the prediction drawn on the query")
    p.set_defaults(func=segment_cmd)


def default_checkpoint() -> Path:
    return Path(__file__).resolve().parents[2] / "checkpoints" / "panet_lite0"


def evaluation_sets(data_arg, split_arg, no_split: bool, size: int, pool: str):
    """(query_set, support_set or None) for BUSI with its split, or a whole folder."""
    from ..data.sets import folder_set, split_sets
    from ..data.split import DEFAULT_SPLIT_FILE

    data = _data_dir(data_arg)
    split_file = Path(split_arg) if split_arg else DEFAULT_SPLIT_FILE
    if not no_split and split_file.exists():
        try:
            parts = ("test", "train") if pool == "train" else ("test",)
            sets = split_sets(data, parts, size, split_file)
            return sets["test"], sets.get("train"), f"{data} (test split of {split_file.name})"
        except Exception as exc:  # not BUSI: fall back to the whole folder
            from ..data.io import DataError
            if not isinstance(exc, DataError):
                raise
    if pool == "train":
        raise ValueError("--support-pool train needs BUSI with its split file")
    return folder_set(data, size), None, f"{data} (all images, no split)"


def evaluate_fewshot_cmd(args) -> int:
    from ..evaluation.fewshot import figure_examples, make_episodes, panet_predictor, run_episodes, summarize
    from ..inference import load_panet

    model, meta = load_panet(args.checkpoint or default_checkpoint())
    qset, sset, desc = evaluation_sets(args.data, args.split, args.no_split, model.config.image_size, args.support_pool)
    eps = make_episodes(qset, sset, args.shots, args.episodes, args.seed, args.normal_queries)
    res = run_episodes(panet_predictor(model), qset, sset or qset, eps, mismatched=args.mismatched,
                       seed=args.seed, progress=True)
    summary = summarize(res)
    summary.update(data=desc, shots=args.shots, seed=args.seed, support_pool=args.support_pool,
                   mismatched=args.mismatched, checkpoint=str(args.checkpoint or default_checkpoint()))
    print(json.dumps(summary, indent=2))
    if args.out:
        from dataclasses import asdict
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "episodes": [asdict(r) for r in res]}, indent=1))
    if args.figure:
        figure_examples(model, qset, sset or qset, res, eps, args.figure)
    return 0


def segment_cmd(args) -> int:
    import numpy as np
    from PIL import Image

    from ..inference import FewShotSegmenter, as_image
    from ..visual import heatmap_panel, overlay

    seg = FewShotSegmenter(args.checkpoint or default_checkpoint())
    res = seg.predict(args.query, [tuple(s) for s in args.support], threshold=args.threshold)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(res.mask.astype(np.uint8) * 255).save(args.out)
    print(f"mask written: {args.out} ({res.mask.shape[1]}x{res.mask.shape[0]}, "
          f"{res.mask.mean() * 100:.1f}% lesion)")
    query = as_image(args.query)
    if args.overlay:
        Image.fromarray(overlay(query, res.mask)).save(args.overlay)
        print(f"overlay written: {args.overlay}")
    if args.heatmap:
        heatmap_panel(query, res.heatmaps, args.heatmap)
        print(f"heatmaps written: {args.heatmap}")
    return 0


def register_benchmark(sub) -> None:
    p = sub.add_parser("benchmark-fewshot", help="PANet++ and baselines on the same test episodes; writes docs/results.md")
    p.add_argument("--checkpoint", default=None, help="PANet++ checkpoint (default: the shipped one)")
    p.add_argument("--data", default=None, help="BUSI root (default: $BUSI_DIR)")
    p.add_argument("--episodes", type=int, default=300, help="lesion-query episodes per shot count")
    p.add_argument("--unet-episodes", type=int, default=30, help="episodes for the fine-tuned U-Net baseline")
    p.add_argument("--unet-steps", type=int, default=40)
    p.add_argument("--seg-checkpoint", default=None, help="supervised segmenter checkpoint (baseline c)")
    p.add_argument("--compare", nargs="*", default=[], help="other PANet++ checkpoints (backbone choice)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out-dir", default=None, help="default: docs/")
    p.add_argument("--add-supervised", action="store_true",
                   help="only add --seg-checkpoint's scores to an earlier run's episodes (same seed)")
    p.add_argument("--latency-only", action="store_true",
                   help="only re-time the checkpoints of an earlier run (e.g. on a quiet machine)")
    p.set_defaults(func=benchmark_cmd)


def benchmark_cmd(args) -> int:
    from ..evaluation.benchmark import add_supervised, remeasure_latency, run_benchmark
    from ..evaluation.report import DOCS, render

    if args.latency_only:
        res = remeasure_latency(Path(args.out_dir) if args.out_dir else DOCS, _data_dir(args.data))
        print(json.dumps(res["latency"], indent=2))
        print(f"written: {render()}")
        return 0
    if args.add_supervised:
        if not args.seg_checkpoint:
            raise ValueError("--add-supervised needs --seg-checkpoint")
        res = add_supervised(Path(args.out_dir) if args.out_dir else DOCS, args.seg_checkpoint, _data_dir(args.data))
        print(f"written: {render()}")
        return 0
    res = run_benchmark(args.checkpoint or default_checkpoint(), _data_dir(args.data),
                        Path(args.out_dir) if args.out_dir else DOCS, args.episodes, args.unet_episodes,
                        args.unet_steps, args.seg_checkpoint, args.compare, args.seed)
    print(json.dumps({k: {m: v.get("dice") for m, v in b.items() if isinstance(v, dict) and "dice" in v}
                      for k, b in res["by_shots"].items()}, indent=2))
    print(f"written: {render()}")
    return 0
