"""Unit 06, `__call__` and export: answers students write, graded by tests/answer_lab.py against the visible and
hidden tests."""

from answer_lab import Right, Wrong

PIPELINE_ONLY_FORWARD_GUARDED = '''
def call_module(module, *args, **kwargs):
    """The always_call hooks run only when forward itself raises."""
    for hook_id, hook in (*torch_module._global_forward_pre_hooks.items(), *module._forward_pre_hooks.items()):
        if hook_id in module._forward_pre_hooks_with_kwargs:
            new = hook(module, args, kwargs)
            if new is not None:
                args, kwargs = new
        else:
            new = hook(module, args)
            if new is not None:
                args = new if isinstance(new, tuple) else (new,)
    full, _ = module._get_backward_hooks()
    backward_pre = module._get_backward_pre_hooks()
    bw = BackwardHook(module, full, backward_pre) if (full or backward_pre) else None
    if bw:
        args = bw.setup_input_hook(args)
    try:
        result = module.forward(*args, **kwargs)
    except Exception:
        always = {**torch_module._global_forward_hooks_always_called, **module._forward_hooks_always_called}
        for hook_id, hook in (*torch_module._global_forward_hooks.items(), *module._forward_hooks.items()):
            if hook_id in always:
                try:
                    if hook_id in module._forward_hooks_with_kwargs:
                        hook(module, args, kwargs, None)
                    else:
                        hook(module, args, None)
                except Exception:
                    pass
        raise
    with_kwargs = {**torch_module._global_forward_hooks_with_kwargs, **module._forward_hooks_with_kwargs}
    for hook_id, hook in (*torch_module._global_forward_hooks.items(), *module._forward_hooks.items()):
        new = hook(module, args, kwargs, result) if hook_id in with_kwargs else hook(module, args, result)
        if new is not None:
            result = new
    if bw:
        result = bw.setup_output_hook(result)
    return result
'''

PIPELINE_INNER = '''
def call_module(module, *args, **kwargs):
    """torch's own shape: an inner function, and a set of the always_call hooks that ran."""
    result = None
    called = set()

    def inner():
        nonlocal args, kwargs, result
        pre = module._get_backward_pre_hooks()
        full, _non_full = module._get_backward_hooks()
        pre_hooks = list(torch_module._global_forward_pre_hooks.items()) + list(module._forward_pre_hooks.items())
        for key, hook in pre_hooks:
            if key in module._forward_pre_hooks_with_kwargs:
                out = hook(module, args, kwargs)
                if out is not None:
                    args, kwargs = out
                continue
            out = hook(module, args)
            if out is not None:
                args = out if type(out) is tuple else (out,)
        wiring = None
        if full or pre:
            wiring = BackwardHook(module, full, pre)
            args = wiring.setup_input_hook(args)
        result = module.forward(*args, **kwargs)
        for key, hook in list(torch_module._global_forward_hooks.items()) + list(module._forward_hooks.items()):
            if key in module._forward_hooks_always_called or key in torch_module._global_forward_hooks_always_called:
                called.add(key)
            if key in module._forward_hooks_with_kwargs or key in torch_module._global_forward_hooks_with_kwargs:
                out = hook(module, args, kwargs, result)
            else:
                out = hook(module, args, result)
            result = result if out is None else out
        if wiring is not None:
            result = wiring.setup_output_hook(result)
        return result

    try:
        return inner()
    except Exception:
        for key, hook in torch_module._global_forward_hooks.items():
            if key in torch_module._global_forward_hooks_always_called and key not in called:
                try:
                    out = hook(module, args, result)
                    result = result if out is None else out
                except Exception:
                    continue
        for key, hook in module._forward_hooks.items():
            if key in module._forward_hooks_always_called and key not in called:
                try:
                    if key in module._forward_hooks_with_kwargs:
                        out = hook(module, args, kwargs, result)
                    else:
                        out = hook(module, args, result)
                    result = result if out is None else out
                except Exception:
                    continue
        raise
'''

