# Sourced by the benchmarks that run ONNX Runtime (bert-vs-ort.sh, compress-vs-ort.sh): installs
# what is missing, Debian's python3-numpy and python3-onnx (to build the ONNX graphs), node and
# npm, and the npm package onnxruntime-node inside tests/bench. Needs $here (tests/bench) and
# $py (Debian's python3) set; messages go to stderr with the name given as $1.
ort_deps() {
        _name=$1
        _apt() {
                echo "$_name: installing $*" >&2
                if [ "$(id -u)" -eq 0 ]; then
                        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
                else
                        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
                fi
        }
        "$py" -c 'import numpy' 2>/dev/null || _apt python3-numpy
        "$py" -c 'import onnx' 2>/dev/null || _apt python3-onnx
        command -v node >/dev/null && command -v npm >/dev/null || _apt nodejs npm
        if [ ! -d "$here/node_modules/onnxruntime-node" ]; then
                # The package's install script downloads GPU extras from a host we cannot reach;
                # the CPU runtime ships inside the npm package itself.
                (cd "$here" && npm install --ignore-scripts --no-audit --no-fund >&2)
        fi
}
