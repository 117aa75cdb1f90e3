"""mdr: multi-domain recommendation, from raw logs to gRPC answers.

The same file installs the project locally (`pip install -e .`) and is what Beam ships to remote
workers (`--setup_file ./setup.py`), so the workers run exactly the code of the driver.
"""
import setuptools

# Exact pins live in constraints.txt (the full, `pip check`-clean freeze); these are the direct needs.
INSTALL_REQUIRES = [
    "tensorflow==2.16.2",
    "tf-keras==2.16.0",
    "tensorflow-recommenders==0.7.7",
    "tensorflow-serving-api==2.16.1",
    # tfrecord: crcmod, without which Beam warns on every import of its TFRecord I/O (in every worker too).
    "apache-beam[gcp,tfrecord]==2.72.0",
    "tfx-bsl==1.16.1",
    "tensorflow-metadata==1.16.1",
    "scann==1.3.2",
    "pyarrow==10.0.1",
    "protobuf==4.25.9",
    "numpy==1.26.4",
    "grpcio==1.85.1",
    # tfx-bsl's RunInference imports dill without declaring it.
    "dill==0.4.1",
    "matplotlib==3.9.4",
]

setuptools.setup(
    name="mdr",
    version="0.1.0",
    description="Multi-domain recommendation: Beam preprocessing, ADI/ADS/D3 Keras models, TF Serving.",
    python_requires=">=3.10,<3.12",
    packages=setuptools.find_packages(include=["mdr_contract", "mdr_contract.*", "pipeline", "pipeline.*",
                                               "mdr_keras", "mdr_keras.*", "mdr", "mdr.*",
                                               "serving", "serving.*", "benchmarks", "benchmarks.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest==8.3.5", "pytest-timeout==2.4.0", "pytest-xdist==3.8.0", "import-linter==2.17"]},
    entry_points={"console_scripts": ["mdr = mdr.cli:main"]},
)
