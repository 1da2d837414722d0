"""Hostile and unlucky params files: each is refused by ``validate`` in one line naming the key, before any job."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ParamsError, load_params, validate
from pipeline.stages.registry import STAGES

REPO = Path(__file__).resolve().parent.parent
TEXT = (REPO / "params.yaml").read_text()


def refusal(tmp_path: Path, text: str) -> str:
    """The one line validation gives a params file holding ``text``, without the file's name."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg.removeprefix(f"{path}: ")


def cli_refusal(tmp_path: Path, text: str) -> str:
    """The same through ``python -m pipeline validate``, as the Snakefile and DVC's check stage run it."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    res = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(path)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), res.stderr
    return lines[0].removeprefix(f"error: {path}: ")


def edited(old: str, new: str) -> str:
    assert old in TEXT
    return TEXT.replace(old, new, 1)


def test_duplicate_keys_are_refused_not_overwritten(tmp_path):
    """The bug: a second `lr` (typed 3.0e+4 for 3.0e-4) silently won."""
    text = edited("    lr: 3.0e-4\n", "    lr: 3.0e-4\n    lr: 3.0e+4\n")
    assert yaml.safe_load(text)["methods"]["ft_adamw"]["lr"] == 30000.0   # what plain YAML makes of it
    line = text.splitlines().index("    lr: 3.0e+4") + 1
    assert cli_refusal(tmp_path, text) == (f"line {line}: methods.ft_adamw.lr: duplicate key (first on line "
                                           f"{line - 1}); YAML would keep only the last one")
    twice = TEXT + "finetune:\n  epochs: 3\n"   # a whole section given twice
    assert refusal(tmp_path, twice).endswith("finetune: duplicate key (first on line "
                                             f"{TEXT.splitlines().index('finetune:') + 1}); YAML would keep only the "
                                             "last one")


@pytest.mark.parametrize("old, new, message", [
    ("  epochs: 2\n", "  epochs: 2.0\n", "finetune.epochs: 2.0 is not an integer (write 2)"),
    ("  batch_size: 32\n", "  batch_size: 32.0\n", "finetune.batch_size: 32.0 is not an integer (write 32)"),
    ("  seeds: [0, 1, 2]", "  seeds: [0, 1, 2.0]", "experiment.seeds[2]: 2.0 is not an integer (write 2)"),
    ("ood_per_class: 50, seed: 0}", "ood_per_class: 50, seed: 2.0}",
     "datasets.digits.build.seed: 2.0 is not an integer (write 2)"),
    ("    freeze: embed", "    freeze: 2.0",
     "methods.freeze_embed.freeze: 2.0 fits none of the allowed forms (2.0 is not one of none, patch_embed, embed; "
     "2.0 is not an integer (write 2))"),
])
def test_float_valued_integers_are_refused(tmp_path, old, new, message):
    assert refusal(tmp_path, edited(old, new)) == message


def test_names_that_cannot_be_file_names(tmp_path):
    """The bug: a method name too long for a file name validated, trained for a minute, then failed."""
    long = "m" * 300
    text = edited("  ft_adamw:           #", f"  {long}:  #").replace("methods: [ft_adamw,", f"methods: [{long},")
    assert refusal(tmp_path, text) == (f"methods.{long[:20]}...: a name of 300 characters; at most 64 (it becomes a "
                                       "folder and a file name)")
    assert refusal(tmp_path, edited("methods: [ft_adamw,", f"methods: [{long},")) == \
        "experiment.methods[0]: 300 characters, at most 64"
    assert refusal(tmp_path, edited("  lite0:\n", "  lite-0:\n")) == \
        "models.lite-0: invalid name: use letters, digits and _, starting with a letter (it becomes a folder name)"
    weights = "data/" + "w" * 300 + ".pth"
    assert refusal(tmp_path, edited("weights: packaged:efficientnet_lite0", f"weights: {weights}")) == \
        f"models.lite0.weights: '{'w' * 20}'... is 304 bytes long; a file name has at most 255"


@pytest.mark.parametrize("old, new, message", [
    ("    source: digits\n", "    source: digits\n    root: ~/x\n",
     "datasets.digits.root: '~/x' starts with ~, which nothing expands (a folder named ~ would appear); write the "
     "full path"),
    ("weights: packaged:efficientnet_lite0", "weights: ~/ckpt/lite0.pth",
     "models.lite0.weights: '~/ckpt/lite0.pth' starts with ~, which nothing expands (a folder named ~ would appear); "
     "write the full path"),
    ("    source: digits\n", "    source: digits\n    root: $SCRATCH/digits\n",
     "datasets.digits.root: '$SCRATCH/digits' holds a variable ($...), which nothing expands; write the path itself"),
    ("  baseline: ft_adamw", "  baseline: ft_adamw\n  reference: [~/ref.yaml]",
     "report.reference[0]: '~/ref.yaml' starts with ~, which nothing expands (a folder named ~ would appear); write "
     "the full path"),
])
def test_unexpanded_paths_are_refused(tmp_path, old, new, message):
    """The bug: a root of ~/x created a folder named ~ inside the repository."""
    assert refusal(tmp_path, edited(old, new)) == message
    assert not (tmp_path / "~").exists() and not (REPO / "~").exists()


BOMB = """\
  a: &a [x, x, x, x, x, x, x, x, x, x]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_alias_bombs_and_recursive_aliases_are_refused(tmp_path):
    """The bug: a YAML alias bomb (1e9 values from 9 lines) hung the planner and exhausted memory in validate."""
    text = TEXT + "bomb:\n" + BOMB   # refused while reading, before the schema sees its key
    line = text.splitlines().index("  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]") + 1
    assert cli_refusal(tmp_path, text) == (f"line {line}: bomb.f: expands to 1,111,111 values through YAML aliases "
                                           "(more than 200,000: an alias bomb?)")
    assert refusal(tmp_path, "a: &a [1, *a]\n") == "line 1: a[1]: an alias refers to a node that contains it (a " \
                                                   "recursive structure)"
    assert refusal(tmp_path, "[" * 5000 + "]" * 5000) == "nested deeper than 50 levels"


