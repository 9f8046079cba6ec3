"""`python -m core benchmark-fewshot`: every method on the same test episodes, latency, docs/results.md."""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .baselines import finetuned_unet_predictor, original_panet, supervised_predictor
from .fewshot import figure_examples, make_episodes, panet_predictor, run_episodes, summarize
from ..io import atomic_write_json


def latency(checkpoint_path, images, masks, queries, shots: int, repeats: int = 20) -> dict:
    """Median ms per query through the inference API (original-size arrays in, mask out)."""
    from ..inference import FewShotSegmenter

    seg = FewShotSegmenter(checkpoint_path)
    supports = list(zip(images[:shots], masks[:shots]))
    seg.predict(queries[0], supports, heatmaps=False)  # warm-up
    cached, uncached, with_maps = [], [], []
    for r in range(repeats):
        q = queries[r % len(queries)]
        t = time.perf_counter()
        seg.predict(q, supports, heatmaps=False)      # prototypes from the cache
        cached.append(time.perf_counter() - t)
        seg._cache.clear()
        t = time.perf_counter()
        seg.predict(q, supports, heatmaps=False)      # prototypes recomputed
        uncached.append(time.perf_counter() - t)
        t = time.perf_counter()
        seg.predict(q, supports, heatmaps=True)
        with_maps.append(time.perf_counter() - t)
    ms = lambda xs: round(1000 * statistics.median(xs), 1)
    return {"shots": shots, "cached_prototypes_ms": ms(cached), "recomputed_prototypes_ms": ms(uncached),
            "cached_with_heatmaps_ms": ms(with_maps), "repeats": repeats, "threads": torch.get_num_threads()}


def pipeline_latency(seg_path, cls_path, images, repeats: int = 30) -> dict:
    """Median and 90th-percentile ms per image of the whole supervised pipeline as `predict` runs it
    (segment at the image's size, then classify image + mask), on original-size arrays."""
    from ..inference import SupervisedPipeline

    pipe = SupervisedPipeline(seg_path, cls_path)
    pipe.classify(images[0], pipe.segment(images[0]))  # warm-up
    seg_t, total = [], []
    for r in range(repeats):
        img = images[r % len(images)]
        t0 = time.perf_counter()
        mask = pipe.segment(img)
        t1 = time.perf_counter()
        pipe.classify(img, mask)
        total.append(time.perf_counter() - t0)
        seg_t.append(t1 - t0)
    ms = lambda xs, q=50: round(1000 * float(np.percentile(xs, q)), 1)
    return {"pipeline_ms_median": ms(total), "pipeline_ms_p90": ms(total, 90), "segment_ms_median": ms(seg_t),
            "classify_ms_median": round(ms(total) - ms(seg_t), 1), "repeats": repeats,
            "threads": torch.get_num_threads(), "image_sizes": sorted({f"{i.shape[1]}x{i.shape[0]}" for i in images}),
            "segmenter": str(seg_path), "classifier": str(cls_path)}


def latency_images(test) -> tuple[list, list]:
    """12 original-size lesion images of the test split (5 queries, then supports) and their masks."""
    from ..data.dataset import load_pair

    lesion = [s for i, s in enumerate(test.samples) if test.has_lesion(i)][:12]
    pairs = [load_pair(s) for s in lesion]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def remeasure_latency(out_dir: Path, data_dir, shots=(1, 5)) -> dict:
    """Re-time an earlier run's checkpoints (e.g. on a quiet machine) without re-scoring them."""
    from ..data.sets import split_sets

    path = out_dir / "results_fewshot.json"
    results = json.loads(path.read_text())
    test = split_sets(data_dir, ("test",), results["model"]["image_size"], progress=False)["test"]
    imgs, msks = latency_images(test)
    results["latency"] = [latency(results["checkpoint"], imgs[5:], msks[5:], imgs[:5], k) for k in shots]
    for other, row in results.get("compare", {}).items():
        row["latency"] = latency(other, imgs[5:], msks[5:], imgs[:5], 5)
    atomic_write_json(path, results, indent=2)
    return results


