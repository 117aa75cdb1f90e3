"""Static checks of docker/ (no Docker engine runs here to build the images).

Base image tags against the pins of setup.py / constraints.txt, the files the Dockerfiles copy, the
flags the serving images start with, the compose file's structure, and the export's stock-TF-Serving
config leaving out the model stock TF Serving cannot load.
"""
import ast
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(ROOT, "docker")
DOCKERFILES = ("Dockerfile.train", "Dockerfile.serving", "Dockerfile.serving-scann")


def _installed_packages():
    """The top-level packages setup.py installs (its find_packages include list)."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        include = re.search(r"find_packages\(include=\[(.*?)\]\)", f.read(), re.S).group(1)
    return sorted({name for name in re.findall(r'"([\w.*]+)"', include) if "." not in name})


INSTALLED_PACKAGES = _installed_packages()
SERVICES = {"train": "Dockerfile.train", "tf-serving": "Dockerfile.serving",
            "scann-serving": "Dockerfile.serving-scann"}


def instructions(name):
    """[(INSTRUCTION, arguments)] of a Dockerfile: comments dropped, continuation lines joined."""
    text = open(os.path.join(DOCKER, name), encoding="utf-8").read()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def base_image(name):
    (image,) = [args.split()[-1] if " AS " not in args.upper() else args.split()[0]
                for keyword, args in instructions(name) if keyword == "FROM"]
    return image


def setup_pins():
    """{package: version} of setup.py's INSTALL_REQUIRES, and its python_requires."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read())
    pins, python_requires = {}, None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "INSTALL_REQUIRES" for t in node.targets):
            for requirement in ast.literal_eval(node.value):
                package, _, version = requirement.partition("==")
                pins[re.sub(r"\[.*\]", "", package).lower()] = version
        if isinstance(node, ast.keyword) and node.arg == "python_requires":
            python_requires = ast.literal_eval(node.value)
    return pins, python_requires


def constraint_pins():
    pins = {}
    for line in open(os.path.join(ROOT, "constraints.txt"), encoding="utf-8"):
        package, sep, version = line.strip().partition("==")
        if sep:
            pins[package.lower().replace("_", "-")] = version
    return pins


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_has_one_pinned_base_image(name):
    image = base_image(name)
    assert ":" in image and not image.endswith(":latest"), image


def test_train_image_is_the_pinned_tensorflow():
    pins, _ = setup_pins()
    assert pins["tensorflow"] == constraint_pins()["tensorflow"]
    assert base_image("Dockerfile.train") == f"tensorflow/tensorflow:{pins['tensorflow']}-gpu"


def test_serving_image_is_the_pinned_tf_serving_of_the_same_tensorflow():
    pins, _ = setup_pins()
    serving = pins["tensorflow-serving-api"]
    assert serving == constraint_pins()["tensorflow-serving-api"]
    assert base_image("Dockerfile.serving") == f"tensorflow/serving:{serving}"
    # Exported graphs are written by TensorFlow 2.16: the model server must be of the same minor release.
    assert serving.split(".")[:2] == pins["tensorflow"].split(".")[:2]


def test_scann_image_python_is_one_setup_py_allows():
    from packaging.specifiers import SpecifierSet

    pins, python_requires = setup_pins()
    image = base_image("Dockerfile.serving-scann")
    match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?(?:-[\w.-]+)?", image)
    assert match, image
    assert SpecifierSet(python_requires).contains(match.group(1) + ".0"), (image, python_requires)
    assert "scann" in pins and "scann" in constraint_pins()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_files_exist_and_installs_use_the_constraints(name):
    copied = set()
    for keyword, args in instructions(name):
        if keyword in ("COPY", "ADD") and "--from" not in args:
            sources = args.split()[:-1]
            for source in sources:
                assert os.path.exists(os.path.join(ROOT, source)), f"{name}: COPY {source}: no such path"
                copied.add(source)
        if keyword == "RUN" and "pip install" in args:
            assert "-c constraints.txt" in args and "-e ." in args, f"{name}: {args}"
            assert {"constraints.txt", "setup.py"} <= copied, f"{name}: pip runs before its files are copied"
            # Every package setup.py installs must be in the image.
            for package in INSTALLED_PACKAGES:
                assert package in copied, f"{name}: {package} not copied"


