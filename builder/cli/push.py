"""``push --repo-id USER/NAME [--private] [--revision REV] [--dry-run]``: build if needed, upload what changed."""

from __future__ import annotations

from .options import add_library_option, integer
from .result import CommandResult


def register(sub):
    p = sub.add_parser("push", help="build the staging folder if missing or stale, then upload it to the Hub")
    add_library_option(p)
    p.add_argument("--repo-id", required=True, metavar="USER/NAME", help="Hub dataset repository")
    p.add_argument("--private", action="store_true", help="create the repository private (ignored if it exists)")
    p.add_argument("--revision", metavar="REV", default=None, help="branch to commit to (created if missing)")
    p.add_argument("--dry-run", action="store_true", help="build if needed and list what would be uploaded")
    p.add_argument("--output", metavar="DIR", default=None, help="staging folder (default: <library parent>/staging)")
    p.add_argument("--num-proc", type=integer(1), default=1, metavar="N", help="processes if a build is needed")
    return p


def run(args) -> CommandResult:
    from ..publish import ensure_staging, format_plan, push_staging, validate_repo_id

    validate_repo_id(args.repo_id)  # before a possibly long build
    staging, built = ensure_staging(args.library, args.output, num_proc=args.num_proc, repo_id=args.repo_id)
    # ensure_staging has just checked every file's sha256 against the release manifest (or built them)
    report = push_staging(staging, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run,
                          verify=False)
    before = [built.summary()] if built is not None else []
    if args.dry_run:
        before += format_plan(report.plan)
    return CommandResult(report, before=before, extra={"built": built})
