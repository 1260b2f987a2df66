"""llama.cpp's own server (`llama-server`) as the comparison benchmark's llama.cpp peer.

It is built once into bench/.peers/llama-server/ from the llama.cpp source that the llama-cpp-python sdist
vendors (PyPI is reachable here, GitHub is not), with the machine's own instruction set (GGML_NATIVE). On a
CPU with AMX, GCC 12's native build gets an AMX path that crashes when the model loads: the AMX flags are
turned off there, which keeps AVX-512 and VNNI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from engines.embedded.kernels import cpu_flags

LLAMA_CPP_PYTHON = "0.3.36"  # vendors llama.cpp 0c1e570, tools/server included
FOLDER = Path(__file__).resolve().parent / ".peers" / "llama-server"
_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def cmake_args() -> list[str]:
    """The configuration: a native release build of the server alone, without its web UI (not vendored)."""
    args = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    if "amx_tile" in cpu_flags():  # /proc/cpuinfo's flags, as the engine reads them
        args += [f"-DCMAKE_C_FLAGS={_NO_AMX}", f"-DCMAKE_CXX_FLAGS={_NO_AMX}"]
    return args


def llama_server_binary() -> Path:
    """bench/.peers/llama-server/bin/llama-server, built on first use (about 10 minutes on 2 cores)."""
    binary = FOLDER / "bin" / "llama-server"
    stamp = FOLDER / ".built"
    wanted = f"llama-cpp-python {LLAMA_CPP_PYTHON}\n" + "\n".join(cmake_args())
    if binary.exists() and stamp.exists() and stamp.read_text() == wanted:
        return binary
    shutil.rmtree(FOLDER, ignore_errors=True)
    FOLDER.mkdir(parents=True)
    source = _vendored_source(FOLDER / "src")
    build = FOLDER / "build"
    print(f"building llama-server from llama-cpp-python {LLAMA_CPP_PYTHON}'s llama.cpp into {FOLDER} "
          "(once; about 10 minutes on 2 cores)", flush=True)
    log = FOLDER / "build.log"
    with open(log, "wb") as out:
        for step in (["cmake", "-S", str(source), "-B", str(build), *cmake_args()],
                     ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", "llama-server"]):
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode:
                raise RuntimeError(f"{' '.join(step[:3])} failed; see {log}:\n"
                                   f"{log.read_text(errors='replace')[-2000:]}")
    binary.parent.mkdir()
    shutil.copy2(build / "bin" / "llama-server", binary)
    shutil.rmtree(build)  # ~1 GB of objects; the binary is static
    stamp.write_text(wanted)
    return binary


def _vendored_source(into: Path) -> Path:
    """llama.cpp's source as llama-cpp-python's sdist vendors it, downloaded from PyPI."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(into)], check=True)
    [sdist] = into.glob("llama_cpp_python-*.tar.gz")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        archive.extractall(into, members=members, filter="data")
    sdist.unlink()
    return into / prefix
