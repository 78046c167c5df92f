"""Sigma RGB-thermal segmentation: ros2 launch sigma_ros rgbt_segmentation.launch.py checkpoint:=/path/model.pt

Arguments (ros2 launch ... --show-args): rgb_topic, x_topic, checkpoint, config, device, namespace, use_sim_time, rviz.
Outputs: <namespace>/sigma_segmentation/{label,color,overlay,confidence} and /diagnostics.
"""
from sigma_ros.ros.launch_common import generate


def generate_launch_description():
    return generate({
        "rgb_topic": "/camera/color/image_raw",
        "x_topic": "/camera/thermal/image_raw",
        "checkpoint": "",
        "config": "mfnet",  # 9 MFNet classes; pst900 for PST900 (5 classes)
        "device": "auto",
        "namespace": "",
        "use_sim_time": "false",
        "rviz": "false",
    })
