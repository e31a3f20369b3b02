"""``lit-defense audit``: attack any model with attacks that see through masking, run the checklist, report.

A model is a lit-defense checkpoint or any ``torch.nn.Module`` that maps [0, 1] images to logits,
given as ``class_path``/``init_args`` with optional state-dict ``weights`` (loaded with
``weights_only=True``).

- ``models``: ``ModelSpec``, loading and the output check;
- ``suite``: the attacks' settings (``AttackSuite``) and roles;
- ``options``: every option of an audit, declared once (``AuditOptions``: CLI, profiles, resume record);
- ``command``: the ``lit-defense audit`` parser built from them, and what a parsed config builds;
- ``plan``: one model's audit as a list of stages run by one loop (``default_plan``, ``audit_model``);
- ``stages``, ``checks_stages``: the stages (``AuditStage``: which inputs, what runs, how it folds);
- ``context``: what the stages share (``AuditContext``) and where the audit runs (``AuditRuntime``);
- ``probe``: what the model checks found, once (``ModelProbe``);
- ``stage``: the run of one stage: shard, attack (recorded), gather;
- ``sharding``: which process attacks which samples, and the collectives per stage;
- ``progress``: the resumable record of finished batches in the output folder;
- ``display``: progress bars, stage lines and the time left;
- ``run``: ``run_audit`` (data, models, report) and ``launch`` under a Lightning strategy.

``lit_defense.diagnostics`` turns the results into a verdict (its ``checklist`` also names the
attacks behind the evaluation checks, which the plan runs); ``lit_defense.report`` writes
``report.json``, ``report.md``, ``per_sample.json`` and the plots.
"""

from lit_defense.audit.context import AuditContext, AuditRuntime
from lit_defense.audit.models import ModelSpec, check_model_outputs, load_model
from lit_defense.audit.options import AuditOptions
from lit_defense.audit.plan import audit_model, default_plan
from lit_defense.audit.probe import ModelProbe
from lit_defense.audit.run import AuditTrainer, audit_metrics_summary, launch, run_audit
from lit_defense.audit.stages import AuditStage
from lit_defense.audit.suite import DEFAULT_EPS, AttackSuite, default_attacks
from lit_defense.results import ModelAudit
from lit_defense.roles import AttackRoles

__all__ = [
    "DEFAULT_EPS", "AttackRoles", "AttackSuite", "AuditContext", "AuditOptions", "AuditRuntime", "AuditStage",
    "AuditTrainer", "ModelAudit", "ModelProbe", "ModelSpec", "audit_metrics_summary", "audit_model",
    "check_model_outputs", "default_attacks", "default_plan", "launch", "load_model", "run_audit",
]
