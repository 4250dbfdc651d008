#!/usr/bin/env python3
"""Replays the build stage of deploy/Dockerfile without Docker, and checks the runtime stages.

No Docker engine runs on our machines or in CI, so this is how the Dockerfile is tested: the
build stage's WORKDIR, ENV, COPY and RUN instructions are carried out in a scratch directory
(COPY keeps modification times, as Docker's does, which is what makes stale-artifact bugs show),
with the repository as the build context. Then, for each runtime stage, the file its
`COPY --from=build` takes must exist in the replayed build, be what its ENTRYPOINT runs, and need
no shared library beyond what the distroless/cc base has.

    replay_build_stage.py DOCKERFILE CONTEXT SCRATCH

Prints `<stage> <path of the built binary>` per runtime stage on stdout (the chart tests use
these binaries); progress goes to stderr. Exits non-zero with a message on any mismatch.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

BUILD_STAGE = "build"
# What gcr.io/distroless/cc-debian12 provides (glibc, libgcc); anything else would be missing
# at run time (e.g. libssl).
RUNTIME_LIBS = {
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
}


def fail(message):
    print(f"replay_build_stage: {message}", file=sys.stderr)
    sys.exit(1)


def instructions(dockerfile):
    """(line number, KEYWORD, rest) per instruction: comments dropped, continuations joined."""
    out, pending, start = [], "", 0
    for number, raw in enumerate(Path(dockerfile).read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, rest = text.partition(" ")
        out.append((start, keyword.upper(), rest.strip()))
    return out


def stages(instrs):
    """{stage name: [instructions after its FROM]}, plus the FROM line of each."""
    result, current = {}, None
    for number, keyword, rest in instrs:
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"#{number}"
            current = result.setdefault(name, {"from": words[0], "body": []})
            continue
        if current is None:
            if keyword == "ARG":
                continue
            fail(f"line {number}: {keyword} before the first FROM")
        current["body"].append((number, keyword, rest))
    return result


def ignore_whitelist(dockerignore):
    """The `!pattern` lines of a whitelist-style .dockerignore (one that starts with `*`)."""
    lines = [
        line.strip()
        for line in Path(dockerignore).read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if not lines or lines[0] != "*":
        fail(f"{dockerignore} must start with `*` and list what the build needs with `!`")
    return [line[1:].rstrip("/") for line in lines[1:] if line.startswith("!")]


def in_context(source, whitelist):
    source = source.rstrip("/")
    return any(source == w or source.startswith(w + "/") for w in whitelist)


def check_members_copied(stage, context):
    """Cargo loads the whole workspace: every member's manifest must be in the dependency layer,
    i.e. copied before the first RUN (a member added to Cargo.toml needs a COPY line)."""
    members = tomllib.loads((context / "Cargo.toml").read_text())["workspace"]["members"]
    copied = set()
    for _, keyword, rest in stage["body"]:
        if keyword == "RUN":
            break
        if keyword == "COPY":
            copied.update(w.rstrip("/") for w in shlex.split(rest)[:-1])
    for member in members:
        manifest = f"{member}/Cargo.toml"
        if manifest not in copied:
            fail(
                f"workspace member {member} is not in the dependency layer: add "
                f"`COPY {manifest} {member}/` to the Dockerfile and `!{manifest}` to its .dockerignore"
            )


def copy_preserving(src, dest):
    """Docker COPY: a directory's contents go into dest; files keep their modification time."""
    if src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dest, dirs_exist_ok=True, copy_function=shutil.copy2)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def replay(stage, context, scratch, whitelist):
    workdir = PurePosixPath("/")
    # The builder image has no cargo settings of ours: drop the caller's (CARGO_TARGET_DIR would
    # move the output, RUSTFLAGS change the code), keeping only where cargo caches downloads.
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("CARGO_") and k != "CARGO_HOME")
        and k not in ("RUSTFLAGS", "RUSTDOCFLAGS", "RUSTC_WRAPPER", "RUSTC")
    }

    def host(path):
        path = PurePosixPath(path)
        if not path.is_absolute():
            path = workdir / path
        return scratch / str(path).lstrip("/")

    for number, keyword, rest in stage["body"]:
        where = f"Dockerfile line {number} ({keyword})"
        if keyword == "WORKDIR":
            workdir = PurePosixPath(rest) if rest.startswith("/") else workdir / rest
            host(workdir).mkdir(parents=True, exist_ok=True)
        elif keyword == "ENV":
            for pair in shlex.split(rest):
                if "=" not in pair:
                    fail(f"{where}: use ENV key=value")
                key, _, value = pair.partition("=")
                env[key] = value
        elif keyword == "COPY":
            words = shlex.split(rest)
            if any(w.startswith("--") for w in words):
                fail(f"{where}: COPY flags are not replayed; extend {__file__}")
            *sources, dest = words
            for source in sources:
                if not in_context(source, whitelist):
                    fail(f"{where}: {source} is excluded by the .dockerignore")
                src = context / source
                if not src.exists():
                    fail(f"{where}: {source} does not exist in the build context")
                target = host(dest)
                if src.is_file() and (dest.endswith("/") or len(sources) > 1):
                    target = target / src.name
                copy_preserving(src, target)
        elif keyword == "RUN":
            if rest.startswith("["):
                fail(f"{where}: use the shell form of RUN")
            print(f"+ ({workdir}) {rest}", file=sys.stderr, flush=True)
            status = subprocess.run(["sh", "-ec", rest], cwd=host(workdir), env=env).returncode
            if status != 0:
                fail(f"{where}: `{rest}` exited with {status}")
        else:
            fail(f"{where}: not replayed; keep the build stage to WORKDIR, ENV, COPY and RUN")
    return host


