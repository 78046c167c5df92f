"""Data for sigma_ros, ROS-free: synthetic RGB-thermal scenes (:mod:`.synthetic`), dataset readers for the Sigma,
MFNet, PST900 and NYU/SUN RGB-D layouts (:mod:`.datasets`), rosbag2 helpers (:mod:`.bags`) and the bag-to-dataset
extractor behind ``sigma-ros extract`` (:mod:`.extract`). Submodules are imported on use (no heavy imports here).
"""
