"""Sparse-vDiT plans, their public face: the plan (``sparse_vdit.plan_core``) and its file
functions (``sparse_vdit.plan_file``) in one place.

    plan = load_plan("plan.json")                 # or a Hugging Face Hub repo id
    handle = apply_sparse_attention(pipe, plan)   # a plan is an attention method

A plan is one attention mode per (denoising step, layer, head), searched offline (``search``);
``sparse_vdit.plan_core`` says how a plan maps steps and runs.
"""

from sparse_vdit.plan_core import COST_SOURCES, REMAKE, SCHEMA_VERSION, CostTable, Plan, PlanError, StepRange
from sparse_vdit.plan_file import load_plan, save_plan

__all__ = ["SCHEMA_VERSION", "COST_SOURCES", "REMAKE", "PlanError", "CostTable", "StepRange", "Plan", "load_plan",
           "save_plan"]
