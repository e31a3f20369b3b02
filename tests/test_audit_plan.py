"""The audit is a list of stages run by one loop: a stage added from outside the package is one class
and one list entry, and the loop shards it over processes and resumes it from the record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lit_defense.audit import AttackSuite, AuditRuntime, AuditStage, audit_model, default_plan
from lit_defense.audit.progress import ProgressLog
from lit_defense.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from toy_models import TinyNet  # noqa: E402

N = 40
SUITE = AttackSuite(steps=3, apgd_steps=0, min_norm_steps=0, square_queries=0, random_samples=0, rays_queries=0)


class CleanMargin(AuditStage):
    """A toy stage: every clean-correct input's logit margin, recorded per batch; its mean in the report."""

    name = "clean_margin"
    computed: list[int] = []  # ids this process computed (not read back from the record)

    def inputs(self, ctx):
        return ctx.res.clean.nonzero().squeeze(1)

    def work(self, ctx, ids, record):
        stored = record.get("margin", ids.tolist()) if record is not None else None
        if stored is not None:
            return {"margin": torch.tensor(stored["margin"])}
        CleanMargin.computed += ids.tolist()
        with torch.no_grad():
            logits = ctx.model(ctx.x[ids])
        true = logits.gather(1, ctx.y[ids, None]).squeeze(1)
        margin = true - logits.scatter(1, ctx.y[ids, None], float("-inf")).amax(1)
        if record is not None:
            record.put("margin", ids.tolist(), {"margin": margin.tolist()})
        return {"margin": margin}

    def fold(self, ctx, found):
        on = self.inputs(ctx)
        return {"mean_margin": round(float(found["margin"][on].mean()), 5), "count": int(on.numel())}


def _data():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.rand(N, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 10  # a few wrong ones
    return model, x, y


def _audit(log=None):
    model, x, y = _data()
    return audit_model(model, x, y, [0.05], suite=SUITE, check_samples=16, keep_examples=0,
                       runtime=AuditRuntime(log=log), plan=[*default_plan(), CleanMargin()])


def test_a_stage_from_outside_runs_and_resumes(tmp_path):
    CleanMargin.computed = []
    ProgressLog.start(tmp_path, {"toy": 1}, fresh=True)
    log = ProgressLog(tmp_path, 0).load()
    first = _audit(log)
    log.close()
    info = first.stages["clean_margin"]
    assert info["count"] == int(first.per_sample.clean.sum()) == N - N // 5
    assert info["per_process"] == [info["count"]] and info["collectives"] == 1
    assert sorted(CleanMargin.computed) == first.per_sample.clean.nonzero().squeeze(1).tolist()
    CleanMargin.computed = []
    again = _audit(ProgressLog(tmp_path, 0).load())  # resumed: nothing computed again, same result
    assert first.cost["stages"]["clean_margin"]["rounds"] == 1
    assert again.cost["stages"]["clean_margin"] == {"rounds": 0, "work": 0}  # the model is not called again
    assert CleanMargin.computed == [] and again.stages["clean_margin"] == info
    assert again.worst_case == first.worst_case
    assert again.cost["rounds"] < first.cost["rounds"]  # the other stages' recorded batches are not attacked again


def _worker(rank: int, folder: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        audit = _audit()
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(
            {"stage": audit.stages["clean_margin"], "computed": CleanMargin.computed, "worst": audit.worst_case}))
    finally:
        torch.distributed.destroy_process_group()


def test_the_loop_shards_a_stage_from_outside_over_two_processes(tmp_path):
    CleanMargin.computed = []
    alone = _audit()
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    count = alone.stages["clean_margin"]["count"]
    for r in ranks:
        assert r["stage"]["per_process"] == [count // 2, count - count // 2]
        assert r["stage"]["mean_margin"] == pytest.approx(alone.stages["clean_margin"]["mean_margin"], abs=1e-4)
        assert r["worst"] == alone.worst_case
    both = ranks[0]["computed"] + ranks[1]["computed"]
    assert sorted(both) == sorted(CleanMargin.computed) and not set(ranks[0]["computed"]) & set(ranks[1]["computed"])


def test_a_plan_without_its_probe_or_with_two_stages_of_one_name_is_one_clear_error():
    model, x, y = _data()
    with pytest.raises(ConfigError, match="starts with ProbeStage"):
        audit_model(model, x, y, [0.05], suite=SUITE, plan=default_plan()[1:])
    with pytest.raises(ConfigError, match="a name of its own"):
        audit_model(model, x, y, [0.05], suite=SUITE, plan=[*default_plan(), CleanMargin(), CleanMargin()])
