"""`cad3d ckpt ls|inspect|verify|prune|migrate`: look after a folder of checkpoints."""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from cad3d.cli._args import non_negative_int
from cad3d.errors import CheckpointError

_EPILOG_FILES = (
    "Checkpoints are loaded with torch.load(weights_only=True) only: a file that needs unsafe "
    "unpickling is refused, never executed. Integrity comes from checkpoints_manifest.json "
    "(sha256 of every file the trainer wrote)."
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ckpt",
        help="list, inspect, verify, prune and migrate checkpoints",
        description="Look after a folder of training checkpoints (e.g. trained_models/vae/).",
        epilog=_EPILOG_FILES,
    )
    sub = p.add_subparsers(dest="ckpt_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _usage(p))

    ls = sub.add_parser(
        "ls",
        help="table of the checkpoints in a folder",
        description="One row per checkpoint: kind (epoch/last/best/final), epoch, global step, metrics, "
        "size, sha (ok: matches the manifest, BAD: differs, ?: not listed) and creation time. "
        "Metadata is read without loading the weights.",
    )
    ls.add_argument("path", type=Path, metavar="PATH", help="checkpoint folder")
    ls.add_argument("--json", action="store_true", help="print the rows as JSON")
    ls.add_argument("--no-hash", action="store_true", help="skip the sha256 check (fast for huge files)")
    ls.set_defaults(func=_cmd_ls)

    ins = sub.add_parser(
        "inspect",
        help="metadata and keys of one checkpoint",
        description="Show a checkpoint's cad3d_meta (task, epoch, step, metrics, versions, device, precision, "
        "config, git commit) and every key with tensor shapes/dtypes, memory-mapped on CPU: no weights are "
        "copied to any device.",
    )
    ins.add_argument("path", type=Path, metavar="FILE", help="checkpoint file")
    ins.add_argument("--json", action="store_true", help="print everything as JSON")
    ins.add_argument("--all", action="store_true", help="list every tensor of the state dicts (default: first 10)")
    ins.set_defaults(func=_cmd_inspect)

    ver = sub.add_parser(
        "verify",
        help="check that checkpoints load, match their hashes, restore, run and progress",
        description="Checks, each PASS/FAIL/SKIP with a reason: loadable (weights_only + metadata); hash "
        "(sha256 vs checkpoints_manifest.json); restore (rebuild the task's modules from the saved config and "
        "load the state dicts strictly); forward (a synthetic batch gives finite output); progression "
        "(epochs strictly increasing, no duplicates, loss finite, whether it decreased); weights_change "
        "(consecutive epoch files differ); log_consistency (the epoch log's entries match the checkpoints; "
        "gaps explained by every-N-epochs saving or retention are fine). Exit code 1 if any check FAILs.",
    )
    ver.add_argument("path", type=Path, metavar="PATH", help="checkpoint file or folder")
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    ver.add_argument("--no-forward", action="store_true", help="skip the forward pass")
    ver.set_defaults(func=_cmd_verify)

    pr = sub.add_parser(
        "prune",
        help="delete all but the K newest epoch files",
        description="Delete epoch files, keeping the K newest; best, last and final files are never deleted. "
        "Each deletion updates the manifest.",
    )
    pr.add_argument("path", type=Path, metavar="PATH", help="checkpoint folder")
    pr.add_argument("--keep-last", type=non_negative_int, required=True, metavar="K", help="epoch files to keep (>= 0)")
    pr.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    pr.add_argument("--model", metavar="TASK", help="task whose file names to use (default: from the metadata)")
    pr.set_defaults(func=_cmd_prune)

    mig = sub.add_parser(
        "migrate",
        help="rename old/foreign checkpoint layouts to cad3d's and add metadata",
        description="Plan, then apply: rename old layouts (epoch_5.pt, epoch-05_step-000123.ckpt, checkpoint_5.pth "
        "-> the model's epoch file; last.ckpt -> its last file; best-*.ckpt -> its best file), add cad3d_meta to "
        "files without it, and record every file in checkpoints_manifest.json. Files that need unsafe unpickling "
        "are refused and named. With --dry-run only the plan is printed; otherwise the plan is printed and "
        "applied, atomically per file (the new file is published before the old name is removed).",
    )
    mig.add_argument("path", type=Path, metavar="PATH", help="checkpoint folder")
    mig.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    mig.add_argument("--model", metavar="TASK", help="vae | diffusion | vit | ... (default: from files that have metadata)")
    mig.set_defaults(func=_cmd_migrate)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# -- helpers -----------------------------------------------------------------------------
def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _resolve_task(path: Path, model: str | None):
    """(task name, schema) for a folder: --model, else the task its checkpoints name."""
    from cad3d.training.checkpoint import iter_checkpoint_files
    from cad3d.training.checkpoint_io import read_metadata
    from cad3d.training.tasks.base import find_task_class
    from cad3d.training.tasks.base import known_tasks

    name = model
    if name is None:
        seen = collections.Counter()
        for f in iter_checkpoint_files(path):
            try:
                seen[read_metadata(f).get("task")] += 1
            except CheckpointError:
                continue
        seen.pop(None, None)
        if not seen:
            raise CheckpointError(f"{path}: no checkpoint names its model; pass --model ({', '.join(_known(known_tasks))})")
        name = seen.most_common(1)[0][0]
    cls = find_task_class(name)
    if cls is None:
        raise CheckpointError(f"{path}: unknown model {name!r}; known: {', '.join(_known(known_tasks))}")
    return name, cls.schema


def _known(fn) -> list[str]:
    try:
        return fn()
    except ImportError:
        return []


def _writer_lock(path: Path, purpose: str, dry_run: bool):
    """The run folder's writer lock (refused, naming the holder, while a training writes there);
    nothing for a dry run, which only reads."""
    import contextlib

    from cad3d.training.run_lock import RunLock

    return contextlib.nullcontext() if dry_run else RunLock(path, purpose)


# -- commands ----------------------------------------------------------------------------
def _cmd_ls(args) -> int:
    from cad3d.training.inspect import list_folder

    rows = list_folder(args.path, check_hash=not args.no_hash)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no checkpoints in {args.path}")
        return 0
    table = []
    for r in rows:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in (r["metrics"] or {}).items()) or "-"
        kind = r["kind"] if r.get("complete") is not False else f"{r['kind']} (mid-epoch)"
        table.append(
            [r["file"], kind or "-", _dash(r["epoch"]), _dash(r["step"]), metrics, _human(r["size"]), r["sha"], r["created"] or "-"]
        )
    print(_table(table, ["FILE", "KIND", "EPOCH", "STEP", "METRICS", "SIZE", "SHA", "CREATED"]))
    for r in rows:
        if r["error"]:
            print(f"! {r['error']}")
    return 0


