#!/usr/bin/env python
"""Look at and edit RetCLIP feature databases.

    inspect_database.py inspect DB [--json] [--verify]   # --verify reads every shard
    inspect_database.py repair DB        # list the shards of a build stopped before its manifest
    inspect_database.py add DB CONFIG [KEY VALUE ...]   # build a source into DB
    inspect_database.py remove DB --classes "wall" "sky" --output OUT
    inspect_database.py merge A B --output OUT
    inspect_database.py finalize OUTPUT_DIR [--remove-parts]   # join array-job parts
    inspect_database.py thumbnails DB --class cat --output cat.png [--max 16] [--size 96]

remove, merge and add build the result in a new folder and rename it into place only when it is
complete: a failure leaves nothing behind (remove/merge) or the database as it was (add).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retclip.utils.cli import UserError, run_tool  # noqa: E402  (light: --help imports no torch)


def _open(path: str):
    from retclip.retrieval import FeatureDatabase  # torch and faiss, only once arguments are parsed

    return FeatureDatabase.open(path)


def _inspect(args) -> None:
    db = _open(args.database)
    info = db.describe()
    if args.json:
        print(json.dumps(info, indent=1))
        return
    print(f"database   {info['path']}  ({info['disk_bytes'] / 2**20:.1f} MiB on disk)")
    print(f"encoder    {info['encoder']}   dtype {info['dtype']}")
    print(f"source     {info['source']}")
    print(
        f"vectors    {info['num_vectors']} in {info['num_shards']} shards, {info['num_classes']} classes"
    )
    width = max([len(n) for n in info["class_counts"]] + [5])
    for name, count in sorted(info["class_counts"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<{width}}  {count}")
    if info["empty_classes"]:
        print(f"classes without vectors: {', '.join(info['empty_classes'])}")
    if args.verify:
        _verify(db)


def _verify(db: "FeatureDatabase") -> None:  # noqa: F821
    problems = db.verify()
    for line in problems:
        print(f"BAD  {line}")
    if problems:
        raise UserError(f"{len(problems)} problem(s) in {db.path}; first: {problems[0]}")
    print(f"verified   all {len(db.shard_names)} shards of {db.path}: complete, finite features")


def _repair(args) -> None:
    from retclip.database_builder.manage import repair_database

    db = repair_database(args.database)
    print(f"{db.path}: manifest lists {len(db.shard_names)} shards, {len(db)} vectors")


def _add(args) -> None:
    from retclip.database_builder import setup_build_config
    from retclip.database_builder.manage import add_to_database
    # The database config names its model config: the same loader as tools/build_database.py.
    db = add_to_database(setup_build_config(args.config_file, args.opts), args.database)
    print(f"{db.path}: {len(db)} vectors, {len(db.class_names)} classes")


def _remove(args) -> None:
    out = _open(args.database).remove_classes(args.classes, args.output)
    print(f"{out.path}: {len(out)} vectors, {len(out.class_names)} classes")


def _merge(args) -> None:
    a, b = _open(args.first), _open(args.second)
    out = a.merge(b, args.output)
    print(f"{out.path}: {len(out)} vectors, {len(out.class_names)} classes")


def _finalize(args) -> None:
    from retclip.database_builder.parts import finalize_parts

    out = finalize_parts(args.output_dir, keep_parts=not args.remove_parts)
    print(f"{out.path}: {len(out)} vectors in {len(out.shard_names)} shards, {len(out.class_names)} classes")


def _thumbnails(args) -> None:
    from retclip.database_builder.manage import class_thumbnails

    n = class_thumbnails(
        _open(args.database),
        args.class_name,
        args.output,
        max_items=args.max,
        size=args.size,
    )
    print(f"{args.output}: {n} crops of {args.class_name!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("inspect", help="per-class counts, dims, encoder, source, disk size")
    s.add_argument("database")
    s.add_argument("--json", action="store_true")
    s.add_argument("--verify", action="store_true", help="read every shard: hashes, NaN/inf rows")
    s.set_defaults(func=_inspect)
    s = sub.add_parser("repair", help="list the complete shards of an interrupted build")
    s.add_argument("database")
    s.set_defaults(func=_repair)
    s = sub.add_parser("add", help="build a source's images/classes into an existing database")
    s.add_argument("database")
    s.add_argument(
        "config_file", help="build config (tools/build_database.py's); OUTPUT_DIR is ignored"
    )
    s.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    s.set_defaults(func=_add)
    s = sub.add_parser("remove", help="copy without some classes")
    s.add_argument("database")
    s.add_argument("--classes", nargs="+", required=True)
    s.add_argument("--output", required=True)
    s.set_defaults(func=_remove)
    s = sub.add_parser("merge", help="join two databases of the same encoder")
    s.add_argument("first")
    s.add_argument("second")
    s.add_argument("--output", required=True)
    s.set_defaults(func=_merge)
    s = sub.add_parser("finalize", help="join the parts of an array-job build (docs/SCALING.md)")
    s.add_argument("output_dir", help="the build's DATABASE_BUILD.OUTPUT_DIR (holds parts/)")
    s.add_argument("--remove-parts", action="store_true", help="delete parts/ after joining")
    s.set_defaults(func=_finalize)
    s = sub.add_parser("thumbnails", help="PNG grid of one class's segment crops")
    s.add_argument("database")
    s.add_argument("--class", dest="class_name", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--max", type=int, default=16)
    s.add_argument("--size", type=int, default=96)
    s.set_defaults(func=_thumbnails)
    return p


def main(argv) -> int:
    args = parser().parse_args(argv)
    from retclip.retrieval.safedir import DatabaseLockedError

    try:
        args.func(args)
    except (KeyError, ValueError, DatabaseLockedError) as e:  # messages name the file/class
        raise UserError(e.args[0] if isinstance(e, KeyError) and e.args else str(e)) from e
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
