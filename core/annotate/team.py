"""Team work on a project: members and roles, one image to one annotator at a time (leases), a reviewer's
pass, the overlap sample labelled twice and its agreement report, the append-only event log.

Roles nest: owner ⊇ reviewer ⊇ annotator. The single local user (`user` None: the CLI without `--user`, an
app without `auth=`) is the owner of every project, as before teams existed. A lease is a row's holder and
expiry, taken by a conditional UPDATE inside a transaction: two processes can never both get one image,
whatever the engine (PostgreSQL re-checks the condition after waiting on the row; SQLite serialises writers).
"""
from __future__ import annotations

import json
import time

import numpy as np
import sqlalchemy as sa

from ..data.io import DataError
from .db import events, images, members, opinions, plain
from .records import DONE, QUEUE, StaleDecision, from_png, in_overlap, png_bytes

ROLES = ("annotator", "reviewer", "owner")
LEASE_S = 300.0


class TeamMixin:
    """Mixed into ProjectStore (which provides the engine, `_tx`, `_read`, `row`, `project_id`, `user`)."""

    # ------------------------------------------------------------------ members
    def role_of(self, user: str | None) -> str | None:
        if user is None:
            return "owner"
        with self._read() as con:
            return con.execute(sa.select(members.c.role).where(members.c.project_id == self.project_id,
                                                               members.c.user == user)).scalar()

    def _check_member(self) -> None:
        if self.user is not None and self.role_of(self.user) is None:
            raise DataError(f"{self.user} is not a member of project {self.name}: ask its owner to add you")

    def _require(self, role: str) -> None:
        have = self.role_of(self.user)
        if have is None or ROLES.index(have) < ROLES.index(role):
            raise DataError(f"{self.user} is {('a ' + have) if have else 'not a member'} in project {self.name}: "
                            f"this needs a{'n' if role[0] in 'ao' else ''} {role}")

    def add_member(self, user: str, role: str = "annotator") -> None:
        """The owner adds `user` (an `auth=` user name, or a CLI `--user`) as annotator, reviewer or owner."""
        if role not in ROLES:
            raise DataError(f"unknown role {role!r}: choose annotator, reviewer or owner")
        if not user or len(user) > 128:
            raise DataError("a member needs a user name")
        self._require("owner")
        now = time.time()
        with self._tx() as con:
            con.execute(members.delete().where(members.c.project_id == self.project_id, members.c.user == user))
            con.execute(members.insert().values(project_id=self.project_id, user=user, role=role, added=now))
            self._event(con, None, None, self.user or "", "member", {"user": user, "role": role}, now)

    def members(self) -> dict[str, str]:
        with self._read() as con:
            return {r.user: r.role for r in con.execute(
                sa.select(members.c.user, members.c.role).where(members.c.project_id == self.project_id)
                .order_by(members.c.user))}

    def set_overlap(self, share: float) -> int:
        """The share of images (0-1) two annotators label independently (for the agreement report)."""
        from .db import projects

        if not 0 <= share <= 1:
            raise DataError("the overlap share is between 0 and 1")
        self._require("owner")
        with self._tx() as con:
            con.execute(projects.update().where(projects.c.id == self.project_id).values(overlap=share))
            rows = con.execute(sa.select(images.c.id, images.c.rel_path).where(self._images())).all()
            chosen = [r.id for r in rows if in_overlap(r.rel_path, share)]
            con.execute(images.update().where(self._images()).values(overlap=images.c.id.in_(chosen) if chosen
                                                                     else sa.false()))
            return len(chosen)

    def _event(self, con, image_id, version, who: str, action: str, detail: dict | None = None, at=None) -> None:
        con.execute(events.insert().values(project_id=self.project_id, image_id=image_id, version=version, who=who,
                                           at=at or time.time(), action=action,
                                           detail=json.dumps(detail) if detail else None))

    def events(self, rel_path: str | None = None) -> list[dict]:
        q = sa.select(events, images.c.rel_path).select_from(events.outerjoin(images, images.c.id == events.c.image_id))
        q = q.where(events.c.project_id == self.project_id)
        if rel_path is not None:
            q = q.where(images.c.rel_path == rel_path)
        with self._read() as con:
            return [plain(r) for r in con.execute(q.order_by(events.c.id)).mappings()]

    # ------------------------------------------------------------------ leases
    def _free_for(self, user: str, now: float):
        return sa.or_(images.c.lease_holder.is_(None), images.c.lease_until < now, images.c.lease_holder == user)

    def _wanted(self, user: str, now: float):
        """Images this annotator should see, in order: sent back to them, awaiting a first decision, and the
        overlap sample's images another annotator decided and they have not."""
        mine = sa.select(opinions.c.id).where(opinions.c.image_id == images.c.id, opinions.c.who == user).exists()
        n_opinions = sa.select(sa.func.count()).where(opinions.c.image_id == images.c.id).scalar_subquery()
        base = sa.select(images).where(self._images(), self._free_for(user, now))
        return [
            base.where(images.c.review == "sent back", images.c.who == user).order_by(images.c.updated),
            base.where(images.c.status.in_(QUEUE)).order_by(images.c.uncertainty.is_(None),
                                                            images.c.uncertainty.desc(), images.c.rel_path),
            base.where(images.c.overlap.is_(True), images.c.status.in_(DONE), images.c.who != user, ~mine,
                       n_opinions < 2).order_by(images.c.rel_path)]

    def claim(self, user: str | None = None, lease_s: float = LEASE_S, exclude: str | None = None) -> dict | None:
        """The next image for `user` that nobody else holds, leased to them for `lease_s` seconds (the image
        they already hold, renewed, if it still waits for them; `exclude`: not this one, e.g. just skipped).
        Their other leases end. None: nothing left."""
        self._require("annotator")
        user = user or self.user or ""
        now = time.time()
        with self._tx() as con:
            candidates = []
            for q in self._wanted(user, now):
                candidates += [plain(r) for r in con.execute(q.limit(25)).mappings()]
            candidates.sort(key=lambda r: r["lease_holder"] != user or (r["lease_until"] or 0) < now)  # held first
            for r in candidates:
                if r["rel_path"] == exclude:
                    continue
                got = con.execute(images.update().where(images.c.id == r["id"], self._free_for(user, now))
                                  .values(lease_holder=user, lease_until=now + lease_s)).rowcount
                if got == 1:
                    con.execute(images.update().where(self._images(), images.c.lease_holder == user,
                                                      images.c.id != r["id"])
                                .values(lease_holder=None, lease_until=None))
                    r.update(lease_holder=user, lease_until=now + lease_s)
                    return r
        return None

    def renew(self, rel_path: str, user: str | None = None, lease_s: float = LEASE_S) -> float:
        """Extend `user`'s lease; refused (naming the holder) once another annotator has taken the image."""
        user = user or self.user or ""
        now = time.time()
        with self._tx() as con:
            cur = self.row(rel_path, con)
            if cur["lease_holder"] not in (None, user) and (cur["lease_until"] or 0) >= now:
                raise _held(rel_path, cur)
            con.execute(images.update().where(images.c.id == cur["id"]).values(lease_holder=user,
                                                                              lease_until=now + lease_s))
        return now + lease_s

    def release(self, rel_path: str, user: str | None = None) -> None:
        user = user or self.user or ""
        with self._tx() as con:
            con.execute(images.update().where(self._images(), images.c.rel_path == rel_path,
                                              images.c.lease_holder == user).values(lease_holder=None, lease_until=None))

    def leases(self) -> list[dict]:
        """Who holds which image, until when (expired leases are listed as such until taken)."""
        now = time.time()
        with self._read() as con:
            rows = con.execute(sa.select(images.c.rel_path, images.c.lease_holder, images.c.lease_until)
                               .where(self._images(), images.c.lease_holder.is_not(None))).all()
        return [{"rel_path": r.rel_path, "holder": r.lease_holder, "until": r.lease_until,
                 "expired": (r.lease_until or 0) < now} for r in rows]

    def _check_decision(self, cur: dict, rel_path: str, seen_version: int | None, who: str,
                        image_id: int | None = None) -> None:
        """A person's decision applies to the image they named, at the version they saw, unless another
        annotator holds it now: else StaleDecision, nothing saved."""
        if image_id is not None and int(image_id) != cur["id"]:
            raise StaleDecision(f"{rel_path}: this decision names another image; nothing was saved")
        if seen_version is None:
            return
        if cur["lease_holder"] not in (None, who) and (cur["lease_until"] or 0) >= time.time():
            raise _held(rel_path, cur)
        if seen_version != cur["version"]:
            raise StaleDecision(f"{rel_path} changed since it was shown (version {cur['version']}, you saw "
                                f"{seen_version}); nothing was saved: look at it again")

    # ------------------------------------------------------------------ overlap opinions
    def _second_opinion(self, rel_path: str, who: str) -> bool:

        r = self.row(rel_path)
        if not (r["overlap"] and r["status"] in DONE and who and r["who"] and r["who"] != who):
            return False
        with self._read() as con:
            return con.execute(sa.select(opinions.c.id).where(opinions.c.image_id == r["id"],
                                                              opinions.c.who == who)).first() is None

    def give_opinion(self, rel_path: str, status: str, mask, who: str, image_id: int, seen_version: int) -> int:
        """A second annotator's decision on an overlap image: kept for the agreement report; the image's
        current mask (the first decision) stays. Returns the image's version (unchanged)."""
        png = png_bytes(mask) if mask is not None else None
        with self._tx() as con:
            cur = self.row(rel_path, con)
            self._check_decision(cur, rel_path, int(seen_version), who, image_id)
            self._opinion(con, cur["id"], who, status, png, time.time())
            con.execute(images.update().where(images.c.id == cur["id"]).values(lease_holder=None, lease_until=None))
            return cur["version"]

    def _opinion(self, con, image_id: int, who: str, status: str, png: bytes | None, now: float) -> None:
        con.execute(opinions.delete().where(opinions.c.image_id == image_id, opinions.c.who == who))
        con.execute(opinions.insert().values(image_id=image_id, who=who, status=status, mask_png=png, at=now))
        self._event(con, image_id, None, who, "opinion", {"status": status}, now)

    def agreement(self) -> dict:
        """Dice between annotators on the overlap sample: per image and pair, per pair, overall (two "no lesion"
        opinions agree fully: Dice 1)."""
        from itertools import combinations


        q = (sa.select(images.c.rel_path, opinions.c.who, opinions.c.mask_png)
             .select_from(opinions.join(images, images.c.id == opinions.c.image_id))
             .where(self._images()).order_by(images.c.rel_path, opinions.c.who))
        by_image: dict[str, list] = {}
        with self._read() as con:
            for r in con.execute(q):
                by_image.setdefault(r.rel_path, []).append((r.who, from_png(r.mask_png) if r.mask_png else None))
        per_image, per_pair = [], {}
        for rel_path, ops in by_image.items():
            for (a, ma), (b, mb) in combinations(ops, 2):
                d = _dice(ma, mb)
                per_image.append({"rel_path": rel_path, "a": a, "b": b, "dice": d})
                per_pair.setdefault(f"{a} / {b}", []).append(d)
        scores = [p["dice"] for p in per_image]
        return {"images": len({p["rel_path"] for p in per_image}), "per_image": per_image,
                "per_pair": {k: {"n": len(v), "mean_dice": float(np.mean(v))} for k, v in per_pair.items()},
                "mean_dice": float(np.mean(scores)) if scores else None}

    # ------------------------------------------------------------------ review
    def review(self, rel_path: str, verdict: str, note: str = "", seen_version: int | None = None) -> None:
        """A reviewer approves an annotator's decision, or sends it back with a note (it returns to the top of
        that annotator's queue)."""
        if verdict not in ("approve", "send back"):
            raise DataError("a review approves or sends back")
        self._require("reviewer")
        if verdict == "send back" and not note.strip():
            raise DataError("say why it goes back: the note is what the annotator reads")
        now = time.time()
        with self._tx() as con:
            cur = self.row(rel_path, con)
            if cur["status"] not in DONE:
                raise DataError(f"{rel_path}: no decision to review yet")
            if seen_version is not None and int(seen_version) != cur["version"]:
                raise StaleDecision(f"{rel_path} changed since it was shown; nothing was saved: look at it again")
            if self.user is not None and cur["who"] == self.user:
                raise DataError(f"{rel_path}: a decision is reviewed by someone other than who made it")
            con.execute(images.update().where(images.c.id == cur["id"]).values(
                review="approved" if verdict == "approve" else "sent back", review_note=note.strip() or None,
                reviewer=self.user or ""))
            self._event(con, cur["id"], cur["version"], self.user or "", "review " + verdict,
                        {"note": note.strip()} if note.strip() else None, now)

    def sent_back(self, user: str | None = None) -> list[dict]:
        """What reviewers sent back to `user`, with their notes."""
        user = user or self.user or ""
        with self._read() as con:
            return [plain(r) for r in con.execute(
                sa.select(images.c.rel_path, images.c.review_note, images.c.reviewer, images.c.version)
                .where(self._images(), images.c.review == "sent back", images.c.who == user)
                .order_by(images.c.updated)).mappings()]

    def review_pending(self) -> list[dict]:
        """Decisions no reviewer has looked at (or that came back corrected), oldest first."""
        with self._read() as con:
            return [plain(r) for r in con.execute(
                sa.select(images).where(self._images(), images.c.status.in_(DONE), images.c.review.is_(None))
                .order_by(images.c.updated)).mappings()]

    def progress(self) -> dict[str, dict]:
        """Per annotator: images decided (current decisions), approved, sent back, overlap opinions, holding."""
        from collections import defaultdict

        out: dict[str, dict] = defaultdict(lambda: dict(decided=0, approved=0, sent_back=0, opinions=0, holding=0))
        with self._read() as con:
            for r in con.execute(sa.select(images.c.who, images.c.review, sa.func.count().label("n"))
                                 .where(self._images(), images.c.status.in_(DONE)).group_by(images.c.who,
                                                                                           images.c.review)):
                p = out[r.who or ""]
                p["decided"] += r.n
                if r.review in ("approved", "sent back"):
                    p[r.review.replace(" ", "_")] += r.n
            for r in con.execute(sa.select(opinions.c.who, sa.func.count().label("n"))
                                 .select_from(opinions.join(images, images.c.id == opinions.c.image_id))
                                 .where(self._images()).group_by(opinions.c.who)):
                out[r.who]["opinions"] = r.n
        for lease in self.leases():
            if not lease["expired"]:
                out[lease["holder"]]["holding"] += 1
        return dict(out)


def _held(rel_path: str, cur: dict):

    left = max(0, (cur["lease_until"] or 0) - time.time())
    return StaleDecision(f"{rel_path} is held by {cur['lease_holder']} now (their lease ends in {left:.0f} s; yours "
                         "expired): nothing was saved")


def _dice(a, b) -> float:
    a = np.zeros((1, 1), bool) if a is None else a
    b = np.zeros_like(a) if b is None else b
    if a.shape != b.shape:
        return 0.0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)
