"""Sigma RGB-depth segmentation: ros2 launch sigma_ros rgbd_segmentation.launch.py checkpoint:=/path/model.pt

Arguments (ros2 launch ... --show-args): rgb_topic, x_topic, checkpoint, config, device, namespace, use_sim_time, rviz.
x_topic carries depth (32FC1 metres or 16UC1 millimetres, registered to the RGB camera); the config sets
modality: depth and the depth clipping range.
"""
from sigma_ros.ros.launch_common import generate


def generate_launch_description():
    return generate({
        "rgb_topic": "/camera/color/image_raw",
        "x_topic": "/camera/aligned_depth_to_color/image_raw",
        "checkpoint": "",
        "config": "nyu",  # 40 NYU Depth V2 classes; sunrgbd for SUN RGB-D (37 classes)
        "device": "auto",
        "namespace": "",
        "use_sim_time": "false",
        "rviz": "false",
    })
