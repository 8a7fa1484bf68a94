"""Cells on a local Ray (loopback only, telemetry off): the same records as in-process runs.
Skips where Ray is not installed (it is the optional `ray` extra)."""

import os

import pytest

pytestmark = pytest.mark.slow
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'temperance[ray]'")

from eval_helpers import tiny_model_dir  # noqa: E402
from temperance import models  # noqa: E402
from temperance.eval import cells, data, grid, plan  # noqa: E402


def test_cells_on_a_local_ray(tmp_path):
    d = tiny_model_dir(tmp_path)
    task = data.load_task("easy").head(2)
    cfgs = grid.expand(grid.parse_configs("; top_k=5"), [1.0])
    jobs, _ = plan.plan_generate(d, [task], cfgs, samples=2, max_tokens=3, chat=False, seeds=1, embeddings=False)
    a, b = cells.Store(tmp_path / "ray"), cells.Store(tmp_path / "local")
    try:
        assert cells.run_jobs([dict(j) for j in jobs], a, workers=1, ray=True, progress=False) == 2
        assert ray.is_initialized()
        assert ray.util.get_node_ip_address() == "127.0.0.1"
    finally:
        ray.shutdown()
    cells.register_runtime(d, models.load(d, threads=1))
    cells.run_jobs([dict(j) for j in jobs], b, workers=0, progress=False)
    texts = lambda s: sorted((r["id"], [x["text"] for p in r["prompts"] for x in p["samples"]])  # noqa: E731
                             for r in s.read_all())
    assert texts(a) == texts(b)