def _dash(v) -> str:
    return "-" if v is None else str(v)


def _cmd_inspect(args) -> int:
    from cad3d.training.inspect import inspect_file

    info = inspect_file(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    meta = info["meta"]
    print(f"{info['file']}  ({_human(info['size'])})")
    print("metadata:")
    for k, v in meta.items():
        if k == "config":
            continue
        print(f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    if meta.get("config"):
        print(f"  config: {json.dumps(meta['config'], sort_keys=True)}")
    print("keys:")
    for key, summary in info["keys"].items():
        print(f"  {key}: {_describe(summary, args.all)}")
    return 0


def _describe(summary, show_all: bool) -> str:
    if isinstance(summary, dict) and "state_dict" in summary:
        dtypes = ", ".join(f"{d} x{n}" for d, n in summary["dtypes"].items())
        head = f"state dict: {summary['state_dict']} tensors, {summary['params']:,} values, {_human(summary['bytes'])} ({dtypes})"
        items = list(summary["tensors"].items())
        shown = items if show_all else items[:10]
        lines = [f"      {name}: {tuple(shape)} {dtype}" for name, (shape, dtype) in shown]
        if len(items) > len(shown):
            lines.append(f"      … {len(items) - len(shown)} more (--all)")
        return "\n".join([head, *lines])
    if isinstance(summary, dict) and isinstance(summary.get("state"), dict) and "param_groups" in summary:
        groups = summary["param_groups"]
        n_groups = groups.get("list", len(groups)) if isinstance(groups, dict) else len(groups)
        return f"optimizer state: {len(summary['state'])} parameter state(s), {n_groups} param group(s)"
    if isinstance(summary, dict) and "tensor" in summary:
        return f"tensor {tuple(summary['tensor'])} {summary['dtype']}"
    text = json.dumps(summary)
    return text if len(text) <= 120 else text[:117] + "..."


def _cmd_verify(args) -> int:
    from cad3d.training.verify import verify

    report = verify(args.path, forward=not args.no_forward)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for c in report.checks:
            print(f"{c.status:<4}  {c.name:<16} {c.detail}")
        failed = [c.name for c in report.checks if c.status == "FAIL"]
        print(f"{args.path}: " + ("all checks passed" if not failed else f"FAILED: {', '.join(failed)}"))
    return 0 if report.ok else 1


def _cmd_prune(args) -> int:
    from cad3d.training.checkpoint import CheckpointManager

    if args.keep_last < 0:
        raise CheckpointError(f"--keep-last must be >= 0, got {args.keep_last}")
    if not args.path.is_dir():
        raise CheckpointError(f"{args.path}: not a folder")
    _, schema = _resolve_task(args.path, args.model)
    with _writer_lock(args.path, "ckpt prune", args.dry_run):
        doomed = CheckpointManager(args.path, schema, is_writer=not args.dry_run).prune(args.keep_last, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for p in doomed:
        print(f"{verb} {p.name}")
    print(f"{verb} {len(doomed)} epoch file(s); kept the {args.keep_last} newest and best/last/final")
    return 0


def _cmd_migrate(args) -> int:
    from cad3d.training.migrate import apply_migration, plan_migration

    if not args.path.is_dir():
        raise CheckpointError(f"{args.path}: not a folder")
    task_name, schema = _resolve_task(args.path, args.model)
    with _writer_lock(args.path, "ckpt migrate", args.dry_run):  # the plan is applied as made
        steps = plan_migration(args.path, schema, task_name)
        changes = [s for s in steps if s.action not in ("skip", "refuse")]
        print(f"migration plan for {args.path} (model {task_name}):")
        for s in steps:
            print(f"  {s.describe()}")
        if not steps:
            print("  nothing to do")
        if args.dry_run:
            print(f"dry run: {len(changes)} change(s) planned, nothing changed")
            return 0
        for line in apply_migration(args.path, steps, schema, task_name):
            print(f"done: {line}")
    refused = [s.source.name for s in steps if s.action == "refuse"]
    print(f"{len(changes)} change(s) applied" + (f"; refused: {', '.join(refused)}" if refused else ""))
    return 0
