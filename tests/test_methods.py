"""The method registry: one entry per part; the schema, defaults, factory and report agree with it.

Also the two parts added through it: the embedding at a reduced learning rate (the freeze-embed
paper's ablation) and layer-wise learning-rate decay (timm's groups).
"""
import copy
import importlib
import inspect

import jsonschema
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO

from pipeline import compat
from pipeline.config import ParamsError, validate
from pipeline.config.schema import SCHEMA_PATH, full_schema
from pipeline.config.settings import TRAIN_KEYS, default_settings, method_settings, sweepable
from pipeline.methods import registry
from pipeline.methods.assemble import assemble
from pipeline.methods.registry import COMPONENTS, INITS, KEYS, OPTIMIZERS

compat.apply()
import timm  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402

API = {"optimizer": ["build"], "init": ["init_head", "pretrained_head"], "regulariser": ["build"],
       "policy": ["apply"]}


@pytest.fixture
def cfg():
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("entry", COMPONENTS, ids=lambda c: f"{c.kind}:{c.name}")
def test_every_entry_is_one_module_with_its_kinds_api(entry):
    module = importlib.import_module(entry.module)
    for fn in API[entry.kind]:
        assert callable(getattr(module, fn, None)), f"{entry.module} lacks {fn}()"
    assert entry.label and entry.doc
    assert set(entry.keys) <= set(KEYS), f"{entry.name} reads keys the registry does not define"
    for name, (stage, output) in entry.inputs.items():
        from pipeline.stages.registry import STAGES_BY_NAME

        assert output in STAGES_BY_NAME[stage].outputs, (entry.name, name)
    if entry.kind == "optimizer" and entry.layer_columns:
        assert callable(module.layer_stats)


def test_every_key_has_an_owner_a_valid_default_and_no_clash_with_the_loop_keys():
    owned = {k for c in COMPONENTS for k in c.keys}
    assert owned == set(KEYS)
    assert not set(KEYS) & set(TRAIN_KEYS)
    for name, key in {**KEYS, **TRAIN_KEYS}.items():
        if key.default is not None:
            jsonschema.validate(key.default, key.schema)
        assert key.doc, name


def test_the_schema_is_completed_from_the_registry():
    raw = yaml.safe_load(SCHEMA_PATH.read_text())
    assert raw["properties"]["methods"]["additionalProperties"]["properties"]["optimizer"] == {"enum": []}
    method = full_schema()["properties"]["methods"]["additionalProperties"]["properties"]
    assert method["init"]["enum"] == list(INITS) == ["random", "linear_default", "lp", "zeroshot"]
    assert method["optimizer"]["enum"] == list(OPTIMIZERS)
    assert {k: method[k] for k in KEYS} == {k: v.schema for k, v in KEYS.items()}
    assert set(method["grid"]["properties"]) == {"lr", "points", *sweepable()}   # points: a list of named runs
    assert full_schema()["properties"]["finetune"]["properties"] == {k: v.schema for k, v in TRAIN_KEYS.items()}


def test_defaults_come_from_the_registry(cfg):
    settings = method_settings(cfg, "ft_adamw")
    for name, key in KEYS.items():
        if key.default is not None and name not in cfg["methods"]["ft_adamw"]:
            assert settings[name] == key.default, name
    assert default_settings() == {**{k: v.default for k, v in TRAIN_KEYS.items()}, **registry.defaults()}


def test_table_names_come_from_the_registry():
    from pipeline.reporting import tables

    assert "OPTIMIZER_NAMES" not in vars(tables)
    assert registry.label("optimizer", "spd") == "Adam + SPD" and registry.label("optimizer", "novel") == "novel"


def test_keys_of_another_optimizer_are_named(cfg):
    cfg["methods"]["spd"]["weight_decay"] = 0.1
    with pytest.raises(ParamsError, match=r"methods\.spd\.weight_decay: not used by optimizer spd \(only by adamw"):
        validate(cfg)


