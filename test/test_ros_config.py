"""config/*.yaml: ROS params files for the node that are also class configs, in agreement with classes.DATASETS.

The files are checked three ways: as YAML (structure, keys), through sigma_ros.classes.load_class_config (class
names, palette, modality, preprocessing equal the built-in DATASETS entry), and through the real rcl params-file
parser (rclpy context initialised with --params-file), which is what the node sees at start-up.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from sigma_ros.classes import DATASETS, load_class_config
from sigma_ros.ros import params as node_params

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_CLASSES = {"mfnet": 9, "pst900": 5, "nyu": 40, "sunrgbd": 37}
# Keys that are class-config data rather than node parameters (the node does not declare them; rclpy ignores them).
CLASS_KEYS = {"dataset", "class_names", "palette", "preprocessing"}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_config_matches_builtin_dataset(name):
    path = ROOT / "config" / f"{name}.yaml"
    loaded = load_class_config(str(path))
    builtin = DATASETS[name]
    assert loaded.num_classes == EXPECTED_CLASSES[name] == builtin.num_classes
    assert loaded.class_names == builtin.class_names
    np.testing.assert_array_equal(loaded.palette, builtin.palette)
    assert loaded.modality == builtin.modality
    assert loaded.preprocessing == builtin.preprocessing
    assert loaded.name == name


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_config_is_a_valid_node_params_file(name):
    doc = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
    assert list(doc) == ["/**"] and list(doc["/**"]) == ["ros__parameters"]
    flat = _flatten(doc["/**"]["ros__parameters"])
    unknown = set(flat) - set(node_params.SPECS) - CLASS_KEYS
    assert not unknown, f"{name}.yaml sets parameters the node does not declare: {sorted(unknown)}"
    values = node_params.defaults()
    values.update({k: v for k, v in flat.items() if k in node_params.SPECS})
    values["checkpoint"] = "/some/model.pt"
    settings = node_params.validate(values)
    assert settings.modality == DATASETS[name].modality
    # ROS parameter arrays must be flat and of one type.
    assert all(isinstance(v, int) for v in flat["palette"]) and len(flat["palette"]) == 3 * EXPECTED_CLASSES[name]
    assert all(isinstance(v, str) for v in flat["class_names"])


def test_configs_parse_with_the_rcl_params_parser():
    rclpy = pytest.importorskip("rclpy")
    from rclpy.node import Node

    for name in sorted(EXPECTED_CLASSES):
        path = ROOT / "config" / f"{name}.yaml"
        context = rclpy.Context()
        rclpy.init(args=["--ros-args", "--params-file", str(path)], context=context)
        try:
            node = Node("sigma_segmentation", namespace="/robot7", context=context,
                        automatically_declare_parameters_from_overrides=True)
            got = {n: node.get_parameter(n).value
                   for n in ("class_names", "palette", "modality", "sync.slop", "sync.queue_size")}
            node.destroy_node()
        finally:
            rclpy.shutdown(context=context)
        builtin = DATASETS[name]
        assert list(got["class_names"]) == builtin.class_names
        assert list(got["palette"]) == builtin.palette.reshape(-1).tolist()
        assert got["modality"] == builtin.modality and got["sync.slop"] == 0.05 and got["sync.queue_size"] == 10
