"""perforation_d2: spatio-temporal detection of vessel perforations in DSA series (Detectron2 project)."""

from setuptools import find_packages, setup

setup(
    name="perforation_d2",
    version="0.1.0",
    description="Detectron2 project: intracranial vessel perforation detection in DSA series",
    packages=find_packages(include=["perforation_d2", "perforation_d2.*"]),
    # The YAML configs ship inside the package, so an installed copy finds them (config_path).
    package_data={"perforation_d2": ["configs/*.yaml", "configs/**/*.yaml"]},
    python_requires=">=3.10",
    # torch, torchvision and detectron2 are installed by scripts/setup_env.sh (Detectron2 is not
    # on PyPI); the rest is pinned in requirements.txt.
    install_requires=[
        "numpy<2",
        "pydicom>=3.0",
        "pycocotools",
        "scikit-learn",
        "scipy",
        "matplotlib",
        "Pillow",
        "tqdm",
        "opencv-python-headless<4.12",
        # DICOM results (highdicom), the DICOM node (pynetdicom), cross-validate on a cluster (submitit).
        "highdicom>=0.28",
        "pyjpegls<1.5",  # highdicom's JPEG-LS codec; 1.5 requires numpy 2
        "pynetdicom>=3.0",
        "submitit>=1.5",
    ],
    entry_points={"console_scripts": ["perforation-d2=perforation_d2.cli:main"]},
)
