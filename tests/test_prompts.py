"""Zero-shot class names and templates (pipeline/data/prompts): every source, its label order, its provenance."""
import json
import string
from pathlib import Path

import pytest

from pipeline import compat

compat.apply()
import open_clip  # noqa: E402
import timm  # noqa: E402
from wilds.datasets.fmow_dataset import categories as FMOW  # noqa: E402

from pipeline.data import digits  # noqa: E402
from pipeline.data.prompts import (  # noqa: E402
    NoClassNamesError,
    article,
    available,
    check_prompts,
    has_prompts,
    load_prompts,
    prompts_for,
    render,
)
from pipeline.data.sources import SOURCES, cifar  # noqa: E402
from pipeline.data.sources import wilds as wilds_source  # noqa: E402
from pipeline.data.sources.breeds import SHIPPED  # noqa: E402

EXPECTED_COUNTS = {"digits": 10, "cifar10": 10, "waterbirds": 2, "camelyon17": 2, "fmow": 62, "iwildcam": 182,
                   "domainnet": 345, "imagenet": 1000, "living17": 17, "entity30": 30, "flowers102": 102,
                   "stanford_cars": 196, "fgvc_aircraft": 100}
# Sources without an official CLIP class/template list: no zero-shot head (the zeroshot stage skips them).
WITHOUT_PROMPTS = {"stanford_dogs", "caltech256", "mit_indoor67", "cub200"}


def test_every_source_has_a_prompt_file_with_its_provenance():
    assert set(available()) == set(SOURCES) - WITHOUT_PROMPTS == set(EXPECTED_COUNTS)
    for source, count in EXPECTED_COUNTS.items():
        p = load_prompts(source)
        assert len(p.names) == count, source
        assert p.provenance["classes"].strip() and p.provenance["templates"].strip(), source
        assert all(name.strip() for name in p.names.values()) and p.templates, source
        for t in p.templates:
            assert {f for _, f, _, _ in string.Formatter().parse(t) if f} <= {"c", "article_c"}, (source, t)
            assert render(t, "x") != t


def test_class_lists_match_the_sources_label_order():
    assert list(load_prompts("cifar10").names) == cifar.CLASSES
    assert list(load_prompts("digits").names) == digits.CLASSES
    assert list(load_prompts("waterbirds").names) == wilds_source.WATERBIRDS[0]
    assert list(load_prompts("camelyon17").names) == wilds_source.CAMELYON_CLASSES
    assert list(load_prompts("fmow").names) == list(FMOW)
    assert list(load_prompts("iwildcam").names) == [str(i) for i in range(182)]   # WILDS label ids
    for task in ("living17", "entity30"):
        shipped = [sc["name"] for sc in json.loads((SHIPPED / f"{task}.json").read_text())["superclasses"]]
        assert list(load_prompts(task).names) == shipped


def test_transfer_targets_name_their_prepared_classes():
    """Flowers-102 labels '1'..'102' in order; Cars and Aircraft ids are the class names themselves."""
    names, templates = prompts_for("flowers102", {}, ["1", "2", "102"])
    assert names == ["pink primrose", "hard-leaved pocket orchid", "blackberry lily"]
    assert templates == ["a photo of a {c}, a type of flower."]
    assert prompts_for("fgvc_aircraft", {}, ["707-320", "F/A-18"])[0] == ["707-320", "F/A-18"]
    assert prompts_for("stanford_cars", {}, ["AM General Hummer SUV 2000"])[0] == ["AM General Hummer SUV 2000"]
    with pytest.raises(NoClassNamesError, match="no name"):
        prompts_for("stanford_cars", {}, ["Tesla Model S 2012"])
    assert not any(has_prompts(s) for s in WITHOUT_PROMPTS)