def test_scann_image_command_parses_as_mdr_serve():
    from mdr import cli

    cmd = json.loads(dict(instructions("Dockerfile.serving-scann"))["CMD"])
    args, unknown = cli.build_parser().parse_known_args(["serve"] + cmd)
    assert not unknown, unknown
    assert (args.command, args.model_config_file, args.host, args.port) == ("serve", "/models/models.config",
                                                                            "0.0.0.0", 8500)
    assert args.enable_batching and args.batching_parameters_file == "/models/batching.config"


def test_train_image_runs_mdr():
    assert ("ENTRYPOINT", '["mdr"]') in instructions("Dockerfile.train")


def test_serving_images_start_with_the_export_configs():
    (cmd,) = [args for keyword, args in instructions("Dockerfile.serving") if keyword == "CMD"]
    for flag in ("--model_config_file=/models/models.docker.config", "--enable_batching=true",
                 "--batching_parameters_file=/models/batching.config", "--file_system_poll_wait_seconds="):
        assert flag in cmd, flag
    scann = dict(instructions("Dockerfile.serving-scann"))
    assert scann["ENTRYPOINT"] == '["mdr", "serve"]'
    for fragment in ('"--model-config-file", "/models/models.config"', '"--host", "0.0.0.0"', '"--port", "8500"'):
        assert fragment in scann["CMD"], fragment


def test_compose_file():
    text = open(os.path.join(DOCKER, "docker-compose.yml"), encoding="utf-8").read()
    try:
        import yaml
    except ImportError:
        for service in SERVICES:
            assert re.search(rf"^  {re.escape(service)}:\s*$", text, re.M), service
        pytest.skip("PyYAML is not installed: only the service names were checked")
    services = yaml.safe_load(text)["services"]
    assert set(services) == set(SERVICES)
    for service, dockerfile in SERVICES.items():
        build = services[service]["build"]
        context = os.path.normpath(os.path.join(DOCKER, build["context"]))
        assert context == ROOT and build["dockerfile"] == f"docker/{dockerfile}", service
    for service, ports in (("tf-serving", {"8500", "8501"}), ("scann-serving", {"8500"})):
        published = services[service]["ports"]
        assert {p.rsplit(":", 1)[1] for p in published} == ports, service
        assert all(p.startswith("127.0.0.1:") for p in published), service  # loopback only by default
        assert any(v.endswith(":/models:ro") for v in services[service]["volumes"]), service
    assert services["train"]["profiles"] == ["jobs"]
    assert any(v.endswith(":/work/runs/export") for v in services["train"]["volumes"])


def test_stock_serving_config_leaves_out_scann(tmp_path):
    # Stock TF Serving refuses to start when a model of its config fails to load, and it cannot load
    # retrieval_scann (ScaNN's custom ops): the config Dockerfile.serving reads must not name it.
    from mdr_contract import artifacts
    from serving import config as cfg
    from serving import export

    for model in artifacts.MODEL_NAMES:
        os.makedirs(tmp_path / model / "1")
    paths = export.write_configs(str(tmp_path), cfg.BatchingConfig(max_batch_size=64))
    assert os.path.basename(paths["models_docker_config"]) == "models.docker.config"
    assert os.path.basename(paths["batching_config"]) == "batching.config"
    docker = {m.name: m.base_path for m in cfg.read_models_config(paths["models_docker_config"])}
    assert docker == {m: f"/models/{m}" for m in ("user_tower", "item_tower", "ranker", "retrieval", "recommender")}
    assert "retrieval_scann" in {m.name for m in cfg.read_models_config(paths["models_config"])}


def test_k8s_workers_build_their_tf_config_from_their_index():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    import subprocess
    import sys

    service, job = yaml.safe_load_all(open(os.path.join(DOCKER, "k8s-train-workers.yaml"), encoding="utf-8"))
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    workers = int(env["WORKERS"])
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == workers
    assert pod["subdomain"] == service["metadata"]["name"] == job["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"job-name": "mdr-train"}
    port = service["spec"]["ports"][0]["port"]
    assert container["ports"][0]["containerPort"] == port
    # The pod's command, as /bin/sh gets it, up to `exec mdr train`; its TF_CONFIG for worker 1.
    script = container["args"][0].split("&& exec ")[0] + "&& printf %s \"$TF_CONFIG\""
    done = subprocess.run(["/bin/sh", "-c", script.replace("python -c", f"{sys.executable} -c")],
                          env={"WORKERS": str(workers), "JOB_COMPLETION_INDEX": "1", "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "cluster": {"worker": [f"mdr-train-{i}.mdr-train:{port}" for i in range(workers)]},
        "task": {"type": "worker", "index": 1}}
    assert "exec mdr train" in container["args"][0] and "--model-dir" in container["args"][0]
