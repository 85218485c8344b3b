"""Installs the ``mammoxai`` package from ``monai_bundle/`` so the bundle and everything else share one copy.

PyTorch is installed first by ``scripts/bootstrap.sh`` (``torch==2.14.1``, ``torchvision==0.29.1``): the pins
below accept it and never pull another build.
"""

from setuptools import find_packages, setup

CORE = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "monai==1.6.1",
    "fire>=0.5",  # monai.bundle run's command line, whose value reading the scripts share
    "numpy>=1.24,<2",
    "pydicom>=2.4,<3",
    "pylibjpeg>=2.0,<3",
    "pylibjpeg-openjpeg>=2.3",
    "pylibjpeg-libjpeg>=2.1",
    "pylibjpeg-rle>=2.0,<3",
    "Pillow>=10",
    "scipy>=1.11",
    "pynrrd>=1.0,<2",
    "jsonschema>=3.2",
    "tqdm>=4.66,<5",
    "pytorch-ignite>=0.5,<0.6",
    "tensorboard>=2.15",
    "scikit-learn>=1.3",
    "matplotlib>=3.7",
]

APP = [
    "monailabel==0.8.5",
    "dicomweb-client==0.59.3",
    "PyJWT>=2.8",
    "pynetdicom<2.1",
]

# the reference saliency implementations our methods are checked and benchmarked against
BENCH = [
    "grad-cam>=1.5,<2",  # pytorch-grad-cam
    "captum>=0.7,<1",
]

DEV = [
    "pytest>=8,<9",
    "hypothesis>=6.100,<7",
    "SimpleITK>=2.3",  # the NRRD reader Slicer uses, to check heatmap geometry
    "pyjpegls>=1.4,<1.5",  # JPEG-LS encoder for the reader tests; 1.5 needs numpy 2
    # the MONAI model zoo's formatters and linter (tests/test_code_style.py)
    "black==26.10.1",
    "isort==9.0.2",
    "flake8==7.5.0",
    "flake8-bugbear==26.11.22",
    "flake8-comprehensions==3.17.0",
    "pep8-naming==0.15.1",
    *BENCH,
]

setup(
    name="mammoxai",
    version="0.1.0",
    description="Explainable mammography AI: metadata-pretrained networks, saliency, MONAI bundle and MONAI Label app",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    package_dir={"": "monai_bundle"},
    packages=find_packages("monai_bundle", include=["mammoxai", "mammoxai.*"]),
    install_requires=CORE,
    extras_require={"app": APP, "bench": BENCH, "dev": DEV},
    entry_points={
        "console_scripts": [
            "mammoxai-synth=mammoxai.data.synth:main",
        ]
    },
)