def run_benchmark(checkpoint_path, data_dir, out_dir: Path, episodes: int, unet_episodes: int, unet_steps: int,
                  seg_checkpoint=None, compare=(), seed: int = 1234, shots=(1, 5)) -> dict:
    from ..data.sets import split_sets
    from ..inference import load_panet, load_segmenter

    out_dir.mkdir(parents=True, exist_ok=True)
    model, meta = load_panet(checkpoint_path)
    size = model.config.image_size
    sets = split_sets(data_dir, ("test", "train"), size, progress=False)
    test, train = sets["test"], sets["train"]
    results: dict = {"checkpoint": str(checkpoint_path), "model": meta["model"], "seed": seed,
                     "train_seconds": meta.get("train_seconds"), "train_episodes": meta.get("episodes"),
                     "val_dice": meta.get("val_dice"), "n_test": len(test), "by_shots": {}}
    predictors = {"PANet++": panet_predictor(model), "PANet (no decoder)": panet_predictor(original_panet(model))}
    seg = load_segmenter(seg_checkpoint) if seg_checkpoint else None
    if seg is not None:
        predictors["Supervised DeepLabV3+"] = supervised_predictor(seg)
    for k in shots:
        eps = make_episodes(test, None, k, episodes, seed + k, normal_queries=1000)
        block: dict = {}
        for name, pred in predictors.items():
            res = run_episodes(pred, test, test, eps, seed=seed, progress=True, desc=f"{name} k={k}")
            block[name] = summarize(res)
            if name == "PANet++":
                atomic_write_json(out_dir / f"episodes_k{k}.json", [asdict(r) for r in res], indent=0)
                figure_examples(model, test, test, res, eps, out_dir / f"examples_k{k}.png")
        mism = run_episodes(predictors["PANet++"], test, test, eps, mismatched=True, seed=seed, progress=True,
                            desc=f"mismatched k={k}")
        block["PANet++ with mismatched supports"] = summarize(mism)
        train_pool = make_episodes(test, train, k, episodes, seed + k)
        block["PANet++ (supports from the training split)"] = summarize(
            run_episodes(predictors["PANet++"], test, train, train_pool, seed=seed, progress=True, desc=f"train pool k={k}"))
        # the fine-tuned U-Net costs seconds per episode: score it, and PANet++, on the first episodes
        lesion_eps = [e for e in eps if test.has_lesion(e.query)][:unet_episodes]
        t0 = time.time()
        unet = run_episodes(finetuned_unet_predictor(model.config.backbone, unet_steps, seed=seed), test, test,
                            lesion_eps, seed=seed, progress=True, desc=f"U-Net fine-tune k={k}")
        sub = {"U-Net fine-tuned on the k supports": summarize(unet)}
        sub["U-Net fine-tuned on the k supports"]["seconds_per_episode"] = (time.time() - t0) / max(1, len(lesion_eps))
        for name, pred in predictors.items():
            sub[name] = summarize(run_episodes(pred, test, test, lesion_eps, seed=seed))
        block["subset_for_unet"] = {"n_episodes": len(lesion_eps), "steps": unet_steps, "image_size": 128,
                                    "methods": sub}
        results["by_shots"][str(k)] = block
    imgs, msks = latency_images(test)
    results["latency"] = [latency(checkpoint_path, imgs[5:], msks[5:], imgs[:5], k) for k in shots]
    results["compare"] = {}
    for other in compare:
        m2, meta2 = load_panet(other)
        t2 = split_sets(data_dir, ("test",), m2.config.image_size, progress=False)["test"]
        row = {"backbone": m2.config.backbone, "train_episodes": meta2.get("episodes"),
               "val_dice": meta2.get("val_dice")}
        for k in shots:
            eps = make_episodes(t2, None, k, episodes, seed + k)
            row[f"dice_k{k}"] = summarize(run_episodes(panet_predictor(m2), t2, t2, eps, seed=seed))["dice"]
        row["latency"] = latency(other, imgs[5:], msks[5:], imgs[:5], 5)
        results["compare"][str(other)] = row
    atomic_write_json(out_dir / "results_fewshot.json", results, indent=2)
    plot_methods(results, out_dir / "results_fewshot.png")
    return results


def add_supervised(out_dir: Path, seg_checkpoint, data_dir) -> dict:
    """Score the supervised segmenter on exactly the episodes of an earlier benchmark run (same seed)."""
    from ..data.sets import split_sets
    from ..inference import load_segmenter

    path = out_dir / "results_fewshot.json"
    results = json.loads(path.read_text())
    size = results["model"]["image_size"]
    test = split_sets(data_dir, ("test",), size, progress=False)["test"]
    pred = supervised_predictor(load_segmenter(seg_checkpoint))
    seed = results["seed"]
    for k, block in results["by_shots"].items():
        eps = make_episodes(test, None, int(k), block["PANet++"]["n_lesion_queries"], seed + int(k), normal_queries=1000)
        block["Supervised DeepLabV3+"] = summarize(run_episodes(pred, test, test, eps, seed=seed))
        sub = block["subset_for_unet"]
        lesion_eps = [e for e in eps if test.has_lesion(e.query)][: sub["n_episodes"]]
        sub["methods"]["Supervised DeepLabV3+"] = summarize(run_episodes(pred, test, test, lesion_eps, seed=seed))
    results["seg_checkpoint"] = str(seg_checkpoint)
    atomic_write_json(path, results, indent=2)
    plot_methods(results, out_dir / "results_fewshot.png")
    return results


def plot_methods(results: dict, out_png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ["PANet++", "PANet (no decoder)", "Supervised DeepLabV3+", "PANet++ with mismatched supports"]
    shots = list(results["by_shots"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / (len(methods) + 1)
    for j, m in enumerate(methods + ["U-Net fine-tuned on the k supports"]):
        vals, errs = [], []
        for k in shots:
            b = results["by_shots"][k]
            s = b["subset_for_unet"]["methods"].get(m) if m.startswith("U-Net") else b.get(m)
            vals.append(s["dice"] if s else np.nan)
            errs.append((s["dice"] - s["dice_ci95"][0]) if s and s.get("dice_ci95") else 0)
        ax.bar(np.arange(len(shots)) + j * width, vals, width, yerr=errs, label=m, capsize=2)
    ax.set_xticks(np.arange(len(shots)) + width * len(methods) / 2, [f"{k}-shot" for k in shots])
    ax.set(ylabel="Dice (test split, mean and 95% CI)", ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
