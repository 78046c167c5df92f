"""What the two launch files share: their arguments and the node/RViz actions they start.

``launch/rgbt_segmentation.launch.py`` and ``launch/rgbd_segmentation.launch.py`` differ only in defaults (topics,
class config, modality), so both call :func:`generate` here. ``launch``/``launch_ros`` are imported inside the
functions: this module (and its argument table) stays importable where ROS launch is not installed.
"""
from __future__ import annotations

import os
import sys
import tempfile
from typing import Dict, List, Tuple

PACKAGE = "sigma_ros"
EXECUTABLE = "sigma_segmentation"
NODE_NAME = "sigma_segmentation"
RVIZ_CONFIG = "sigma_ros.rviz"
# Built-in class configs shipped in config/ (name -> file); `config:=mfnet` is short for the file's path.
BUILTIN_CONFIGS = ("mfnet", "pst900", "nyu", "sunrgbd")

# (name, description); defaults come from the calling launch file.
ARGUMENTS: List[Tuple[str, str]] = [
    ("rgb_topic", "RGB image topic (sensor_msgs/Image), remapped onto the node's rgb/image"),
    ("x_topic", "thermal or depth image topic (sensor_msgs/Image), remapped onto the node's x/image"),
    ("checkpoint", "path to the Sigma checkpoint (.pt); required"),
    ("config", "ROS params / class config YAML: a path, or a built-in name (mfnet, pst900, nyu, sunrgbd)"),
    ("device", "auto | cuda | cpu"),
    ("namespace", "namespace for the node (outputs appear under /<namespace>/sigma_segmentation/...)"),
    ("use_sim_time", "use /clock (true when playing a bag with --clock)"),
    ("rviz", "also start RViz showing the overlay and colour images"),
]


def share_dir() -> str:
    """The installed share/sigma_ros directory, or the source tree when running from a checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return get_package_share_directory(PACKAGE)
    except Exception:  # not installed through colcon/ament
        pass
    prefix_share = os.path.join(sys.prefix, "share", PACKAGE)  # `pip install .` puts data_files under the prefix
    if os.path.isdir(os.path.join(prefix_share, "config")):
        return prefix_share
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # source checkout


def resolve_config(value: str, share: str) -> str:
    """A built-in name -> share/config/<name>.yaml; a path is returned as an absolute path. Must exist."""
    value = value.strip()
    path = os.path.join(share, "config", value + ".yaml") if value in BUILTIN_CONFIGS else os.path.expanduser(value)
    if not os.path.isfile(path):
        raise RuntimeError(f"sigma_ros launch: config {value!r} is neither a built-in name "
                           f"({', '.join(BUILTIN_CONFIGS)}) nor an existing YAML file (looked for {path})")
    return os.path.abspath(path)


def _as_bool(text: str, name: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "yes", "on"):
        return True
    if t in ("false", "0", "no", "off", ""):
        return False
    raise RuntimeError(f"sigma_ros launch: argument {name} must be true or false, got {text!r}")


def node_topic_prefix(namespace: str) -> str:
    """Absolute prefix of the node's private topics, e.g. '/robot1/sigma_segmentation'."""
    ns = namespace.strip("/")
    return "/" + "/".join(p for p in (ns, NODE_NAME) if p)


def rviz_config_for(namespace: str, share: str) -> str:
    """The RViz config with its topics moved under ``namespace`` (a temp copy), or the shipped file when none."""
    src = os.path.join(share, "config", RVIZ_CONFIG)
    prefix = node_topic_prefix(namespace)
    if prefix == "/" + NODE_NAME:
        return src
    with open(src, encoding="utf-8") as f:
        text = f.read().replace("/" + NODE_NAME + "/", prefix + "/")
    fd, path = tempfile.mkstemp(prefix="sigma_ros_", suffix=".rviz")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def node_actions(values: Dict[str, str], share: str):
    """The launch_ros Node actions for resolved argument values (strings, as launch gives them)."""
    from launch_ros.actions import Node

    config = resolve_config(values["config"], share)
    use_sim_time = _as_bool(values["use_sim_time"], "use_sim_time")
    overrides = {"config": config, "device": values["device"], "use_sim_time": use_sim_time}
    if values["checkpoint"].strip():  # empty: keep the YAML's checkpoint (the node fails fast if there is none)
        overrides["checkpoint"] = os.path.expanduser(values["checkpoint"].strip())
    actions = [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=NODE_NAME,
            namespace=values["namespace"],
            output="screen",
            emulate_tty=True,
            parameters=[config, overrides],
            remappings=[("rgb/image", values["rgb_topic"]), ("x/image", values["x_topic"])],
        )
    ]
    if _as_bool(values["rviz"], "rviz"):
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                namespace=values["namespace"],
                arguments=["-d", rviz_config_for(values["namespace"], share)],
                parameters=[{"use_sim_time": use_sim_time}],
                output="screen",
            )
        )
    return actions


def generate(defaults: Dict[str, str]):
    """A LaunchDescription declaring :data:`ARGUMENTS` (with ``defaults``) and starting the node (+ RViz)."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration

    missing = [name for name, _ in ARGUMENTS if name not in defaults]
    if missing:
        raise ValueError(f"launch defaults missing for: {', '.join(missing)}")
    share = share_dir()

    def setup(context, *args, **kwargs):
        values = {name: LaunchConfiguration(name).perform(context) for name, _ in ARGUMENTS}
        return node_actions(values, share)

    declared = [DeclareLaunchArgument(name, default_value=defaults[name], description=desc) for name, desc in ARGUMENTS]
    return LaunchDescription(declared + [OpaqueFunction(function=setup)])
