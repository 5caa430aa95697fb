"""The checks students call, one module per topic; `grader` exports them.

runner          how every check runs: device matrix, fresh model, seeded inputs, verdict line
report          the verdict line, CheckFailed, keeping warnings off stderr
diagnose        what is wrong with a model, in the student's terms
devices         the device matrix (cpu, plus cuda when present; GRADER_DEVICES)
models          trainable count, gradient flow, eval behaviour, learning, device transfer (units 01, 04, 07)
counting        counting and finding functions students write (units 01, 03, 04)
toy_module      unit 02: the checks that hold a toy module up against nn.Module; train/eval, apply, forward
toy_reach       unit 02: building the toy, calling its methods, finding its parts through torch's names
toy_registry    unit 02, stages 1-2: the three dicts, the names the walks yield
toy_state       unit 02, stages 3, 5, 6: state_dict, load_state_dict, to(dtype), zero_grad
layers          unit 03: a layer beside the torch layer it re-implements
batchnorm_mistakes  unit 03: what torch's BatchNorm computes under each likely mistake
hooks           unit 05: hook utilities (activation recorder, gradient norms) and the helpers below share
hook_guards     unit 05: a validating pre-hook, the first module to output NaN or Inf
hooked_models   unit 05: models that use hooks (no hook leak, a kept output)
call_pipeline   unit 06: a function that does what module(...) does (pipeline_probe: its probe and hooks)
export          unit 06: torch.export with a dynamic batch, against eager
saving          unit 06: checkpoints and state_dict loading
state_dict_keys unit 06: why a state_dict does not fit, and functions that rename its keys
training        unit 07: optimizers, training steps, single-sample prediction, counters
fixes           units 05-07: a fix keeps the broken model's function (check_same_function) and its log
state           unit 08: checkpoints across versions, models materialised from meta, parametrized state_dicts
functional      unit 08: torch.func.functional_call (an ensemble from stacked state)
"""
