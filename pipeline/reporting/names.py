"""Human names of the report's keys, in one place: quantities, metrics, splits, domains, datasets.

Methods have theirs in ``report.labels`` (:func:`pipeline.reporting.aggregate.row_label`); everything
else a figure's axis, a table's column head or the claims' prose shows goes through this table, so
``ood_acc`` reads "OOD accuracy (%)" and ``mnist_m`` "MNIST-M" everywhere. A key the table does not
know is shown as it is (a user's own domain or dataset name).
"""
from __future__ import annotations

SIDES = {"id": "ID", "ood": "OOD"}
# Metrics of the tidy rows (pipeline.evaluation.metrics) and the official WILDS ones.
METRICS = {"acc": "accuracy", "ece": "calibration error (ECE)", "acc_wg": "worst-group accuracy",
           "adj_acc_avg": "group-weighted accuracy", "acc_avg": "accuracy", "acc_worst_region": "worst-region accuracy",
           "acc_worst_year": "worst-year accuracy", "F1-macro_all": "macro F1"}
# Quantities of the summary that are not <side>_<metric>[/<domain>].
OTHER_QUANTITIES = {"er": "effective robustness (points)", "alpha": "WiSE-FT mixing weight α"}
SPLITS = {"train": "training", "id_val": "ID validation", "id_test": "ID test", "ood_val": "OOD validation",
          "ood_test": "OOD test"}
DOMAINS = {"all": "all", "digits": "MNIST", "mnist": "MNIST", "mnist_m": "MNIST-M",
           "sklearn_digits": "scikit-learn digits", "stl10": "STL-10", "cifar10_1": "CIFAR-10.1",
           "imagenet_v2": "ImageNetV2", "imagenet_r": "ImageNet-R", "imagenet_sketch": "ImageNet-Sketch",
           "imagenet_a": "ImageNet-A", "clipart": "Clipart", "infograph": "Infograph", "painting": "Painting",
           "quickdraw": "Quickdraw", "real": "Real", "sketch": "Sketch"}
DATASETS = {"digits": "Digits", "waterbirds": "Waterbirds", "camelyon17": "Camelyon17", "fmow": "FMoW",
            "iwildcam": "iWildCam", "domainnet": "DomainNet", "cifar10": "CIFAR-10", "imagenet": "ImageNet",
            "living17": "Living-17", "entity30": "Entity-30", "stanford_dogs": "Stanford Dogs",
            "caltech256": "Caltech-256", "mit_indoor67": "MIT Indoor-67", "cub200": "CUB-200",
            "stanford_cars": "Stanford Cars", "fgvc_aircraft": "FGVC Aircraft", "flowers102": "Flowers-102"}
PERCENT_METRICS = {"acc", "acc_wg", "adj_acc_avg", "acc_avg", "acc_worst_region", "acc_worst_year"}


def domain(name: str) -> str:
    return DOMAINS.get(name, name)


def split(name: str) -> str:
    return SPLITS.get(name, name)


def dataset(name: str) -> str:
    return DATASETS.get(name, name)


def pair(dataset_name: str, model: str) -> str:
    """A panel's title: ``Digits / lite0``."""
    return f"{dataset(dataset_name)} / {model}" if model else dataset(dataset_name)


def quantity(q: str, unit: bool = True) -> str:
    """``ood_acc`` -> "OOD accuracy (%)", ``ood_acc/mnist_m`` -> "OOD accuracy on MNIST-M (%)",
    ``id_ece`` -> "ID calibration error (ECE)"; ``unit=False`` leaves out the "(%)"."""
    if q in OTHER_QUANTITIES:
        return OTHER_QUANTITIES[q]
    side, _, rest = q.partition("_")
    if side not in SIDES or not rest:
        return q
    metric, _, dom = rest.partition("/")
    text = f"{SIDES[side]} {METRICS.get(metric, metric)}"
    if dom:
        text += f" on {domain(dom)}"
    return text + (" (%)" if unit and metric in PERCENT_METRICS else "")
