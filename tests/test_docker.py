"""The image and cluster files in docker/ agree with the project (no Docker needed).

Every YAML file parses; the Ray, Python, torch and torchvision versions of the Dockerfile and of
every image tag are pyproject.toml's; the search commands the manifests run are accepted by the
real `python -m tuner.search` parser and name paths the head node mounts; published ports bind
to 127.0.0.1; the runtime env installs nothing and keeps the virtualenv out of the upload.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILE = (DOCKER / "Dockerfile").read_text()
PROJECT_SERVICES = ("ray-head", "ray-worker", "mlflow")


def load(name: str) -> Any:
    return yaml.safe_load((DOCKER / name).read_text())


def pin(package: str) -> str:
    """The version after `==` of `package` in pyproject's dependencies, e.g. ray → 2.60.*."""
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}(\[[\w,]+\])?==(\S+)", requirement.replace(" ", ""))
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml pins no {package}==...")


RAY_MINOR = re.fullmatch(r"(\d+\.\d+)\.\*", pin("ray")).group(1)  # "2.60"
PY_TAG = "py{}{}".format(*re.search(r">=\s*(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"]).groups())  # "py311"


def base_image() -> tuple[str, str, str]:
    """(ray version, python tag, variant) of the Dockerfile's FROM rayproject/ray:..."""
    match = re.search(r"^FROM\s+rayproject/ray:(\d+\.\d+\.\d+)-(py\d+)-(\w+)\s*$", DOCKERFILE, re.M)
    assert match, "docker/Dockerfile should build FROM rayproject/ray:<version>-py<NN>-gpu"
    return match.group(1), match.group(2), match.group(3)


RAY_VERSION = base_image()[0]  # "2.60.0"
IMAGE_TAG = f"ray{RAY_VERSION}-{PY_TAG}-gpu"


def compose_command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def search_args(argv: list[str]) -> list[str] | None:
    """The arguments after `python -m tuner.search` in a command, None when it runs no search."""
    for i in range(len(argv) - 2):
        if argv[i].split("/")[-1].startswith("python") and argv[i + 1:i + 3] == ["-m", "tuner.search"]:
            return argv[i + 3:]
    return None


def parse_search(args: list[str], where: str) -> Any:
    from tuner.search import build_parser

    try:
        return build_parser().parse_args(args)
    except SystemExit:  # the parser printed why to stderr (shown with the failure)
        pytest.fail(f"{where}: python -m tuner.search rejects {shlex.join(args)}")


