"""Checks for the Inside nn.Module course.

A test cell calls a check on the student's model; the check prints one verdict
line, or raises CheckFailed with a diagnosis and a hint. The package holds no
solutions and no hidden-test data: students have it installed.

Three rooms:
  grader/checks/   the checks students call, one module per topic (this module exports them)
  grader/grading/  the grading machinery instructors run: re-run, guard, autograde, feedback
  grader/cli.py    the command line, `python -m grader`
"""

from .checks.counting import check_counting, check_names
from .checks.models import (check_device_transfer, check_eval_behaviour, check_gradient_flow, check_learning,
                            check_model, check_trainable_count)
from .checks.layers import check_matches_torch, check_roles, check_tensors
from .checks.call_pipeline import check_call_pipeline
from .checks.export import check_export_agrees
from .checks.hooks import check_grad_norms, check_records_activations
from .checks.hook_guards import check_finds_first_nonfinite, check_pre_hook_validates
from .checks.hooked_models import check_keeps_output, check_no_hook_leak
from .checks.toy_module import check_forgotten_init, check_mirrors_torch, check_unknown_attribute
from .checks.reference import check_matches_reference
from .checks.report import CheckFailed, GraderError
from .checks.saving import check_checkpoint_round_trip, check_loads_state_dict
from .checks.fixes import check_log, check_same_function
from .checks.state_dict_keys import check_key_upgrade
from .checks.training import check_counter, check_optimizer, check_predict, check_training_step
from .checks.functional import check_ensemble_forward
from .checks.state import check_loads_checkpoint, check_materializes, check_plain_state_dict

__all__ = [
    "CheckFailed", "GraderError", "check_matches_reference", "check_counting", "check_device_transfer", "check_eval_behaviour", "check_gradient_flow",
    "check_learning", "check_model", "check_names", "check_trainable_count",
    "check_matches_torch", "check_roles", "check_tensors",
    "check_finds_first_nonfinite", "check_grad_norms", "check_keeps_output", "check_no_hook_leak",
    "check_pre_hook_validates", "check_records_activations",
    "check_forgotten_init", "check_mirrors_torch", "check_unknown_attribute",
    "check_counter", "check_log", "check_optimizer", "check_predict", "check_same_function", "check_training_step",
    "check_call_pipeline", "check_export_agrees", "check_checkpoint_round_trip", "check_key_upgrade",
    "check_loads_state_dict",
    "check_loads_checkpoint", "check_materializes", "check_plain_state_dict", "check_ensemble_forward",
]
