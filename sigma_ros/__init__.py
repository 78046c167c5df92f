"""sigma_ros: Sigma (Siamese Mamba) RGB-X semantic segmentation for ROS 2.

The package is split into a ROS-free core (model, scan kernels, pre/post-processing, pairing, data,
training) and a thin ROS layer in :mod:`sigma_ros.ros`. Nothing outside ``sigma_ros.ros`` imports rclpy.
"""

__version__ = "0.1.0"
