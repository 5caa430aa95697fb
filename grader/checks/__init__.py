"""The checks students call, one module per topic; `grader` exports them.

runner       how every check runs: device matrix, fresh model, seeded inputs, verdict line
report       the verdict line, CheckFailed, keeping warnings off stderr
diagnose     what is wrong with a model, in the student's terms
devices      the device matrix (cpu, plus cuda when present; GRADER_DEVICES)
models       trainable count, gradient flow, eval behaviour, learning, device transfer (units 01, 04, 07)
counting     counting and finding functions students write (units 01, 03, 04)
toy_module   unit 02: the checks that hold a toy module up against nn.Module; train/eval, apply, forward
toy_reach    unit 02: building the toy, calling its methods, finding its parts through torch's names
toy_registry unit 02, stages 1-2: the three dicts, the names the walks yield
toy_state    unit 02, stages 3, 5, 6: state_dict, load_state_dict, to(dtype), zero_grad
layers       unit 03: a layer beside the torch layer it re-implements
hooks        unit 05: hook utilities
export       unit 06: the call pipeline and torch.export
saving       unit 06: checkpoints and state_dict loading
training     unit 07: optimizers, training steps, prediction, counters
"""
