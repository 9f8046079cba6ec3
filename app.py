"""PANet++ Studio: `python app.py [--data DIR] [--checkpoints DIR] [--host H] [--port P] [--share]`.

Every option can also come from the environment: PANET_DATA (or BUSI_DIR), PANET_CHECKPOINTS,
PANET_OUTPUT, PANET_HOST / GRADIO_SERVER_NAME, PANET_PORT / GRADIO_SERVER_PORT, PANET_SHARE=1,
PANET_LIST_ALL_CHECKPOINTS=1, PANET_MULTI_USER=1, PANET_DB (a team server database), PANET_AUTH_FILE.
"""
from __future__ import annotations

import argparse
import logging
import os


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="PANet++ Studio web app")
    p.add_argument("--data", default=None, help="data folder for the gallery (default: $PANET_DATA or $BUSI_DIR)")
    p.add_argument("--checkpoints", default=None, help="folder of shipped checkpoints (default: ./checkpoints)")
    p.add_argument("--output", default=None, help="the app's output folder (default: ./outputs)")
    p.add_argument("--host", default=os.environ.get("PANET_HOST", os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")))
    p.add_argument("--port", type=int, default=int(os.environ.get("PANET_PORT", os.environ.get("GRADIO_SERVER_PORT", 7860))))
    p.add_argument("--share", action="store_true", default=os.environ.get("PANET_SHARE") == "1",
                   help="create a public Gradio link (needs internet)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")
    p.add_argument("--multi-user", action="store_true", default=os.environ.get("PANET_MULTI_USER") == "1",
                   help="several people use this app: each browser keeps a user key of its own, and projects, "
                        "saved checkpoints and jobs belong to it (the default whenever the app listens beyond "
                        "this computer or is shared; on 127.0.0.1 the one local user owns everything)")
    p.add_argument("--list-all-checkpoints", action="store_true",
                   default=os.environ.get("PANET_LIST_ALL_CHECKPOINTS") == "1",
                   help="list every checkpoint saved from the page to every session (a single-user install; "
                        "by default each session sees only the ones it saved)")
    p.add_argument("--db", default=os.environ.get("PANET_DB") or None,
                   help="a team server database shared by every app process (postgresql://user@host:port/db); "
                        "unset: each project is a SQLite file under --output")
    p.add_argument("--auth-file", default=os.environ.get("PANET_AUTH_FILE") or None,
                   help="sign-in: a file of 'name:password' lines (one per user; team projects know users by "
                        "these names)")
    return p.parse_args(argv)


def read_auth_file(path: str) -> list[tuple[str, str]]:
    users = []
    from pathlib import Path

    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, password = line.strip().partition(":")
            if not (sep and name and password):
                raise SystemExit(f"{path}, line {n}: expected name:password")
            users.append((name, password))
    return users


def main(argv=None) -> None:
    # nothing leaves the machine unless the user asks: Gradio's usage analytics off (issue 27)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from webapp.context import AppContext, config_from_env
    from webapp.ui import build_app, launch_options

    local = args.host in ("127.0.0.1", "localhost", "::1") and not args.share
    cfg = config_from_env(data_dir=args.data, checkpoints_dir=args.checkpoints, output_dir=args.output,
                          device=args.device, list_all_checkpoints=args.list_all_checkpoints or None,
                          single_user=local and not args.multi_user and not args.auth_file, db_url=args.db)
    logging.getLogger("app").info("%s", "single-user install: every page is the one local user" if cfg.single_user
                                  else "multi-user: each browser is a user of its own")
    ctx = AppContext(cfg)
    demo = build_app(ctx)
    auth = read_auth_file(args.auth_file) if args.auth_file else None
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth, **launch_options(ctx))


if __name__ == "__main__":
    main()
