"""sigma_ros: an ament_python package that also installs with plain `pip install -e .` (no ROS needed)."""
from glob import glob

from setuptools import find_packages, setup

package_name = "sigma_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz")),
        ("share/" + package_name + "/models", glob("models/*.pt")),
    ],
    python_requires=">=3.10",
    # torch is left unpinned so GPU users keep their CUDA build; CI installs the CPU build first.
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "pillow>=9.0",
        "pyyaml>=5.4",
        "tqdm>=4.60",
        "numba>=0.58",
        "rosbags>=0.10",
        "matplotlib>=3.6",
        "tensorboard>=2.12",
    ],
    extras_require={
        # mamba-ssm's selective-scan CUDA kernel; build it on the GPU machine (see README).
        "cuda": ["mamba-ssm>=2.2"],
        # triton: the fused GPU scan's tests run its kernel under Triton's CPU interpreter (CUDA torch ships it).
        "test": ["pytest>=7", "triton>=3.2; platform_system == 'Linux' and platform_machine == 'x86_64'"],
    },
    zip_safe=True,
    maintainer="sigma_ros maintainers",
    description="Sigma RGB-X semantic segmentation for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sigma-ros = sigma_ros.cli:main",
            "sigma_segmentation = sigma_ros.ros.node:main",
        ],
    },
)
