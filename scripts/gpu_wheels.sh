#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels that the lent GPU machine lacks, so that scripts/gpu_check.sh can run
# the notebooks there through nbclient with no network. The GPU machine has Python 3.12 and its own torch 2.11
# (cu130), accelerate 1.15.0, safetensors 0.8.0, numpy, pandas, pyarrow, ... (/work/.library/device/KINDS.md,
# "Python packages already there"); it lacks trl, bitsandbytes, datasets and the Jupyter stack, and has other
# versions of transformers, tokenizers and huggingface_hub than requirements.txt.
#
# Usage (from anywhere; needs pip and the package index, not the GPU):
#     bash scripts/gpu_wheels.sh            # download what is missing, trim bitsandbytes, check the kit
#     bash scripts/gpu_wheels.sh --check    # only check the kit that is there
# Environment: PYTHON (default python3, any Python with pip), KIT_MAX_MIB (default 38), KIT_WITH_MATPLOTLIB,
# GPU_PACKAGES_FILE (default /work/.library/device/KINDS.md; the check of requirements is skipped without it).
#
# What is carried and why:
# - the runtime pins of requirements.txt that the machine lacks or has at another version, at the pin (the tested
#   set; the notebooks' setup cell would pip-install a missing core library or one at another minor version, and
#   there is no network): transformers, peft, trl, bitsandbytes, datasets, huggingface_hub, and tokenizers (the
#   0.23.2 there declares huggingface-hub<2); psutil (its version there is unknown, IPython needs >=7; 150 kB);
#   matplotlib (9.4 MiB) only with KIT_WITH_MATPLOTLIB=1: the machine has one of unknown version, which the
#   notebooks accept (helpers.install: only the core libraries must match the pin's major.minor);
# - nbclient, nbformat, ipykernel and what they need at run time that the machine lacks;
# - one version of each package (two would stop the install).
# Not carried on purpose: debugpy (ipykernel imports it inside try/except ImportError: only the debugger needs
# it) and jedi/parso (IPython imports jedi lazily, for tab completion only). The check below names them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
KIT=${KIT_DIR:-.whl}  # KIT_DIR: another folder, for tests
MAX_MIB=${KIT_MAX_MIB:-38}
GPU_PACKAGES_FILE=${GPU_PACKAGES_FILE:-/work/.library/device/KINDS.md}

WHEELS=(
    # the course's pins (requirements.txt), where the GPU machine differs
    transformers==5.24.0
    tokenizers==0.23.3
    huggingface_hub==2.4.0
    peft==0.21.2
    trl==1.16.0
    datasets==5.2.0
    bitsandbytes==0.50.2
    psutil==7.2.2
    # huggingface_hub 2.x
    httpx2==2.16.2
    httpcore2==2.16.2
    truststore==0.10.5
    # datasets
    dill==0.4.1
    multiprocess==0.70.19
    # nbclient / nbformat
    nbclient==0.11.0
    nbformat==5.11.1
    fastjsonschema==2.22.3
    jsonschema==4.26.0
    jsonschema-specifications==2025.9.1
    referencing==0.37.0
    rpds-py==2026.9.1
    jupyter_client==8.10.0
    jupyter_core==5.9.1
    platformdirs==4.14.8
    traitlets==5.16.1
    pyzmq==27.3.0
    tornado==6.6.1
    # ipykernel / IPython
    ipykernel==7.4.0
    comm==0.2.3
    nest-asyncio2==1.7.4
    matplotlib-inline==0.2.2
    ipython==9.18.1
    ipython-pygments-lexers==1.1.1
    pexpect==4.9.0
    ptyprocess==0.7.0
    prompt_toolkit==3.0.53
    wcwidth==0.9.4
    stack-data==0.6.3
    executing==2.3.0
    asttokens==3.0.2
    pure-eval==0.2.4
)
if [ "${KIT_WITH_MATPLOTLIB:-0}" = 1 ]; then WHEELS+=(matplotlib==3.11.2); fi
# bitsandbytes: torch 2.11+cu130 reports CUDA 13.0, so bitsandbytes loads libbitsandbytes_cuda130.so; the cpu
# library is its fallback without CUDA. The other 13 libraries (~120 MB) are dropped from the wheel.
BNB_KEEP="libbitsandbytes_cuda130.so libbitsandbytes_cpu.so"

PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 \
    manylinux_2_5_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$tag")
done

check_only=0
case "${1:-}" in
    --check) check_only=1 ;;
    "") ;;
    *) echo "usage: bash scripts/gpu_wheels.sh [--check]" >&2; exit 2 ;;
esac

# Which file in $KIT holds the wheel NAME==VERSION (wheel names use '_' for '-' and '.'; case-insensitive).
find_wheel() {
    local name=${1%%==*} version=${1##*==}
    name=$(echo "$name" | tr 'A-Z.-' 'a-z__')
    local f base
    for f in "$KIT"/*.whl; do
        [ -e "$f" ] || continue
        base=$(basename "$f" | tr 'A-Z' 'a-z')
        if [[ "$base" == "$name-$version-"* ]]; then echo "$f"; return 0; fi
    done
    return 1
}

if [ "$check_only" = 0 ]; then
    mkdir -p "$KIT"
    for spec in "${WHEELS[@]}"; do
        if find_wheel "$spec" >/dev/null; then continue; fi
        echo "download $spec"
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${PLATFORMS[@]}" -d "$KIT" "$spec" 2>&1 | grep -v "^WARNING: Location" || true
        find_wheel "$spec" >/dev/null || { echo "ERROR: no cp312 manylinux x86_64 wheel for $spec" >&2; exit 1; }
    done
    # Drop anything else (older versions, leftovers): one version of each package, only the listed ones.
    keep=()
    for spec in "${WHEELS[@]}"; do keep+=("$(find_wheel "$spec")"); done
    for f in "$KIT"/*; do
        if [[ ! " ${keep[*]} " == *" $f "* ]]; then echo "remove $f"; rm -rf "$f"; fi
    done
    # Trim bitsandbytes in place (same file name, so pip still reads it as bitsandbytes 0.50.2).
    "$PY" - "$(find_wheel bitsandbytes==0.50.2)" $BNB_KEEP <<'EOF'
import os
import sys
import zipfile

path, keep = sys.argv[1], set(sys.argv[2:])
with zipfile.ZipFile(path) as src:
    names = src.namelist()
    drop = [n for n in names if n.startswith("bitsandbytes/") and n.endswith(".so") and n.split("/")[-1] not in keep]
    if not drop:
        print(f"{path}: already trimmed")
        sys.exit(0)
    missing = keep - {n.split("/")[-1] for n in names}
    if missing:
        sys.exit(f"ERROR: {path} lacks {sorted(missing)}")
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in src.infolist():
            if info.filename in drop:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):  # drop the removed files' lines, keep the others
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if line.split(",")[0] not in drop).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
os.replace(tmp, path)
print(f"{path}: dropped {len(drop)} libraries, kept {sorted(keep)}")
EOF
fi

# Check the kit: one wheel per listed package and nothing else, bitsandbytes trimmed, every requirement of every
# carried wheel met by a carried wheel or by a package on the GPU machine, and the total size.
"$PY" - "$KIT" "$MAX_MIB" "$GPU_PACKAGES_FILE" "${WHEELS[@]}" <<'EOF'
import re
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
    from pip._vendor.packaging.version import Version

kit, max_mib, kinds_file, specs = Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
# Carried but not needed at run time: see the header of scripts/gpu_wheels.sh.
NOT_CARRIED_ON_PURPOSE = {
    "debugpy": "ipykernel imports it in try/except ImportError (only for the debugger)",
    "jedi": "IPython imports it lazily, only for tab completion",
}
# Linux x86-64, CPython 3.12, no extras.
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
errors, notes = [], []

wheels = {}
for path in sorted(kit.glob("*.whl")):
    name, version, _, _ = parse_wheel_filename(path.name)
    if name in wheels:
        errors.append(f"two wheels of {name}: {wheels[name][1].name} and {path.name}")
    wheels[name] = (version, path)
others = [p.name for p in kit.iterdir() if p.suffix != ".whl"]
if others:
    errors.append(f"files that are not wheels in {kit}: {others}")
for spec in specs:
    name, version = spec.split("==")
    got = wheels.get(canonicalize_name(name))
    if got is None or got[0] != Version(version):
        errors.append(f"{spec} is not in {kit} (found {got[1].name if got else 'nothing'})")
wanted = {canonicalize_name(s.split("==")[0]) for s in specs}
for name in set(wheels) - wanted:
    errors.append(f"{wheels[name][1].name} is in {kit} but not in the list")

bnb = wheels.get("bitsandbytes")
if bnb:
    libs = sorted(n.split("/")[-1] for n in zipfile.ZipFile(bnb[1]).namelist() if n.endswith(".so"))
    if libs != ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]:
        errors.append(f"bitsandbytes is not trimmed to cuda130 + cpu: {libs}")

gpu_names, gpu_versions = set(), {}
if kinds_file.is_file():
    text = kinds_file.read_text()
    section = text.split("## Python packages already there", 1)[1]
    packages = section.split("Packages:", 1)[1].split("\n\n")[0]
    gpu_names = {canonicalize_name(p.strip(" .\n")) for p in packages.split(",") if p.strip(" .\n")}
    for row in re.findall(r"^\| pip list.*$", text, re.M):  # "accelerate 1.15.0, botorch 0.18.1, ..."
        for name, version in re.findall(r"([A-Za-z][\w.-]*) (\d[\w.+]*)", row.split(":", 1)[-1]):
            if canonicalize_name(name) in gpu_names:
                gpu_versions[canonicalize_name(name)] = Version(version)
else:
    notes.append(f"{kinds_file} not found: requirements not checked against the GPU machine's packages")

if gpu_names:
    for name, (version, path) in sorted(wheels.items()):
        if name in gpu_names:
            there = gpu_versions.get(name, "version unknown")
            print(f"  carried {name} {version} replaces the GPU machine's ({there})")
        with zipfile.ZipFile(path) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            lines = z.read(meta).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker and not req.marker.evaluate(ENV):
                continue
            dep = canonicalize_name(req.name)
            where = f"{name} {version} needs {req.name}{req.specifier}"
            if dep in wheels:
                if not req.specifier.contains(wheels[dep][0], prereleases=True):
                    errors.append(f"{where}, but {wheels[dep][1].name} is carried")
            elif dep in gpu_versions:
                if not req.specifier.contains(gpu_versions[dep], prereleases=True):
                    errors.append(f"{where}, but the GPU machine has {gpu_versions[dep]}")
            elif dep in gpu_names:
                if str(req.specifier):
                    notes.append(f"{where}: on the GPU machine at an unknown version")
            elif dep in NOT_CARRIED_ON_PURPOSE:
                notes.append(f"{where}: not carried on purpose, {NOT_CARRIED_ON_PURPOSE[dep]}")
            else:
                errors.append(f"{where}: neither carried nor on the GPU machine")

for note in sorted(set(notes)):
    print(f"NOTE {note}")
size = sum(p.stat().st_size for p in kit.glob("*.whl"))
print(f"kit: {len(wheels)} wheels, {size / 2**20:.1f} MiB in {kit}/ (limit {max_mib:g} MiB)")
if size > max_mib * 2**20:
    errors.append(f"the kit is {size / 2**20:.1f} MiB, over {max_mib:g} MiB")
for error in errors:
    print(f"ERROR {error}")
sys.exit(1 if errors else 0)
EOF