def test_imagenet_lists_are_open_clips_and_timms():
    p = load_prompts("imagenet")
    info = Path(timm.data.__path__[0]) / "_info"
    wnids = (info / "imagenet_synsets.txt").read_text().split()
    assert list(p.names) == wnids == sorted(wnids)   # the source sorts the wnid folders: label = index
    assert list(p.names.values()) == list(open_clip.IMAGENET_CLASSNAMES)
    assert [render(t, "X") for t in p.templates] == [t("X") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    assert len(p.templates) == 80
    for variant, letter in (("imagenet_r", "r"), ("imagenet_a", "a")):
        idx = p.extra["class_subsets"][variant]
        assert len(idx) == len(set(idx)) == 200 and idx == sorted(idx) and idx[0] >= 0 and idx[-1] < 1000
        assert [wnids[i] for i in idx] == (info / f"imagenet_{letter}_synsets.txt").read_text().split()


def test_domainnet_names_are_the_folder_names_with_spaces():
    import ast

    import wilds

    src = (Path(wilds.__path__[0]) / "datasets" / "domainnet_dataset.py").read_text()
    official = next(ast.literal_eval(n.value) for n in ast.parse(src).body if isinstance(n, ast.Assign)
                    and getattr(n.targets[0], "id", "") == "DOMAIN_NET_CATEGORIES")
    p = load_prompts("domainnet")
    assert list(p.names) == official
    assert all(name == folder.replace("_", " ") for folder, name in p.names.items())
    names, _ = prompts_for("domainnet", {"classes": ["tiger", "The_Eiffel_Tower", "aircraft_carrier"]})
    assert names == ["tiger", "The Eiffel Tower", "aircraft carrier"]   # a subset keeps its given order


def test_wise_ft_fmow_templates_render_with_articles():
    _, templates = prompts_for("fmow", {})
    assert render(templates[2], "airport_hangar") == "satellite photo of an airport hangar."
    assert render(templates[0], "airport_hangar") == "satellite photo of a airport_hangar."   # WiSE-FT keeps it raw
    assert article("barn") == "a barn" and len(templates) == 16


def test_label_order_follows_the_prepared_classes():
    names, templates = prompts_for("iwildcam", {}, classes=["0", "1", "5"])
    assert names == ["empty", "white-lipped peccary", "south american tapir"] and len(templates) == 2
    names, _ = prompts_for("camelyon17", {}, classes=["normal", "tumor"])
    assert names == ["lymph node", "lymph node containing metastatic tumor tissue"]
    assert prompts_for("cifar10", {})[0] == cifar.CLASSES


def test_imagenet_order_is_the_sorted_wnid_folders(tmp_path):
    for wnid in ("n01484850", "n01440764", "n01443537"):
        (tmp_path / "imagenet" / "train" / wnid).mkdir(parents=True)
    names, _ = prompts_for("imagenet", {"root": str(tmp_path)})
    assert names == ["tench", "goldfish", "great white shark"]
    # Prepared human names (LOC_synset_mapping.txt) are resolved through the same folders.
    names, _ = prompts_for("imagenet", {"root": str(tmp_path)}, classes=["tench, Tinca tinca", "goldfish", "shark"])
    assert names == ["tench", "goldfish", "great white shark"]
    assert prompts_for("imagenet", {"root": str(tmp_path / "none")})[0] == list(open_clip.IMAGENET_CLASSNAMES)
    assert prompts_for("imagenet", {}, classes=["n01443537"])[0] == ["goldfish"]


def test_breeds_order_follows_its_class_list(tmp_path):
    names, templates = prompts_for("living17", {"root": str(tmp_path)})
    assert names[3] == "snake" and names[8] == "dog" and len(names) == 17 and len(templates) == 80
    override = {"name": "living17", "superclasses": [
        {"name": "monkey", "source": ["n1"], "target": ["n2"]},
        {"name": "wild boar, boar, Sus scrofa", "source": ["n3"], "target": ["n4"]}]}
    (tmp_path / "breeds").mkdir()
    (tmp_path / "breeds" / "living17.json").write_text(json.dumps(override))
    assert prompts_for("living17", {"root": str(tmp_path)})[0] == ["monkey", "wild boar"]


def test_missing_class_names_are_one_line_errors_naming_the_dataset():
    with pytest.raises(NoClassNamesError) as err:
        prompts_for("mystery", {}, dataset="my_data")
    assert "\n" not in str(err.value) and "'mystery'" in str(err.value)
    with pytest.raises(NoClassNamesError) as err:
        check_prompts("my_data", {"source": "mystery"})
    assert "\n" not in str(err.value) and "datasets.my_data.source" in str(err.value)
    check_prompts("wb", {"source": "waterbirds"})
    with pytest.raises(NoClassNamesError, match=r"^datasets.cam: 1 class\(es\) have no name") as err:
        prompts_for("camelyon17", {}, classes=["normal", "metastasis"], dataset="cam")
    assert "\n" not in str(err.value)
    with pytest.raises(NoClassNamesError, match="datasets.inet: the 2 prepared classes are not wnids"):
        prompts_for("imagenet", {"root": "/nonexistent"}, classes=["a", "b"], dataset="inet")
