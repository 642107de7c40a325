# Sourced by the Makefile and scripts: the environment that builds and runs gpupool against the
# PyPI torch==2.11.0 libtorch (tch 0.24). Safe to source before the venv exists (set-up creates it).
GPUPOOL_CACHE="${GPUPOOL_CACHE:-$HOME/.cache/gpupool}"
GPUPOOL_VENV="${GPUPOOL_VENV:-$GPUPOOL_CACHE/venv}"
export GPUPOOL_CACHE GPUPOOL_VENV
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK="${LIBTORCH_BYPASS_VERSION_CHECK:-0}"
case ":$PATH:" in *":$GPUPOOL_VENV/bin:"*) ;; *) export PATH="$GPUPOOL_VENV/bin:$PATH" ;; esac
if [ -x "$GPUPOOL_VENV/bin/python" ]; then
  _torch_lib=$(ls -d "$GPUPOOL_VENV"/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1)
  case ":${LD_LIBRARY_PATH:-}:" in *":$_torch_lib:"*) ;; *) export LD_LIBRARY_PATH="$_torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac
  unset _torch_lib
fi