PIPELINE_CHAIN = '''
import itertools


def call_module(module, *args, **kwargs):
    """itertools.chain over the dicts, a list of the hooks already run, a flag for the wiring."""
    result, done = None, []
    globals_ = torch_module
    try:
        for hook_id, hook in itertools.chain(globals_._global_forward_pre_hooks.items(),
                                             module._forward_pre_hooks.items()):
            if module._forward_pre_hooks_with_kwargs.get(hook_id, False):
                returned = hook(module, args, kwargs)
                if returned is not None:
                    args, kwargs = returned
            else:
                returned = hook(module, args)
                if returned is not None:
                    args = returned if isinstance(returned, tuple) else (returned,)
        full_hooks = module._get_backward_hooks()[0]
        pre_hooks = module._get_backward_pre_hooks()
        wired = bool(full_hooks or pre_hooks)
        if wired:
            backward_hook = BackwardHook(module, full_hooks, pre_hooks)
            args = backward_hook.setup_input_hook(args)
        result = module.forward(*args, **kwargs)
        for hook_id, hook in itertools.chain(globals_._global_forward_hooks.items(), module._forward_hooks.items()):
            done.append(hook_id)
            takes_kwargs = (hook_id in module._forward_hooks_with_kwargs
                            or hook_id in globals_._global_forward_hooks_with_kwargs)
            returned = hook(module, args, kwargs, result) if takes_kwargs else hook(module, args, result)
            if returned is not None:
                result = returned
        if wired:
            result = backward_hook.setup_output_hook(result)
        return result
    except Exception:
        for hook_id, hook in itertools.chain(globals_._global_forward_hooks.items(), module._forward_hooks.items()):
            always = (hook_id in globals_._global_forward_hooks_always_called
                      or hook_id in module._forward_hooks_always_called)
            if not always or hook_id in done:
                continue
            try:
                if hook_id in module._forward_hooks_with_kwargs:
                    returned = hook(module, args, kwargs, result)
                else:
                    returned = hook(module, args, result)
                if returned is not None:
                    result = returned
            except Exception:
                pass
        raise
'''

CHECKPOINT = '''
def save_checkpoint(path, model, optimizer, step):
    SAVE


def load_checkpoint(path, model, optimizer):
    LOAD
'''

SAVE = 'torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, path)'
LOAD = ('checkpoint = torch.load(path, weights_only=True)\n    model.load_state_dict(checkpoint["model"])\n'
        '    optimizer.load_state_dict(checkpoint["optimizer"])\n    return checkpoint["step"]')


def checkpoint(save=SAVE, load=LOAD):
    return CHECKPOINT.replace("SAVE", save).replace("LOAD", load)


def upgrade(body):
    return f"def upgrade_state_dict(state_dict):\n    {body}\n"


CENTRED = '''
class CondCentred(nn.Module):
    """A linear layer whose outputs are centred across the batch; a batch of one is left as it is."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x):
        FORWARD
'''


def centred(forward):
    return CENTRED.replace("FORWARD", forward)


COND = "return torch.cond(x.shape[0] > 1, lambda h: h - h.mean(dim=0, keepdim=True), lambda h: h.clone(), (h,))"