def needed_libraries(binary):
    out = subprocess.run(
        ["readelf", "-d", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    return {
        line.split("[", 1)[1].split("]", 1)[0]
        for line in out.splitlines()
        if "(NEEDED)" in line
    }


def main():
    if len(sys.argv) != 4:
        fail("usage: replay_build_stage.py DOCKERFILE CONTEXT SCRATCH")
    dockerfile, context, scratch = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    all_stages = stages(instructions(dockerfile))
    if BUILD_STAGE not in all_stages:
        fail(f"no `FROM ... AS {BUILD_STAGE}` stage in {dockerfile}")
    whitelist = ignore_whitelist(dockerfile.parent / (dockerfile.name + ".dockerignore"))
    check_members_copied(all_stages[BUILD_STAGE], context)

    # A fresh tree each time, but the build's target/ is kept between runs (a warm cache, like
    # Docker's layer cache; a cold one in CI).
    scratch.mkdir(parents=True, exist_ok=True)
    for entry in scratch.iterdir():
        if entry.name != "src":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    src_dir = scratch / "src"
    if src_dir.exists():
        for entry in src_dir.iterdir():
            if entry.name != "target":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    host = replay(all_stages[BUILD_STAGE], context, scratch, whitelist)

    built = {}
    for name, stage in all_stages.items():
        if name == BUILD_STAGE:
            continue
        copies = [
            shlex.split(rest)
            for _, keyword, rest in stage["body"]
            if keyword == "COPY" and rest.startswith(f"--from={BUILD_STAGE} ")
        ]
        entrypoints = [rest for _, keyword, rest in stage["body"] if keyword == "ENTRYPOINT"]
        users = [rest for _, keyword, rest in stage["body"] if keyword == "USER"]
        if len(copies) != 1 or len(entrypoints) != 1:
            fail(f"stage {name}: expected one COPY --from={BUILD_STAGE} and one ENTRYPOINT")
        _, source, dest = copies[0]
        binary = host(source)
        if not binary.is_file() or not os.access(binary, os.X_OK):
            fail(f"stage {name}: {source} was not produced by the build stage")
        entry = json.loads(entrypoints[0])
        if entry[0] != dest:
            fail(f"stage {name}: ENTRYPOINT runs {entry[0]}, but the binary is copied to {dest}")
        # Numeric and not root: Kubernetes' runAsNonRoot can only verify a numeric user.
        if len(users) != 1 or not users[0].split(":")[0].isdigit() or users[0].startswith("0"):
            fail(f"stage {name}: needs one numeric non-root USER (found {users})")
        extra = needed_libraries(binary) - RUNTIME_LIBS
        if extra:
            fail(f"stage {name}: {source} needs {sorted(extra)}, which {stage['from']} lacks")
        built[name] = binary
        print(f"{name} {binary}")


if __name__ == "__main__":
    main()