def test_yaml_slips_are_named(tmp_path):
    assert refusal(tmp_path, edited("    lr: 3.0e-4\n", "    lr: 3e-4\n")) == \
        "methods.ft_adamw.lr: '3e-4' is text, not a number (write it with a dot: 1.0e-4, not 1e-4)"
    assert refusal(tmp_path, edited("  epochs: 2\n", "  epochs: .inf\n")) == \
        "finetune.epochs: inf is not a finite number"
    line = TEXT.splitlines().index("evaluate:") + 2
    assert refusal(tmp_path, edited("evaluate:\n  batch_size: 256", "evaluate:\n  yes: 256")) == \
        f"line {line}: evaluate.yes: a key must be text, but YAML reads this one as bool (quote it)"
    assert refusal(tmp_path, "") == ("empty: a params file is a mapping of sections (experiment, datasets, models, "
                                     "features, linear_probe, finetune, methods, wise_ft, evaluate, report)")
    (tmp_path / "latin1.yaml").write_bytes(b"title: caf\xe9\n")
    with pytest.raises(ParamsError, match=r"latin1.yaml: byte 10: not UTF-8 text$"):
        load_params(tmp_path / "latin1.yaml")


def _paths(node, path=()):
    yield path
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in children:
        yield from _paths(v, (*path, k))


def _dotted(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def test_every_wrong_shape_is_one_line_naming_the_key():
    """Each value of params.yaml replaced by a wrong shape (null, a list, a mapping, text, a float, a bool): never a
    traceback, in validation or in planning the jobs; a refusal is one line naming that key (or what refers to it)."""
    base = yaml.safe_load(TEXT)
    refused = 0
    for path in list(_paths(base))[1:]:
        for bad in (None, [], {"x": 1}, "text", 1.5):
            cfg = copy.deepcopy(base)
            parent = cfg
            for p in path[:-1]:
                parent = parent[p]
            parent[path[-1]] = bad
            try:
                validate(cfg)
            except ParamsError as e:
                refused += 1
                msg = str(e)
                key = msg.split(": ")[1]
                assert "\n" not in msg and (key.startswith(_dotted(path)) or _dotted(path).startswith(key)
                                            or key.startswith("experiment.")), (path, bad, msg)
            else:
                for st in STAGES:
                    st.jobs(cfg)
    assert refused > 500