def test_a_new_part_needs_one_module_and_one_entry(monkeypatch, tmp_path, cfg):
    """Register an optimizer from a module the project has never seen: the schema, the factory and
    the report pick it up; nothing else is edited."""
    (tmp_path / "my_lion.py").write_text(inspect.cleandoc('''
        import torch
        def build(groups, settings, device):
            return torch.optim.SGD(groups, lr=float(settings["lr"]), momentum=0.0)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = registry.Component("optimizer", "lion", "my_lion", "Lion (test)", "a test optimizer")
    monkeypatch.setattr(registry, "COMPONENTS", (*registry.COMPONENTS, entry))
    monkeypatch.setattr(registry, "OPTIMIZERS", {**registry.OPTIMIZERS, "lion": entry})
    import pipeline.config.schema as schema_module
    import pipeline.methods.assemble as assemble_module

    monkeypatch.setattr(schema_module, "OPTIMIZERS", registry.OPTIMIZERS)
    monkeypatch.setattr(assemble_module, "OPTIMIZERS", registry.OPTIMIZERS)
    schema_module._schema.cache_clear()
    try:
        cfg["methods"]["ft_adamw"]["optimizer"] = "lion"
        cfg["methods"]["ft_adamw"].pop("betas", None)
        validate(cfg)
        model = torch.nn.Linear(3, 2)
        method = assemble(model, {**default_settings(), **method_settings(cfg, "ft_adamw")})
        assert isinstance(method.optimizer, torch.optim.SGD) and method.facts["optimizer"] == "lion"
        assert registry.label("optimizer", "lion") == "Lion (test)"
    finally:
        schema_module._schema.cache_clear()


@pytest.mark.parametrize("entry", [c for c in COMPONENTS if c.kind in ("regulariser", "policy")],
                         ids=lambda c: f"{c.kind}:{c.name}")
def test_every_regulariser_and_policy_is_the_identity_at_its_defaults(entry):
    """What lets a run depend only on the parts it switches on (registry.switched_on): at the defaults of
    its keys a part adds no hook, freezes nothing and scales no learning rate."""
    model = vit()
    settings = default_settings()
    assert entry not in registry.switched_on(settings)
    module = entry.load()
    if entry.kind == "regulariser":
        assert module.build(model, settings, ("head.weight", "head.bias")) is None
    else:
        lr_scale: dict[str, float] = {}
        module.apply(model, settings, lr_scale)
        assert all(p.requires_grad for p in model.parameters()) and all(v == 1.0 for v in lr_scale.values())
    # and leaving a default switches it on
    key = entry.keys[0]
    other = {"freeze": "embed"}.get(key, 0.5 if KEYS[key].default != 0.5 else 0.25)
    assert entry in registry.switched_on({**settings, key: other})


def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_vit", pretrained=False, num_classes=3, img_size=32)


def sgd_step(model, **settings) -> dict[str, torch.Tensor]:
    """One plain SGD step (no momentum) on a fixed batch; returns each tensor's change."""
    method = assemble(model, {**default_settings(), "optimizer": "sgd", "lr": 0.1, "momentum": 0.0, **settings})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g)
    F.cross_entropy(model(x), y).backward()
    method.optimizer.step()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}, method


def test_embedding_at_a_reduced_learning_rate():
    base, _ = sgd_step(vit())
    slow, method = sgd_step(vit(), embed_lr_multiplier=0.2)
    embedding = {"patch_embed.proj.weight", "patch_embed.proj.bias"}   # ViT: patch_embed + (empty) norm_pre
    for name, delta in base.items():
        expected = 0.2 * delta if name in embedding else delta
        assert torch.allclose(slow[name], expected, rtol=1e-5, atol=1e-8), name
    assert method.facts["embed_lr_multiplier"] == 0.2
    assert method.facts["embed_lr_params"] == sum(p.numel() for n, p in vit().named_parameters() if n in embedding)
    # frozen tensors are left alone, and the two compose: freeze the patch embedding, slow nothing else
    frozen, method = sgd_step(vit(), embed_lr_multiplier=0.2, freeze="patch_embed")
    assert all(torch.count_nonzero(frozen[n]) == 0 for n in embedding)
    assert method.facts["embed_lr_params"] == 0


def test_layer_decay_uses_timms_groups():
    model = vit()
    method = assemble(model, {**default_settings(), "optimizer": "adamw", "lr": 1e-3, "layer_decay": 0.5})
    ours = {n: g["lr"] for g in method.optimizer.param_groups for n in g["param_names"]}
    # timm's own factory with the same decay, as its scheduler would set each group's lr
    twin = vit()
    names = {id(p): n for n, p in twin.named_parameters()}
    theirs = {names[id(p)]: 1e-3 * g["lr_scale"]
              for g in create_optimizer_v2(twin, "adamw", lr=1e-3, layer_decay=0.5).param_groups for p in g["params"]}
    assert ours.keys() == theirs.keys()
    assert all(ours[n] == pytest.approx(theirs[n]) for n in ours)
    depth = len(model.blocks)
    assert ours["head.weight"] == pytest.approx(1e-3)
    assert ours["patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.5 ** (depth + 1))
    assert method.facts["layer_decay"] == 0.5


def test_the_scheduler_keeps_each_groups_factor():
    from timm.scheduler import CosineLRScheduler

    model = vit()
    method = assemble(model, {**default_settings(), "optimizer": "sgd", "lr": 0.1, "embed_lr_multiplier": 0.2})
    sched = CosineLRScheduler(method.optimizer, t_initial=10, warmup_t=2, warmup_prefix=True, warmup_lr_init=0.0,
                              t_in_epochs=False)
    for step in (1, 3, 7):
        sched.step_update(step)
        lrs = {g["lr_factor"]: g["lr"] for g in method.optimizer.param_groups}
        assert lrs[0.2] == pytest.approx(0.2 * lrs[1.0])


def test_params_accept_the_new_keys(cfg):
    cfg = copy.deepcopy(cfg)
    cfg["methods"]["ft_sgd"]["embed_lr_multiplier"] = 0.2
    cfg["methods"]["ft_adamw"]["grid"] = {"layer_decay": [0.65, 0.75]}
    validate(cfg)
    cfg["methods"]["ft_adamw"]["grid"] = {"layer_decay": [1.5]}
    with pytest.raises(ParamsError, match=r"methods\.ft_adamw\.grid\.layer_decay\[0\]: 1\.5 must be <= 1"):
        validate(cfg)
