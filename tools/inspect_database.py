#!/usr/bin/env python
"""Look at and edit RetCLIP feature databases.

    inspect_database.py inspect DB [--json]
    inspect_database.py add DB CONFIG [KEY VALUE ...]   # build a source into DB
    inspect_database.py remove DB --classes "wall" "sky" --output OUT
    inspect_database.py merge A B --output OUT
    inspect_database.py thumbnails DB --class cat --output cat.png [--max 16] [--size 96]
"""
import argparse
import json
import math
import os
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


def _thumbnails(args) -> None:
    """Labelled crops of one class: the segment's box with context, its mask outlined when the
    database records it (else the box), class, image id and row underneath."""
    import numpy as np
    from PIL import Image

    from retclip.database_builder.manage import image_paths
    from retclip.retrieval.provenance import ProvenanceReader, decode_mask_rle
    from retclip.visualization import draw_thumbnail

    db = FeatureDatabase.open(args.database)
    names = [n.lower() for n in db.class_names]
    if args.class_name.lower() not in names:
        raise KeyError(f"class {args.class_name!r} is not in {db.path}; classes: {db.class_names}")
    label = names.index(args.class_name.lower())
    reader, recorded = ProvenanceReader(db), None
    cells = []
    for row in np.flatnonzero(db.load_all().labels == label).tolist():
        if len(cells) >= args.max:
            break
        prov = reader.row(row)
        if prov["source"] is None:  # built before provenance: the build records know the paths
            recorded = image_paths(str(db.path)) if recorded is None else recorded
            prov["source"] = recorded.get(prov["image_id"])
        if prov["source"] is None or not os.path.isfile(prov["source"]):
            continue
        with Image.open(prov["source"]) as img:
            image = np.asarray(img.convert("RGB"))
        mask = decode_mask_rle(prov["mask_rle"]) if prov["mask_rle"] else None
        caption = [db.class_names[label].split(",")[0], f"{prov['image_id']}"[:24], f"row {row}"]
        cells.append(draw_thumbnail(image, prov["box"], mask, caption, size=args.size))
    cols = max(1, math.ceil(math.sqrt(len(cells))))
    height = max([c.shape[0] for c in cells] or [args.size])
    grid = Image.new("RGB", (cols * args.size, max(1, math.ceil(len(cells) / cols)) * height), (255, 255, 255))
    for i, cell in enumerate(cells):
        grid.paste(Image.fromarray(cell), ((i % cols) * args.size, (i // cols) * height))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    grid.save(args.output)
    print(f"{args.output}: {len(cells)} crops of {args.class_name!r}")


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
