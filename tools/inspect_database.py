#!/usr/bin/env python
"""Look at and edit RetCLIP feature databases.

    inspect_database.py inspect DB [--json]
    inspect_database.py add DB CONFIG [KEY VALUE ...]   # build a source into DB
    inspect_database.py remove DB --classes "wall" "sky" --output OUT
    inspect_database.py merge A B --output OUT
    inspect_database.py finalize OUTPUT_DIR [--remove-parts]   # join array-job parts
    inspect_database.py thumbnails DB --class cat --output cat.png [--max 16] [--size 96]
"""
import argparse
import json
import sys

import retclip  # noqa: F401  (compat steps before detectron2)
from retclip.retrieval import FeatureDatabase


def _inspect(args) -> None:
    db = FeatureDatabase.open(args.database)
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


def _add(args) -> None:
    from detectron2.config import get_cfg

    from retclip import add_retclip_config
    from retclip.database_builder.manage import add_to_database

    cfg = get_cfg()
    add_retclip_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    db = add_to_database(cfg, args.database)
    print(f"{db.path}: {len(db)} vectors, {len(db.class_names)} classes")


def _remove(args) -> None:
    out = FeatureDatabase.open(args.database).remove_classes(args.classes, args.output)
    print(f"{out.path}: {len(out)} vectors, {len(out.class_names)} classes")


def _merge(args) -> None:
    a, b = FeatureDatabase.open(args.first), FeatureDatabase.open(args.second)
    out = a.merge(b, args.output)
    print(f"{out.path}: {len(out)} vectors, {len(out.class_names)} classes")


def _finalize(args) -> None:
    from retclip.database_builder.parts import finalize_parts

    out = finalize_parts(args.output_dir, keep_parts=not args.remove_parts)
    print(f"{out.path}: {len(out)} vectors in {len(out.shard_names)} shards, {len(out.class_names)} classes")


def _thumbnails(args) -> None:
    from retclip.database_builder.manage import class_thumbnails

    n = class_thumbnails(
        FeatureDatabase.open(args.database),
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
    s.set_defaults(func=_inspect)
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


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
