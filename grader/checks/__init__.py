"""The checks students call, one module per topic; `grader` exports them.

runner      how every check runs: device matrix, fresh model, seeded inputs, verdict line
report      the verdict line, CheckFailed, keeping warnings off stderr
diagnose    what is wrong with a model, in the student's terms
devices     the device matrix (cpu, plus cuda when present; GRADER_DEVICES)
models      trainable count, gradient flow, eval behaviour, learning, device transfer (units 01, 04, 07)
counting    counting and finding functions students write (units 01, 04)
toy_module  unit 02: a toy module beside nn.Module on mirrored trees
layers      unit 03: a layer beside the torch layer it re-implements
hooks       unit 05: hook utilities
export      unit 06: the call pipeline and torch.export
saving      unit 06: checkpoints and state_dict loading
training    unit 07: optimizers, training steps, prediction, counters
state       unit 08: checkpoints across versions, parametrized state as plain tensors, models built on meta
functional  unit 08: a model's tensors as inputs (functional_call over stacked ensembles)
"""
