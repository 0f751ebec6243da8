"""tools/sweep_ensemble.py with bad inputs: cache folder, grid values and files, worker counts,
fingerprints, config overrides, a truncated cache shard. Nothing is written to --output-dir."""
import pytest

from .harness import Case, case_problems
from .in_process import run_in_process
from .inputs import fake_score_cache


def _case(id, names, *args, cache="{tmp}/cache", grid=("--alpha", "0.4", "--beta", "0.7", "--gamma", "0.3"), **kw):
    return Case(id=id, tool="sweep_ensemble.py",
                args=["--cache", cache, "--output-dir", "{tmp}/sweep", *grid, *args], names=names,
                prepare=lambda t: fake_score_cache(t / "cache"), protect=["{tmp}/cache"],
                absent=["{tmp}/sweep"], **kw)


CASES = [
    _case("cache-missing", ["{tmp}/nocache"], cache="{tmp}/nocache"),
    _case("cache-shard-truncated", ["{tmp}/cache/shards/r0-000000.safetensors", "truncated"]),
    _case("alpha-out-of-range", ["alpha", "1.5"], grid=("--alpha", "1.5", "--beta", "0.7", "--gamma", "0.3")),
    _case("gamma-not-a-number", ["gamma", "'x'"], grid=("--alpha", "0.4", "--beta", "0.7", "--gamma", "x")),
    _case("grid-file-missing", ["{tmp}/grid.yaml"], grid=("--grid", "{tmp}/grid.yaml")),
    _case("workers-zero", ["--workers", "0"], "--workers", "0"),
    _case("fingerprint-file-missing", ["{tmp}/fp.json"], "--expect-fingerprint", "{tmp}/fp.json"),
    _case("overrides-without-config", ["MODEL.RETCLIP.TOP_K", "--config-file"], "MODEL.RETCLIP.TOP_K", "3"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_sweep_ensemble_mistake(case, tmp_path):
    _, problems = case_problems(case, tmp_path, runner=run_in_process)
    assert not problems, "\n".join(problems)