def under(path: str, mount_points: list[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mount_points)


def rayjob_containers(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_every_yaml_file_in_docker_parses():
    """A manifest with a syntax error would only fail at `docker compose up`, `ray up` or `kubectl apply`."""
    names = sorted(p.name for p in [*DOCKER.glob("*.yaml"), *DOCKER.glob("*.yml")])
    assert {"compose.yaml", "cluster.yaml", "rayjob.yaml", "runtime-env.yaml"} <= set(names)
    for name in names:
        documents = list(yaml.safe_load_all((DOCKER / name).read_text()))
        assert documents and all(isinstance(d, dict) for d in documents), f"docker/{name} holds no mapping"


def test_dockerfile_base_image_and_pins_match_pyproject():
    """The image runs the Ray, Python, torch and torchvision the project pins."""
    ray_version, py_tag, variant = base_image()
    assert ray_version.startswith(RAY_MINOR + "."), f"FROM has Ray {ray_version}, pyproject pins ray {pin('ray')}"
    assert (py_tag, variant) == (PY_TAG, "gpu")
    for package in ("torch", "torchvision"):
        installed = re.findall(rf"(?<![\w.-]){package}==(\S+)", DOCKERFILE)
        assert installed == [pin(package)], (
            f"docker/Dockerfile installs {package} {installed}, pyproject pins {pin(package)}")
    assert "psycopg2-binary" in DOCKERFILE, "mlflow server needs psycopg2 for its PostgreSQL backend"


def test_dockerfile_copies_every_package_and_the_context_leaves_out_local_state():
    """`pip install .` in the image needs every package pyproject lists; .venv and runs stay out of the context."""
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)", DOCKERFILE, re.M))
    copied = {c.rstrip("/") for c in copied}
    needed = {p.split(".")[0] for p in PYPROJECT["tool"]["setuptools"]["packages"]}
    needed |= {"pyproject.toml", PYPROJECT["project"]["readme"]}
    assert needed <= copied, f"docker/Dockerfile does not copy {sorted(needed - copied)}"
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", DOCKERFILE)
    ignored = {line.strip().strip("/") for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()}
    assert {".venv", ".git", "runs", "mlflow.db", "mlartifacts"} <= ignored


def test_every_image_tag_is_the_project_image_of_the_pinned_versions():
    """Compose, the cluster launcher and KubeRay run one image, tagged with the Ray and Python it holds."""
    compose = load("compose.yaml")["services"]
    images = {f"compose {name}": compose[name]["image"] for name in PROJECT_SERVICES}
    images["cluster.yaml"] = load("cluster.yaml")["docker"]["image"]
    rayjob = load("rayjob.yaml")
    for container in rayjob_containers(rayjob):
        images[f"rayjob {container['name']}"] = container["image"]
    for where, image in images.items():
        name, _, tag = image.rpartition(":")
        assert tag == IMAGE_TAG, f"{where} runs {image}, expected the tag {IMAGE_TAG}"
        assert name.endswith("robust-width-tuner"), f"{where} runs {image}, not the project image"
    assert len({compose[name]["image"] for name in PROJECT_SERVICES}) == 1
    assert all(compose[name]["build"]["dockerfile"] == "docker/Dockerfile" for name in PROJECT_SERVICES)
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION


def test_search_commands_are_accepted_by_the_search_parser():
    """The RayJob entrypoint and the compose search parse with the real CLI, and name paths the head mounts."""
    from tuner.presets import load_preset

    rayjob = load("rayjob.yaml")
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    commands = {"rayjob.yaml entrypoint": (shlex.split(rayjob["spec"]["entrypoint"]),
                                           [m["mountPath"] for m in head.get("volumeMounts", [])])}
    compose = load("compose.yaml")["services"]
    head_mounts = [v.split(":")[1] for v in compose["ray-head"]["volumes"]]
    for name, service in compose.items():
        commands[f"compose {name}"] = (compose_command(service), head_mounts)

    searches = 0
    for where, (argv, mounts) in commands.items():
        args = search_args(argv)
        if args is None:
            continue
        searches += 1
        parsed = parse_search(args, where)
        assert parsed.preset, f"{where} should name its preset"
        load_preset(parsed.preset)  # raises for an unknown preset
        for flag in ("data_dir", "out", "storage"):
            path = str(getattr(parsed, flag) or "")
            if path and "://" not in path:  # s3:// and the like are shared by construction
                assert under(path, mounts), f"{where}: --{flag.replace('_', '-')} {path} is not on a volume of the head"
    assert search_args(shlex.split(rayjob["spec"]["entrypoint"])) is not None, "the RayJob runs no search"
    assert searches >= 2


def test_compose_publishes_ports_on_localhost_only():
    """Ray's job API runs arbitrary code and MLflow has no login: nothing is reachable from outside the host."""
    services = load("compose.yaml")["services"]
    published = []
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
            assert host_ip == "127.0.0.1", f"compose {name} publishes {port} beyond 127.0.0.1"
            published.append(str(port))
    assert any("8265" in p for p in published) and any("5000" in p for p in published)
    assert not services["db"].get("ports"), "the database is for the mlflow service only"


def test_compose_wires_gpus_storage_and_tracking():
    """The worker gets the GPUs; head and worker share /shared and log to mlflow, which accepts their Host header."""
    services = load("compose.yaml")["services"]
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and d.get("count", "all") == "all"
               for d in devices)
    for name in ("ray-head", "ray-worker"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert "shared:/shared" in services[name]["volumes"]
        assert services[name].get("shm_size")
    mlflow = compose_command(services["mlflow"])
    assert mlflow[:2] == ["mlflow", "server"] and "--serve-artifacts" in mlflow
    assert mlflow[mlflow.index("--backend-store-uri") + 1].startswith("postgresql://")
    allowed = re.sub(r"\$\{\w+:-(.*)\}", r"\1", mlflow[mlflow.index("--allowed-hosts") + 1]).split(",")
    assert {"mlflow:5000", "localhost:5000", "127.0.0.1:5000"} <= set(allowed)


def test_runtime_env_installs_nothing_and_excludes_local_state():
    """The same runtime env serves the image's cluster and a `ray start --head` from the project's virtualenv."""
    from ray.runtime_env import RuntimeEnv

    runtime_envs = {"runtime-env.yaml": load("runtime-env.yaml"),
                    "rayjob.yaml runtimeEnvYAML": yaml.safe_load(load("rayjob.yaml")["spec"]["runtimeEnvYAML"])}
    for where, env in runtime_envs.items():
        RuntimeEnv(**env)  # Ray's own validation of the keys and their types
        installers = {"pip", "conda", "uv", "image_uri", "container", "py_executable"} & set(env)
        assert not installers, f"{where} installs packages ({sorted(installers)}): the image already has them"
        assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    excludes = {p.strip("/") for p in runtime_envs["runtime-env.yaml"]["excludes"]}
    assert {".venv", ".git", "runs", "mlflow.db", "mlartifacts", "*.pt"} <= excludes


def test_cluster_yaml_is_valid_for_the_cluster_launcher():
    """`ray up` validates against this schema; the head schedules no trial, the workers hold GPUs."""
    import jsonschema
    import ray.autoscaler

    config = load("cluster.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["resources"]
    assert head.get("GPU") == 0 and head.get("CPU", 0) > 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) > 0 and t.get("max_workers", 0) >= t.get("min_workers", 0)
                           for t in workers)
    assert config["provider"]["type"] == "aws"


def test_rayjob_runs_on_gpus_and_cleans_up():
    """The RayJob's workers get GPUs, every container knows where MLflow is, and the cluster goes with the job."""
    rayjob = load("rayjob.yaml")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True
    for container in rayjob_containers(rayjob):
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("MLFLOW_TRACKING_URI") == "http://mlflow:5000", container["name"]
    for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) > 0