ANSWERS = [
    # --- Part A: call_module --------------------------------------------------------------------------
    Wrong("pipeline_answer", "always_call hooks run again after a hook raised",
          edit=("            if hook_id in always and hook_id not in ran:", "            if hook_id in always:"),
          fails={"test_pipeline_always_call": ["ran global forward hook `global_always` a second time, after forward "
                                               "hook `post_raise`", "skip the ones that already ran"]}),
    Wrong("pipeline_answer", "always_call hooks run only when forward raises", PIPELINE_ONLY_FORWARD_GUARDED,
          fails={"test_pipeline_always_call": ["never ran forward hook `post_always_late`",
                                               "when forward or a hook raises"]}),
    Wrong("pipeline_answer", "forward hooks run before forward",
          edit=("        result = module.forward(*args, **kwargs)\n", "",
                "        if bw:\n            result = bw.setup_output_hook(result)",
                "        result = module.forward(*args, **kwargs)\n"
                "        if bw:\n            result = bw.setup_output_hook(result)"),
          fails={"test_pipeline_forward": ["ran global forward hook `global_post` before forward()",
                                           "call module.forward(*args, **kwargs) once, after every pre-hook"]}),
    Wrong("pipeline_answer", "the module's own pre-hooks skipped",
          edit=("(*torch_module._global_forward_pre_hooks.items(), *module._forward_pre_hooks.items())",
                "torch_module._global_forward_pre_hooks.items()"),
          fails={"test_pipeline_forward": ["never ran pre-hook `pre_first`", "module._forward_pre_hooks"]}),
    Wrong("pipeline_answer", "a single value from a pre-hook not wrapped in a tuple",
          edit=("args = new if isinstance(new, tuple) else (new,)", "args = new"),
          fails={"test_pipeline_forward": ["replaces args with (value,)"]}),
    Wrong("pipeline_answer", "kwargs not passed to forward",
          edit=("result = module.forward(*args, **kwargs)", "result = module.forward(*args)"),
          fails={"test_pipeline_kwargs": ["forward() got other kwargs than torch gives it"]}),
    Wrong("pipeline_answer", "the error swallowed", edit=("        raise\n", "        return result\n"),
          fails={"test_pipeline_always_call": ["forward raised an error, but call_module returned normally",
                                               "re-raise"]}),
    Wrong("pipeline_answer", "no backward wiring",
          edit=("        bw = BackwardHook(module, full, backward_pre) if (full or backward_pre) else None",
                "        bw = None"),
          fails={"test_pipeline_backward": ["never ran global backward pre-hook `global_backward_pre`",
                                            "BackwardHook(module, full, pre)"]}),
    Wrong("pipeline_answer", "delegates to module(...)", '''
def call_module(module, *args, **kwargs):
    return module(*args, **kwargs)
''', fails={"test_pipeline_forward": ["calls module(...) itself"]}),
    Right("pipeline_answer", "torch's own shape: an inner function and a set", PIPELINE_INNER),
    Right("pipeline_answer", "itertools.chain, a list of hooks run, a wiring flag", PIPELINE_CHAIN),

    # --- Part B: save_checkpoint / load_checkpoint ---------------------------------------------------------
    Wrong("checkpoint_answer", "the step saved as a tensor",
          checkpoint(save=SAVE.replace('"step": step', '"step": torch.tensor(step)')),
          fails={"test_checkpoint_round_trip": ["returned tensor(2), a tensor; the step is the int 2", "'step': step"]}),
    Wrong("checkpoint_answer", "the whole model pickled",
          checkpoint(save=SAVE.replace('"model": model.state_dict()', '"model": model'),
                     load=LOAD.replace('model.load_state_dict(checkpoint["model"])',
                                       'model.load_state_dict(checkpoint["model"].state_dict())')),
          fails={"test_checkpoint_round_trip": ["refuses what save_checkpoint wrote",
                                                "the checkpoint holds the model object itself", "add_safe_globals"]}),
    Wrong("checkpoint_answer", "the optimizer not saved",
          checkpoint(save='torch.save({"model": model.state_dict(), "step": step}, path)',
                     load='checkpoint = torch.load(path)\n    model.load_state_dict(checkpoint["model"])\n'
                          '    return checkpoint["step"]'),
          fails={"test_checkpoint_round_trip": ["the restored optimizer has no state",
                                                "optimizer.load_state_dict(checkpoint['optimizer'])"]}),
    Wrong("checkpoint_answer", "weights_only=False", checkpoint(load=LOAD.replace("weights_only=True", "weights_only=False")),
          fails={"test_checkpoint_round_trip": ["calls torch.load(..., weights_only=False)", "arbitrary code"]}),
    Wrong("checkpoint_answer", "a new optimizer built inside load",
          checkpoint(load=LOAD.replace('    optimizer.load_state_dict(checkpoint["optimizer"])',
                                       '    optimizer = torch.optim.Adam(model.parameters())\n'
                                       '    optimizer.load_state_dict(checkpoint["optimizer"])')),
          fails={"test_checkpoint_round_trip": ["the optimizer is not the one saved", "on the optimizer you were given"]}),
    Wrong("checkpoint_answer", "the step hard-coded", checkpoint(load=LOAD.replace('return checkpoint["step"]', 'return 2')),
          fails={"test_checkpoint_round_trip": ["load_checkpoint(...) returned 2; the step saved was 3"]}),
    Wrong("checkpoint_answer", "saves the next step", checkpoint(save=SAVE.replace('"step": step', '"step": step + 1')),
          fails={"test_checkpoint_round_trip": ["returned 3; the step saved was 2"]}),
    Wrong("checkpoint_answer", "parameters only, loaded with strict=False",
          checkpoint(save=SAVE.replace("model.state_dict()", "dict(model.named_parameters())"),
                     load=LOAD.replace('checkpoint["model"])', 'checkpoint["model"], strict=False)')),
          fails={"test_checkpoint_round_trip": ["`1.running_mean` was not restored"]}),
    Wrong("checkpoint_answer", "the step as a float", checkpoint(save=SAVE.replace('"step": step', '"step": float(step)')),
          fails={"test_checkpoint_round_trip": ["returned 2.0, a float; the step is the int 2"]}),
    Right("checkpoint_answer", "a tuple, unpacked; int() on the way back",
          checkpoint(save="torch.save((model.state_dict(), optimizer.state_dict(), int(step)), path)",
                     load="model_state, optimizer_state, step = torch.load(path)\n"
                          "    optimizer.load_state_dict(optimizer_state)\n    model.load_state_dict(model_state)\n"
                          "    return int(step)")),
    Right("checkpoint_answer", "nested dicts, with a file object",
          checkpoint(save='with open(path, "wb") as file:\n'
                          '        torch.save({"state": {"net": model.state_dict(), "opt": optimizer.state_dict()},\n'
                          '                    "meta": {"step": step}}, file)',
                     load='with open(path, "rb") as file:\n        saved = torch.load(file)\n'
                          '    model.load_state_dict(saved["state"]["net"], strict=True)\n'
                          '    optimizer.load_state_dict(saved["state"]["opt"])\n    return saved["meta"]["step"]')),

    # --- Part C: upgrade_state_dict ------------------------------------------------------------------------
    Wrong("rename_answer", "str.replace on the whole key",
          upgrade('return {k.replace("fc", "head"): v for k, v in state_dict.items()}'),
          fails={"test_rename": ["`body.fc.weight` must stay as it is; yours renamed it to `body.head.weight`",
                                 "str.replace changes the name wherever it appears"]}),
    Wrong("rename_answer", "str.lstrip to drop the prefix",
          upgrade('return {("head." + k.lstrip("fc.") if k.startswith("fc.") else k): v for k, v in state_dict.items()}'),
          fails={"test_rename": ["`fc.cls.bias` must become `head.cls.bias`; yours made it `head.ls.bias`",
                                 "str.lstrip(chars)", "key.removeprefix(prefix)"]}),
    Wrong("rename_answer", "renames in place and returns the same dict", upgrade(
        'for key in [k for k in state_dict if k.startswith("fc.")]:\n'
        '        state_dict["head." + key[3:]] = state_dict.pop(key)\n    return state_dict'),
          fails={"test_rename": ["upgrade_state_dict changed the state_dict it was given", "`fc.weight` was removed",
                                 "build and return a new dict"]}),
    Wrong("rename_answer", "prefix tested without the dot",
          upgrade('return {("head" + k[2:] if k.startswith("fc") else k): v for k, v in state_dict.items()}'),
          fails={"test_rename": ["`fcx.weight` must stay as it is; yours renamed it to `headx.weight`",
                                 "dot included"]}),
    Wrong("rename_answer", "str.replace of 'fc.' anywhere",
          upgrade('return {k.replace("fc.", "head."): v for k, v in state_dict.items()}'),
          fails={"test_rename": ["`body.fc.weight` must stay as it is", "str.replace"]}),
    Wrong("rename_answer", "keeps the old keys as well", upgrade(
        'new = dict(state_dict)\n    new.update({"head." + k[3:]: v for k, v in state_dict.items() '
        'if k.startswith("fc.")})\n    return new'),
          fails={"test_rename": ["unexpected in the checkpoint", "strict=True"]}),
    Wrong("rename_answer", "returns a list of pairs",
          upgrade('return [(("head." + k[3:]) if k.startswith("fc.") else k, v) for k, v in state_dict.items()]'),
          fails={"test_rename": ["got list, not a state_dict"]}),
    Wrong("rename_answer", "casts every value to float", upgrade(
        'return {("head." + k[3:] if k.startswith("fc.") else k): v.float() for k, v in state_dict.items()}'),
          fails={"test_rename": ["holds another value: a tensor of dtype float32", "keep every value as it is"]}),
    Right("rename_answer", "split on the first dot", '''
def upgrade_state_dict(state_dict):
    upgraded = {}
    for key, value in state_dict.items():
        first, dot, rest = key.partition(".")
        upgraded["head" + dot + rest if first == "fc" and dot else key] = value
    return upgraded
'''),
    Right("rename_answer", "a regular expression anchored at the start",
          'import re\n\n\n' + upgrade('return {re.sub(r"^fc\\.", "head.", k): v for k, v in state_dict.items()}')),
    Right("rename_answer", "removeprefix into an OrderedDict", '''
import collections


def upgrade_state_dict(state_dict):
    return collections.OrderedDict(
        ("head." + key.removeprefix("fc.") if key.startswith("fc.") else key, value)
        for key, value in state_dict.items())
'''),

    # --- Part D: CondCentred -------------------------------------------------------------------------------
    Wrong("export_answer", "the Python if kept",
          centred("h = self.fc(x)\n        if x.shape[0] > 1:\n            h = h - h.mean(dim=0, keepdim=True)\n"
                  "        return h"),
          fails={"test_cond_centred": ["the exported program disagrees with eager CondCentred", "torch.cond"]}),
    Wrong("export_answer", "len(x) as the predicate", centred("h = self.fc(x)\n        " + COND.replace("x.shape[0]", "len(x)")),
          fails={"test_cond_centred": ["fixed the batch size to 4", "not len(x)"]}),
    Wrong("export_answer", "the false branch returns its input",
          centred("h = self.fc(x)\n        " + COND.replace("lambda h: h.clone()", "lambda h: h")),
          fails={"test_cond_centred": ["torch.cond refused a branch that returns its input", "h.clone()"]}),
    Wrong("export_answer", "always centred", centred("h = self.fc(x)\n        return h - h.mean(dim=0, keepdim=True)"),
          fails={"test_cond_centred": ["your model's eval-mode output differs from BatchCentred's"]}),
    Wrong("export_answer", "the linear layer's output detached",
          centred("h = self.fc(x).detach()\n        " + COND),
          fails={"test_cond_centred": ["your output carries no autograd graph", "`.detach()`"]}),
    Wrong("export_answer", "the predicate off by one", centred("h = self.fc(x)\n        " + COND.replace("> 1", "> 2")),
          fails={"test_cond_centred": ["your train-mode `output` differs from the exercise's"]}),
    Wrong("export_answer", "fc called through .forward()", centred("h = self.fc.forward(x)\n        " + COND),
          fails={"test_cond_centred": ["`fc` (nn.Linear): its parameters are in the output's graph, but `fc(...)` "
                                       "was never called"]}),
    Wrong("export_answer", "centred over the features",
          centred("h = self.fc(x)\n        " + COND.replace("h.mean(dim=0, keepdim=True)", "h.mean(dim=1, keepdim=True)")),
          fails={"test_cond_centred": ["your model's eval-mode output differs from BatchCentred's"]}),
    Right("export_answer", "the layer inside the branches",
          centred("return torch.cond(x.shape[0] > 1, lambda x: self.fc(x) - self.fc(x).mean(0, keepdim=True),\n"
                  "                          lambda x: self.fc(x), (x,))")),
    Right("export_answer", "methods as branches, keyword arguments", '''
class CondCentred(nn.Module):
    """A linear layer whose outputs are centred across the batch; a batch of one is left as it is."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)

    @staticmethod
    def _centre(h):
        return h - h.mean(0)

    @staticmethod
    def _keep(h):
        return h * 1

    def forward(self, x):
        h = self.fc(x)
        return torch.cond(pred=x.size(0) >= 2, true_fn=self._centre, false_fn=self._keep, operands=[h])
'''),
]
