"""tools/inspect_database.py with command-line mistakes: missing databases and configs, classes
the database does not have, an output that exists. The database must not change."""
import pytest

from .harness import Case, case_problems
from .in_process import run_in_process
from .inputs import TINY_DB, tiny_database


def _db(tmp):
    tiny_database(tmp / "db")


def _case(id, args, names, absent=(), **kw):
    return Case(id=id, tool="inspect_database.py", args=args, names=names, prepare=_db,
                protect=["{tmp}/db"], absent=list(absent), **kw)


CASES = [
    _case("inspect-missing", ["inspect", "{tmp}/nodb"], ["{tmp}/nodb"]),
    _case("remove-unknown-class", ["remove", "{tmp}/db", "--classes", "giraffe", "--output", "{tmp}/out"],
          ["giraffe"], absent=["{tmp}/out"]),
    _case("thumbnails-unknown-class", ["thumbnails", "{tmp}/db", "--class", "zebra", "--output", "{tmp}/t.png"],
          ["zebra"], absent=["{tmp}/t.png"]),
    _case("merge-second-missing", ["merge", "{tmp}/db", "{tmp}/other", "--output", "{tmp}/out"],
          ["{tmp}/other"], absent=["{tmp}/out"]),
    _case("add-config-missing", ["add", "{tmp}/db", "{tmp}/none.yaml"], ["{tmp}/none.yaml"],
          absent=["{tmp}/db.add"]),
    _case("add-config-key-unknown", ["add", "{tmp}/db", TINY_DB, "DATABASE_BUILD.SOURCE.KIND", "folder"],
          ["DATABASE_BUILD.SOURCE.KIND"], absent=["{tmp}/db.add"]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_inspect_database_mistake(case, tmp_path):
    _, problems = case_problems(case, tmp_path, runner=run_in_process)
    assert not problems, "\n".join(problems)
