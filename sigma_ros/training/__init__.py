"""Training and evaluation of Sigma (ROS-free): the trainer behind ``sigma-ros train``, the augmentation, the
metrics and the official single/multi-scale, flip and sliding-window evaluation behind ``sigma-ros eval``.

Modules are imported on use (``from sigma_ros.training.trainer import Trainer``) so that importing this package
stays cheap.
"""
