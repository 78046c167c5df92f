"""Static tests of launch/*.launch.py (ROS launch/launch_ros cannot be installed here).

1. The files parse and define generate_launch_description().
2. They are executed against a minimal stand-in of the launch/launch_ros API, injected into sys.modules for this test
   only: the declared arguments are the documented ones, and the Node actions they produce (for default and
   overridden arguments) name an existing console script, an existing params file keyed for any namespace,
   the right remappings and parameters, and an RViz config that exists and follows the namespace.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = {
    "rgbt_segmentation.launch.py": {"config": "mfnet", "modality": "thermal"},
    "rgbd_segmentation.launch.py": {"config": "nyu", "modality": "depth"},
}
DOCUMENTED_ARGS = {"rgb_topic", "x_topic", "checkpoint", "config", "device", "namespace", "use_sim_time", "rviz"}


# ------------------------------------------------------------------ a tiny stand-in for launch / launch_ros
class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __getattr__(self, name):
        try:
            return self.__dict__["kwargs"][name]
        except KeyError:
            raise AttributeError(name) from None


class FakeLaunchDescription(_Recorder):
    @property
    def entities(self):
        return list(self.args[0]) if self.args else []


class FakeDeclareLaunchArgument(_Recorder):
    @property
    def name(self):
        return self.args[0]


class FakeOpaqueFunction(_Recorder):
    pass


class FakeNode(_Recorder):
    pass


class FakeLaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


class FakeContext:
    def __init__(self, values):
        self.launch_configurations = dict(values)


@pytest.fixture
def fake_launch(monkeypatch):
    launch = types.ModuleType("launch")
    launch.LaunchDescription = FakeLaunchDescription
    actions = types.ModuleType("launch.actions")
    actions.DeclareLaunchArgument = FakeDeclareLaunchArgument
    actions.OpaqueFunction = FakeOpaqueFunction
    subs = types.ModuleType("launch.substitutions")
    subs.LaunchConfiguration = FakeLaunchConfiguration
    launch.actions, launch.substitutions = actions, subs
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = FakeNode
    launch_ros.actions = ros_actions
    for name, mod in {"launch": launch, "launch.actions": actions, "launch.substitutions": subs,
                      "launch_ros": launch_ros, "launch_ros.actions": ros_actions}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    # Check this checkout's files, not an installed copy (ament index / sys.prefix) that may be older.
    import sigma_ros.ros.launch_common as common
    monkeypatch.setattr(common, "share_dir", lambda: str(ROOT))
    return launch


def _load(path: Path):
    spec = importlib.util.spec_from_file_location("launch_under_test_" + path.name.split(".")[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def _run(description, overrides=None):
    """Evaluate the description like `ros2 launch` would: defaults, then overrides, then the OpaqueFunction."""
    declared = [e for e in description.entities if isinstance(e, FakeDeclareLaunchArgument)]
    values = {d.name: d.kwargs["default_value"] for d in declared}
    values.update(overrides or {})
    functions = [e for e in description.entities if isinstance(e, FakeOpaqueFunction)]
    assert len(functions) == 1
    nodes = functions[0].kwargs["function"](FakeContext(values))
    return values, nodes


def _console_scripts():
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    entries = [ast.literal_eval(e) for e in v.elts]
                    return dict(e.replace(" ", "").split("=", 1) for e in entries)
    raise AssertionError("setup.py declares no console_scripts")


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("name", sorted(LAUNCH_FILES))
def test_launch_file_parses_and_defines_entry_point(name):
    tree = ast.parse((ROOT / "launch" / name).read_text(), filename=name)
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs


def test_launch_files_are_installed_by_setup_py():
    text = (ROOT / "setup.py").read_text()
    assert 'glob("launch/*.launch.py")' in text and 'glob("config/*.yaml")' in text and 'glob("config/*.rviz")' in text
    assert {p.name for p in (ROOT / "launch").glob("*.launch.py")} >= set(LAUNCH_FILES)


@pytest.mark.parametrize("name", sorted(LAUNCH_FILES))
def test_launch_declares_documented_arguments(fake_launch, name):
    description = _load(ROOT / "launch" / name)
    declared = [e for e in description.entities if isinstance(e, FakeDeclareLaunchArgument)]
    assert {d.name for d in declared} == DOCUMENTED_ARGS
    for d in declared:
        assert d.kwargs.get("description"), f"{name}: argument {d.name} has no description"
        assert isinstance(d.kwargs.get("default_value"), str)


@pytest.mark.parametrize("name", sorted(LAUNCH_FILES))
def test_launch_defaults_start_the_node_with_existing_files(fake_launch, name):
    expect = LAUNCH_FILES[name]
    values, nodes = _run(_load(ROOT / "launch" / name))
    assert len(nodes) == 1  # rviz defaults to false
    node = nodes[0]
    scripts = _console_scripts()
    assert node.package == "sigma_ros"
    assert node.executable in scripts and scripts[node.executable] == "sigma_ros.ros.node:main"
    module, func = scripts[node.executable].split(":")
    assert importlib.util.find_spec(module) is not None
    assert node.name == "sigma_segmentation" and node.namespace == ""
    params_file, overrides = node.parameters
    params_file = Path(params_file)
    assert params_file == ROOT / "config" / (expect["config"] + ".yaml") and params_file.is_file()
    doc = yaml.safe_load(params_file.read_text())
    assert list(doc) == ["/**"], "params must be keyed /** so they apply under any namespace"
    assert doc["/**"]["ros__parameters"]["modality"] == expect["modality"]
    # The class config is read from the same file the parameters come from.
    assert overrides["config"] == str(params_file)
    assert overrides["device"] == "auto" and overrides["use_sim_time"] is False
    assert "checkpoint" not in overrides  # empty argument: the node reports the missing checkpoint itself
    assert dict(node.remappings) == {"rgb/image": values["rgb_topic"], "x/image": values["x_topic"]}


def test_launch_overrides_reach_the_node(fake_launch, tmp_path):
    ck = tmp_path / "model.pt"
    _, nodes = _run(_load(ROOT / "launch" / "rgbt_segmentation.launch.py"), {
        "rgb_topic": "/flir/rgb", "x_topic": "/flir/thermal", "checkpoint": str(ck), "config": "pst900",
        "device": "cpu", "namespace": "robot1", "use_sim_time": "true", "rviz": "true"})
    node, rviz = nodes
    _, overrides = node.parameters
    assert overrides == {"config": str(ROOT / "config" / "pst900.yaml"), "device": "cpu", "use_sim_time": True,
                         "checkpoint": str(ck)}
    assert node.namespace == "robot1"
    assert dict(node.remappings) == {"rgb/image": "/flir/rgb", "x/image": "/flir/thermal"}
    assert rviz.package == "rviz2" and rviz.parameters == [{"use_sim_time": True}]
    flag, rviz_file = rviz.arguments
    assert flag == "-d"
    text = Path(rviz_file).read_text()
    # Topics follow the namespace; the shipped file is untouched.
    assert "/robot1/sigma_segmentation/overlay" in text and "/robot1/sigma_segmentation/color" in text
    assert "/robot1/sigma_segmentation/" not in (ROOT / "config" / "sigma_ros.rviz").read_text()


def test_launch_config_accepts_a_yaml_path_and_rejects_unknown(fake_launch, tmp_path):
    custom = tmp_path / "my_classes.yaml"
    custom.write_text((ROOT / "config" / "mfnet.yaml").read_text())
    desc = _load(ROOT / "launch" / "rgbt_segmentation.launch.py")
    _, (node,) = _run(desc, {"config": str(custom)})
    assert node.parameters[0] == str(custom) and node.parameters[1]["config"] == str(custom)
    with pytest.raises(RuntimeError, match="neither a built-in name"):
        _run(desc, {"config": "no_such_dataset"})
    with pytest.raises(RuntimeError, match="use_sim_time"):
        _run(desc, {"use_sim_time": "maybe"})


def test_rviz_config_shows_overlay_and_color():
    doc = yaml.safe_load((ROOT / "config" / "sigma_ros.rviz").read_text())
    displays = doc["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"] for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    assert topics == {"/sigma_segmentation/overlay", "/sigma_segmentation/color"}
